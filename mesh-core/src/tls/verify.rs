//! Certificate verification: the chain must lead to one of the mesh's roots (webpki), and the
//! leaf must carry a SPIFFE URI SAN, which is the peer's identity.

use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{
        CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
    },
    pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use webpki::{EndEntityCert, KeyUsage};

use crate::Identity;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("certificate is not valid X.509: {0}")]
    Parse(String),
    #[error("certificate has no SPIFFE URI SAN")]
    NoIdentity,
    #[error("certificate SAN: {0}")]
    Identity(#[from] crate::identity::Error),
    #[error("trust root is not a usable CA certificate: {0}")]
    Root(String),
    #[error("no trust roots configured")]
    NoRoots,
}

/// Trust anchors from the mesh's root certificates.
pub fn trust_anchors(
    roots: &[CertificateDer<'_>],
) -> Result<Arc<[TrustAnchor<'static>]>, VerifyError> {
    if roots.is_empty() {
        return Err(VerifyError::NoRoots);
    }
    roots
        .iter()
        .map(|root| {
            webpki::anchor_from_trusted_cert(root)
                .map(|anchor| anchor.to_owned())
                .map_err(|e| VerifyError::Root(e.to_string()))
        })
        .collect()
}

/// The identity a certificate carries: its first URI SAN, which must be a SPIFFE identity.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, VerifyError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| VerifyError::Parse(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| VerifyError::Parse(e.to_string()))?
        .ok_or(VerifyError::NoIdentity)?;
    let uri = san
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .ok_or(VerifyError::NoIdentity)?;
    Ok(uri.parse()?)
}

/// A certificate's validity period.
pub fn validity(
    cert: &CertificateDer<'_>,
) -> Result<(std::time::SystemTime, std::time::SystemTime), VerifyError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| VerifyError::Parse(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok((
        at(parsed.validity().not_before),
        at(parsed.validity().not_after),
    ))
}

/// Whether the certificate's issuer is its own subject: a root, as the end of a chain.
pub fn is_self_issued(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert)
        .is_ok_and(|(_, parsed)| parsed.issuer().as_raw() == parsed.subject().as_raw())
}

/// A certificate's key identifiers, hex: its own (subject) and its signer's (authority). They
/// name roots in the admin views: which roots a node trusts, and which one signed a leaf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyIds {
    pub subject: Option<String>,
    pub authority: Option<String>,
}

pub fn key_ids(cert: &CertificateDer<'_>) -> KeyIds {
    use x509_parser::extensions::ParsedExtension;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut ids = KeyIds::default();
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return ids;
    };
    for extension in parsed.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => ids.subject = Some(hex(id.0)),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                ids.authority = aki.key_identifier.as_ref().map(|id| hex(id.0));
            }
            _ => {}
        }
    }
    ids
}

fn verify_chain(
    anchors: &[TrustAnchor<'_>],
    algorithms: &WebPkiSupportedAlgorithms,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: KeyUsage,
) -> Result<Identity, rustls::Error> {
    let cert = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
    cert.verify_for_usage(
        algorithms.all,
        anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(pki_error)?;
    identity_of(end_entity).map_err(|e| {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    })
}

fn pki_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let reason = match error {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(reason)
}

/// Server side: the client must chain to our roots and belong to our trust domain.
#[derive(Debug)]
pub struct ClientIdentityVerifier {
    anchors: Arc<[TrustAnchor<'static>]>,
    trust_domain: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientIdentityVerifier {
    pub fn new(
        roots: &[CertificateDer<'_>],
        trust_domain: &str,
        provider: &CryptoProvider,
    ) -> Result<Self, VerifyError> {
        Ok(Self {
            anchors: trust_anchors(roots)?,
            trust_domain: trust_domain.to_owned(),
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let identity = verify_chain(
            &self.anchors,
            &self.algorithms,
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
        )?;
        if identity.trust_domain != self.trust_domain {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(WrongTrustDomain {
                    got: identity.trust_domain,
                    want: self.trust_domain.clone(),
                })),
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("client trust domain {got:?} is not {want:?}")]
struct WrongTrustDomain {
    got: String,
    want: String,
}

/// Client side: the server must chain to our roots and carry a SPIFFE identity; which
/// identity is checked by the caller against the destination's, before any request is sent.
#[derive(Debug)]
pub struct ServerChainVerifier {
    anchors: Arc<[TrustAnchor<'static>]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerChainVerifier {
    pub fn new(
        roots: &[CertificateDer<'_>],
        provider: &CryptoProvider,
    ) -> Result<Self, VerifyError> {
        Ok(Self {
            anchors: trust_anchors(roots)?,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for ServerChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_chain(
            &self.anchors,
            &self.algorithms,
            end_entity,
            intermediates,
            now,
            KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
