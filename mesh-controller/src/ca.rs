//! The certificate authority: a root kept in a directory or a Secret (created on first use), signing
//! workload certificates from CSRs, and the trust bundle peers verify them with. The bundle may
//! hold several roots, so a root is rotated with an overlap (docs/security.md): first the new
//! root is trusted beside the old, then it signs, then the old one is dropped. The CA, not the CSR, decides what a certificate says: the
//! CSR proves possession of the key and must ask for exactly the identity the caller was
//! authenticated as; subject, SAN, key usages and lifetime are set here.

mod rotation;

pub use rotation::{CurrentCa, fixed, follow_dir};

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use mesh_core::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    string::Ia5String,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, pem::PemObject as _};

/// Istio's default workload certificate lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const ROOT_CERT_FILE: &str = "root-cert.pem";
const ROOT_KEY_FILE: &str = "root-key.pem";
/// Clock skew tolerated between nodes: certificates start this long before they are signed.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CA directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA root in {path} is unusable: {source}")]
    BadRoot { path: PathBuf, source: rcgen::Error },
    #[error(
        "CA root in {path}: the key is not the first certificate's (the first root is the one that signs)"
    )]
    KeyMismatch { path: PathBuf },
    #[error(
        "CA root in {path}: every certificate of the trust bundle must be a self-issued root (a cross-signed one would be read as an intermediate)"
    )]
    NotARoot { path: PathBuf },
    #[error("certificate request is not valid or its signature does not verify: {0}")]
    BadRequest(rcgen::Error),
    #[error("certificate request asks for {asked:?}; the caller is {identity}")]
    IdentityMismatch {
        asked: Vec<String>,
        identity: String,
    },
    #[error("identity {identity} is outside this CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        identity: String,
        trust_domain: String,
    },
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
}

pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The root that signs: the bundle's first.
    root: CertificateDer<'static>,
    /// Every root peers must accept, the signing one first; more than one during a rotation.
    bundle: Vec<CertificateDer<'static>>,
    /// `bundle` as PEM, as published for nodes and written to the CA directory.
    bundle_pem: String,
}

impl CertificateAuthority {
    /// Loads the root from `dir`, or creates one there (key readable by the owner only).
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, Error> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        if let Some(ca) = Self::load(dir, trust_domain)? {
            return Ok(ca);
        }
        let (cert_path, key_path) = (dir.join(ROOT_CERT_FILE), dir.join(ROOT_KEY_FILE));
        let ca = Self::generate(trust_domain)?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_private(&key_path, &ca.key_pem()).map_err(io(&key_path))?;
        std::fs::write(&cert_path, ca.bundle_pem()).map_err(io(&cert_path))?;
        Ok(ca)
    }

    /// The CA kept in `dir`, if there is one: `root-cert.pem` holds the trust bundle (the
    /// signing root first) and `root-key.pem` the signing root's key.
    pub fn load(dir: &Path, trust_domain: &str) -> Result<Option<Self>, Error> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        let (cert_path, key_path) = (dir.join(ROOT_CERT_FILE), dir.join(ROOT_KEY_FILE));
        if !(cert_path.exists() && key_path.exists()) {
            return Ok(None);
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        Self::from_pem(cert_pem, &key_pem, trust_domain, dir).map(Some)
    }

    /// The files `load` reads, to notice when an operator changes them.
    pub fn files(dir: &Path) -> [PathBuf; 2] {
        [dir.join(ROOT_CERT_FILE), dir.join(ROOT_KEY_FILE)]
    }

    /// The CA whose trust bundle (the signing root first) and signing key are these PEM texts;
    /// `origin` (a directory or a Secret) names them in errors.
    pub fn from_pem(
        cert_pem: String,
        key_pem: &str,
        trust_domain: &str,
        origin: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let bad = |source| Error::BadRoot {
            path: origin.as_ref().to_owned(),
            source,
        };
        let key = KeyPair::from_pem(key_pem).map_err(bad)?;
        let bundle = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad(rcgen::Error::CouldNotParseCertificate))?;
        let root = bundle
            .first()
            .cloned()
            .ok_or_else(|| bad(rcgen::Error::CouldNotParseCertificate))?;
        // Clients take the self-issued certificates at the end of a chain as its roots: a
        // cross-signed (not self-issued) entry would be read as an intermediate.
        if !bundle.iter().all(mesh_core::tls::is_self_issued) {
            return Err(Error::NotARoot {
                path: origin.as_ref().to_owned(),
            });
        }
        // rcgen would sign with any key: a bundle whose first root is not this key's would
        // issue certificates no peer can verify.
        if public_key_of(&root) != Some(rcgen::PublicKeyData::subject_public_key_info(&key)) {
            return Err(Error::KeyMismatch {
                path: origin.as_ref().to_owned(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&root, key).map_err(bad)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            root,
            bundle,
            bundle_pem: cert_pem,
        })
    }

    /// The root's private key, to keep it (in a Kubernetes Secret).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A root that lives only in memory (tests, and a second CA to test refusal with).
    pub fn generate(trust_domain: &str) -> Result<Self, Error> {
        let key = KeyPair::generate().map_err(Error::Sign)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params
            .distinguished_name
            .push(DnType::CommonName, "Ambit root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        let root = params.self_signed(&key).map_err(Error::Sign)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            bundle_pem: root.pem(),
            bundle: vec![root.der().clone()],
            root: root.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root that signs.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// Every root peers must accept, the signing one first.
    pub fn bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    /// The trust bundle as PEM: what nodes are given to verify the controller and each other.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Signs a workload certificate for `identity`, valid from now for `lifetime`. Returns the
    /// chain as Istio's CA does: `[leaf, roots...]` (no intermediates: the root signs).
    pub fn sign(
        &self,
        csr: &[u8],
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, Error> {
        let now = SystemTime::now();
        // Backdating must stay small next to the lifetime, or half-life renewal (measured from
        // not_before) would fall due at once for short-lived certificates.
        let backdate = BACKDATE.min(lifetime / 4);
        self.sign_valid_between(csr, identity, now - backdate, now + lifetime)
    }

    /// The controller's own serving certificate and key: its SPIFFE identity (what Ambit's
    /// clients check) and `dns_names` (what standard clients, such as ztunnel's CA client or
    /// curl, verify by host name), valid from now for `lifetime`. Returns `[leaf, root]`.
    pub fn issue_serving(
        &self,
        identity: &Identity,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, KeyPair), Error> {
        let key = KeyPair::generate().map_err(Error::Sign)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = Ia5String::try_from(identity.to_string()).map_err(Error::Sign)?;
        params.subject_alt_names = std::iter::once(Ok(SanType::URI(uri)))
            .chain(dns_names.iter().map(|name| {
                Ia5String::try_from(name.as_str())
                    .map(SanType::DnsName)
                    .map_err(Error::Sign)
            }))
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE.min(lifetime / 4)).into();
        params.not_after = (now + lifetime).into();
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer).map_err(Error::Sign)?;
        Ok((vec![leaf.der().clone(), self.root.clone()], key))
    }

    /// As [`Self::sign`] with explicit validity (tests make expired certificates with it).
    pub fn sign_valid_between(
        &self,
        csr: &[u8],
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, Error> {
        if identity.trust_domain != self.trust_domain {
            return Err(Error::ForeignTrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let der = CertificateSigningRequestDer::from(csr.to_vec());
        let mut request =
            CertificateSigningRequestParams::from_der(&der).map_err(Error::BadRequest)?;
        let uri = identity.to_string();
        let asked: Vec<String> = request
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [uri.clone()] {
            return Err(Error::IdentityMismatch {
                asked,
                identity: uri,
            });
        }
        let mut params = CertificateParams::default();
        // Empty, as Istio's: the identity is the URI SAN (then marked critical), and rcgen's
        // default subject ("rcgen self signed cert") names nothing.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = request.params.subject_alt_names.clone();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.use_authority_key_identifier_extension = true;
        request.params = params;
        let leaf = request.signed_by(&self.issuer).map_err(Error::Sign)?;
        Ok(std::iter::once(leaf.der().clone())
            .chain(self.bundle.iter().cloned())
            .collect())
    }
}

/// A certificate's SubjectPublicKeyInfo, DER.
fn public_key_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer as _;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    Some(parsed.tbs_certificate.subject_pki.raw.to_vec())
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}
