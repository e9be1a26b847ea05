//! The TLS of a Gateway's HTTPS server, from its `tls` settings: `SIMPLE` (a server
//! certificate), `MUTUAL` (clients must present a certificate the CA bundle signed, with one
//! of `subjectAltNames` if any are listed) and `OPTIONAL_MUTUAL` (a client certificate is
//! checked when given). Certificates come from files (`serverCertificate`, `privateKey`,
//! `caCertificates`) or from the Secret `credentialName` names in the Gateway's namespace:
//! `tls.crt`/`tls.key`/`ca.crt` (or `cert`/`key`/`cacert`), the CA possibly in a Secret of
//! its own named `<credentialName>-cacert`, as Istio reads them. A mode the ingress does not
//! serve is an error, so the port stays closed rather than open with less than its author
//! asked for.

use std::{collections::HashMap, fmt, sync::Arc};

use mesh_api::networking::ServerTlsSettings;
use mesh_core::config_pb::TlsCredential;
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

/// The Secrets a Gateway may take certificates from: those of its own namespace.
pub struct Credentials<'a> {
    pub namespace: &'a str,
    /// By `namespace/name`.
    pub secrets: &'a HashMap<String, Arc<TlsCredential>>,
}

impl Credentials<'_> {
    fn get(&self, name: &str) -> Option<&TlsCredential> {
        self.secrets
            .get(&format!("{}/{name}", self.namespace))
            .map(|c| &**c)
    }
}

/// PEM from a file, or from a Secret (as the configuration brought it).
#[derive(Clone, PartialEq, Eq)]
enum Pem {
    File(String),
    Secret { name: String, text: Arc<str> },
}

impl Pem {
    fn from_secret(name: &str, text: &str) -> Self {
        Pem::Secret {
            name: name.to_owned(),
            text: text.into(),
        }
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        match self {
            Pem::File(path) => std::fs::read(path).map_err(|e| format!("{path}: {e}")),
            Pem::Secret { text, .. } => Ok(text.as_bytes().to_vec()),
        }
    }
}

/// Names where the PEM comes from, never what a key holds (also in error messages).
impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(path) => write!(f, "{path}"),
            Pem::Secret { name, .. } => write!(f, "Secret {name}"),
        }
    }
}

/// What an HTTPS listener serves with; compared to notice when a listener must be replaced
/// (a renewed Secret replaces it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// Certificate chain and private key.
    cert: Pem,
    key: Pem,
    clients: Option<ClientAuth>,
    /// `minProtocolVersion: TLSV1_3`; otherwise TLS 1.2 and 1.3 (rustls has nothing older).
    tls13_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ClientAuth {
    /// CA bundle client certificates must chain to.
    ca: Pem,
    /// `MUTUAL`: a client without a certificate is refused.
    required: bool,
    /// A client certificate must name one of these (DNS or URI), if any are listed.
    subject_alt_names: Vec<String>,
}

impl ServerTls {
    pub fn of(tls: &ServerTlsSettings, credentials: &Credentials<'_>) -> Result<Self, String> {
        let (cert, key, secret_ca) = match &tls.credential_name {
            Some(name) => from_secret(name, credentials)?,
            None => match (&tls.server_certificate, &tls.private_key) {
                (Some(cert), Some(key)) => (Pem::File(cert.clone()), Pem::File(key.clone()), None),
                _ => {
                    return Err(
                        "HTTPS needs credentialName, or serverCertificate and privateKey"
                            .to_owned(),
                    );
                }
            },
        };
        let mode = tls.mode.as_deref().unwrap_or("SIMPLE").to_ascii_uppercase();
        let clients = match mode.as_str() {
            "SIMPLE" => None,
            "MUTUAL" | "OPTIONAL_MUTUAL" => Some(ClientAuth {
                ca: secret_ca
                    .or(tls.ca_certificates.clone().map(Pem::File))
                    .ok_or(format!(
                        "tls mode {mode} needs a CA: caCertificates, or ca.crt in the credential's Secret"
                    ))?,
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
            cert,
            key,
            clients,
            tls13_only,
        })
    }

    /// Reads the certificates: a listener is opened only when all of them are good.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        let chain = read_certificates(&self.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&self.key.bytes()?)
            .map_err(|e| format!("{:?}: {e}", self.key))?;
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
            .map_err(|e| format!("{:?}: {e}", self.cert))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// The certificate, key and CA (if any) of the Secret `name`: the CA in the Secret itself,
/// else in `<name>-cacert`.
fn from_secret(
    name: &str,
    credentials: &Credentials<'_>,
) -> Result<(Pem, Pem, Option<Pem>), String> {
    let namespace = credentials.namespace;
    let secret = credentials.get(name).ok_or(format!(
        "no Secret {namespace}/{name} with a certificate (credentialName)"
    ))?;
    if secret.certificate_chain.is_empty() || secret.private_key.is_empty() {
        return Err(format!(
            "Secret {namespace}/{name} lacks tls.crt and tls.key (or cert and key)"
        ));
    }
    let ca_name = format!("{name}-cacert");
    let ca = [
        (name, Some(secret)),
        (ca_name.as_str(), credentials.get(&ca_name)),
    ]
    .into_iter()
    .find_map(|(name, secret)| {
        let secret = secret.filter(|s| !s.ca_certificates.is_empty())?;
        Some(Pem::from_secret(name, &secret.ca_certificates))
    });
    Ok((
        Pem::from_secret(name, &secret.certificate_chain),
        Pem::from_secret(name, &secret.private_key),
        ca,
    ))
}

impl ClientAuth {
    fn verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certificates(&self.ca)? {
            roots.add(cert).map_err(|e| format!("{:?}: {e}", self.ca))?;
        }
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let builder = match self.required {
            true => builder,
            false => builder.allow_unauthenticated(),
        };
        let chain = builder.build().map_err(|e| format!("{:?}: {e}", self.ca))?;
        Ok(match self.subject_alt_names.is_empty() {
            true => chain,
            false => Arc::new(NamedClients {
                chain,
                names: self.subject_alt_names.clone(),
            }),
        })
    }
}

fn read_certificates(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(&pem.bytes()?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{pem:?}: {e}"))?;
    match certs.is_empty() {
        true => Err(format!("{pem:?}: no certificate in it")),
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

    fn with(
        yaml: &str,
        secrets: &HashMap<String, Arc<TlsCredential>>,
    ) -> Result<ServerTls, String> {
        let credentials = Credentials {
            namespace: "istio-system",
            secrets,
        };
        ServerTls::of(
            &serde_yaml::from_str(yaml).expect("tls settings"),
            &credentials,
        )
    }

    fn of(yaml: &str) -> Result<ServerTls, String> {
        with(yaml, &HashMap::new())
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
    }

    #[test]
    fn credential_name_reads_the_secret_of_the_gateways_namespace() {
        let credential = |cert: &str, key: &str, ca: &str| {
            Arc::new(TlsCredential {
                certificate_chain: cert.to_owned(),
                private_key: key.to_owned(),
                ca_certificates: ca.to_owned(),
                ..TlsCredential::default()
            })
        };
        let secrets = HashMap::from([
            ("istio-system/web".to_owned(), credential("C", "K", "")),
            (
                "istio-system/web-cacert".to_owned(),
                credential("", "", "CA"),
            ),
            ("istio-system/no-key".to_owned(), credential("C", "", "")),
            ("other/elsewhere".to_owned(), credential("C", "K", "")),
        ]);
        let tls = with("{mode: MUTUAL, credentialName: web}", &secrets).expect("web");
        assert_eq!(tls.cert, Pem::from_secret("web", "C"));
        assert_eq!(tls.key, Pem::from_secret("web", "K"));
        let ca = tls.clients.map(|c| c.ca);
        assert_eq!(
            ca,
            Some(Pem::from_secret("web-cacert", "CA")),
            "the -cacert Secret"
        );
        assert_eq!(
            format!("{:?}", tls.key),
            "Secret web",
            "never the key itself"
        );
        let error = with("{credentialName: no-key}", &secrets).unwrap_err();
        assert!(error.contains("lacks"), "{error}");
        let error = with("{credentialName: elsewhere}", &secrets).unwrap_err();
        assert!(
            error.contains("no Secret istio-system/elsewhere"),
            "{error}"
        );
    }
}
