//! Mutual TLS for HBONE: TLS 1.3 only, AES-GCM only, ALPN `h2`, no SNI, no resumption (as
//! ztunnel). Identities are checked by the verifiers in `verify`.

mod verify;

use std::{sync::Arc, time::SystemTime};

use rustls::{
    ClientConfig, ServerConfig,
    client::Resumption,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer},
};

pub use verify::{
    ClientIdentityVerifier, KeyIds, ServerChainVerifier, VerifyError, identity_of, is_self_issued,
    key_ids, trust_anchors,
};

use crate::{Identity, hbone};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("trust roots: {0}")]
    Roots(#[from] VerifyError),
}

/// A workload's certificate and key, and the roots its peers must chain to.
pub struct WorkloadCertificate {
    pub identity: Identity,
    /// Leaf first, then any intermediates (not the root).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCertificate {
    /// When renewal is due: half-way through the certificate's life (Istio's default).
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// A certificate with the TLS configs built from it once (what a proxy serves and dials with).
pub struct Issued {
    pub cert: WorkloadCertificate,
    pub server: std::sync::Arc<ServerConfig>,
    pub client: std::sync::Arc<ClientConfig>,
}

impl Issued {
    pub fn new(cert: WorkloadCertificate) -> Result<Self, Error> {
        Ok(Issued {
            server: std::sync::Arc::new(server_config(&cert)?),
            client: std::sync::Arc::new(client_config(&cert)?),
            cert,
        })
    }
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// ring, restricted to the suites HBONE peers use.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = ring::default_provider();
    provider.cipher_suites = vec![
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(provider)
}

/// The HBONE server side: requires a client certificate from `cert`'s trust domain.
pub fn server_config(cert: &WorkloadCertificate) -> Result<ServerConfig, Error> {
    let provider = provider();
    let verifier =
        ClientIdentityVerifier::new(&cert.roots, &cert.identity.trust_domain, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![hbone::ALPN.to_vec()];
    // Clients do not resume sessions: tickets would be bytes and CPU for nothing.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The HBONE client side: presents `cert`, verifies the server's chain during the handshake;
/// the caller then checks the server's identity ([`identity_of`]) before sending anything.
pub fn client_config(cert: &WorkloadCertificate) -> Result<ClientConfig, Error> {
    let provider = provider();
    let verifier = ServerChainVerifier::new(&cert.roots, &provider)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.alpn_protocols = vec![hbone::ALPN.to_vec()];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(config)
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("making a key or certificate request: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the CA's answer is empty")]
    EmptyChain,
    #[error("the CA's certificate: {0}")]
    Verify(#[from] VerifyError),
    #[error("the CA signed {got}, not the requested {want}")]
    WrongIdentity {
        got: Box<Identity>,
        want: Box<Identity>,
    },
}

/// A fresh ECDSA P-256 key and a CSR for `identity` (empty subject, one URI SAN), as Istio's
/// agents make them. The key never leaves the caller.
pub fn certificate_request(
    identity: &Identity,
) -> Result<(PrivateKeyDer<'static>, Vec<u8>), RequestError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
        identity.to_string(),
    )?)];
    let csr = params.serialize_request(&key)?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok((key, csr.der().to_vec()))
}

/// Puts a signed chain (`[leaf, intermediates..., roots...]`, as CAs answer) together with its
/// key, checking that the leaf names the identity that was asked for. The roots are the
/// self-issued certificates at the end (several during a root rotation); a chain with none
/// takes its last certificate as the root, as Istio's clients do.
pub fn workload_certificate(
    identity: &Identity,
    key: PrivateKeyDer<'static>,
    mut chain: Vec<CertificateDer<'static>>,
) -> Result<WorkloadCertificate, RequestError> {
    if chain.is_empty() {
        return Err(RequestError::EmptyChain);
    }
    let mut roots = Vec::new();
    while chain.len() > 1 && chain.last().is_some_and(verify::is_self_issued) {
        roots.insert(0, chain.pop().expect("checked above"));
    }
    if roots.is_empty() {
        roots.push(chain.pop().expect("not empty"));
        if chain.is_empty() {
            chain.push(roots[0].clone());
        }
    }
    let leaf = chain[0].clone();
    let got = identity_of(&leaf)?;
    if &got != identity {
        return Err(RequestError::WrongIdentity {
            got: Box::new(got),
            want: Box::new(identity.clone()),
        });
    }
    let (not_before, not_after) = verify::validity(&leaf)?;
    Ok(WorkloadCertificate {
        identity: got,
        chain,
        key,
        roots,
        not_before,
        not_after,
    })
}
