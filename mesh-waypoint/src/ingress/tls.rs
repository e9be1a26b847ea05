//! The TLS of a Gateway's HTTPS server, from its `tls` settings: `SIMPLE` (a server
//! certificate), `MUTUAL` (clients must present a certificate the `caCertificates` bundle
//! signed, with one of `subjectAltNames` if any are listed) and `OPTIONAL_MUTUAL` (a client
//! certificate is checked when given). A mode the ingress does not serve is an error, so the
//! port stays closed rather than open with less than its author asked for.

use std::sync::Arc;

use mesh_controller::resources::networking::ServerTlsSettings;
use rustls::{
    DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

/// What an HTTPS listener serves with; compared to notice when a listener must be replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// Certificate chain and private key files.
    cert: String,
    key: String,
    clients: Option<ClientAuth>,
    /// `minProtocolVersion: TLSV1_3`; otherwise TLS 1.2 and 1.3 (rustls has nothing older).
    tls13_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ClientAuth {
    /// CA bundle file client certificates must chain to.
    ca: String,
    /// `MUTUAL`: a client without a certificate is refused.
    required: bool,
    /// A client certificate must name one of these (DNS or URI), if any are listed.
    subject_alt_names: Vec<String>,
}

impl ServerTls {
    pub fn of(tls: &ServerTlsSettings) -> Result<Self, String> {
        if tls.credential_name.is_some() {
            return Err(
                "tls.credentialName needs Kubernetes Secrets, not read yet: give \
                 serverCertificate and privateKey files"
                    .to_owned(),
            );
        }
        let (Some(cert), Some(key)) = (&tls.server_certificate, &tls.private_key) else {
            return Err("HTTPS needs serverCertificate and privateKey".to_owned());
        };
        let mode = tls.mode.as_deref().unwrap_or("SIMPLE").to_ascii_uppercase();
        let clients = match mode.as_str() {
            "SIMPLE" => None,
            "MUTUAL" | "OPTIONAL_MUTUAL" => Some(ClientAuth {
                ca: tls
                    .ca_certificates
                    .clone()
                    .ok_or(format!("tls mode {mode} needs caCertificates"))?,
                required: mode == "MUTUAL",
                subject_alt_names: tls.subject_alt_names.clone(),
            }),
            "PASSTHROUGH" | "AUTO_PASSTHROUGH" | "ISTIO_MUTUAL" => {
                return Err(format!("tls mode {mode} is not served by the ingress yet"));
            }
            other => return Err(format!("unknown tls mode {other}")),
        };
        let tls13_only = match tls.min_protocol_version.as_deref() {
            None | Some("TLS_AUTO" | "TLSV1_0" | "TLSV1_1" | "TLSV1_2") => false,
            Some("TLSV1_3") => true,
            Some(other) => return Err(format!("unknown minProtocolVersion {other}")),
        };
        Ok(ServerTls {
            cert: cert.clone(),
            key: key.clone(),
            clients,
            tls13_only,
        })
    }

    /// Reads the files: a listener is opened only when all of them are good.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        let chain = read_certificates(&self.cert)?;
        let key =
            PrivateKeyDer::from_pem_file(&self.key).map_err(|e| format!("{}: {e}", self.key))?;
        let provider = mesh_core::tls::provider();
        let versions: &[&rustls::SupportedProtocolVersion] = match self.tls13_only {
            true => &[&rustls::version::TLS13],
            false => rustls::DEFAULT_VERSIONS,
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?;
        let builder = match &self.clients {
            None => builder.with_no_client_auth(),
            Some(clients) => builder.with_client_cert_verifier(clients.verifier(provider)?),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("{}: {e}", self.cert))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

impl ClientAuth {
    fn verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certificates(&self.ca)? {
            roots.add(cert).map_err(|e| format!("{}: {e}", self.ca))?;
        }
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let builder = match self.required {
            true => builder,
            false => builder.allow_unauthenticated(),
        };
        let chain = builder.build().map_err(|e| format!("{}: {e}", self.ca))?;
        Ok(match self.subject_alt_names.is_empty() {
            true => chain,
            false => Arc::new(NamedClients {
                chain,
                names: self.subject_alt_names.clone(),
            }),
        })
    }
}

fn read_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    match certs.is_empty() {
        true => Err(format!("{path}: no certificate in it")),
        false => Ok(certs),
    }
}

/// A client certificate verifier that also wants one of `names` among the certificate's
/// subject alternative names, after the chain checks out.
#[derive(Debug)]
struct NamedClients {
    chain: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

impl ClientCertVerifier for NamedClients {
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let names = subject_alt_names(end_entity);
        if names.iter().any(|n| self.names.contains(n)) {
            Ok(verified)
        } else {
            tracing::info!(
                presented = ?names,
                "ingress refused a client certificate: none of its names is in subjectAltNames"
            );
            Err(TlsError::General(
                "client certificate names none of the Gateway's subjectAltNames".to_owned(),
            ))
        }
    }

    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The DNS names and URIs a certificate is issued for (none if it does not parse: the chain
/// check before this has parsed it already).
fn subject_alt_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::certificate::X509Certificate::from_der(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(n) | GeneralName::URI(n) => Some((*n).to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(yaml: &str) -> Result<ServerTls, String> {
        ServerTls::of(&serde_yaml::from_str(yaml).expect("tls settings"))
    }

    #[test]
    fn modes_the_ingress_cannot_serve_keep_the_port_closed() {
        assert!(of("{mode: SIMPLE, serverCertificate: c, privateKey: k}").is_ok());
        assert!(
            of("{serverCertificate: c, privateKey: k}").is_ok(),
            "SIMPLE by default"
        );
        let mutual = of("{mode: MUTUAL, serverCertificate: c, privateKey: k}");
        assert!(mutual.unwrap_err().contains("caCertificates"));
        for mode in ["PASSTHROUGH", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "STRICT"] {
            let error = of(&format!(
                "{{mode: {mode}, serverCertificate: c, privateKey: k}}"
            ))
            .expect_err(mode);
            assert!(error.contains(mode), "{error}");
        }
        let old = of("{serverCertificate: c, privateKey: k, minProtocolVersion: TLSV1_3}");
        assert!(old.is_ok_and(|tls| tls.tls13_only));
        assert!(of("{serverCertificate: c, privateKey: k, minProtocolVersion: SSLV3}").is_err());
        assert!(of("{credentialName: bookinfo-secret}").is_err());
    }
}
