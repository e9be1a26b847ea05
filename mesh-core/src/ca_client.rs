//! The CA client: a node agent makes a key and a CSR for a service account, and asks the
//! controller's `IstioCertificateService` to sign it. The channel is TLS; the controller must
//! chain to the mesh root and present the controller's identity. The agent authenticates with
//! its token (`authorization: Bearer`), since it has no certificate of its own.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{
    Identity,
    pb::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
    tls::{
        self, RequestError, WorkloadCertificate, certificate_request, identity_of,
        workload_certificate,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CA root: {0}")]
    Root(String),
    #[error("the CA address {addr} is not `host:port`")]
    Address { addr: String },
    #[error("the CA refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("the CA answered a certificate that is not PEM")]
    NotPem,
}

/// The bearer token a node presents.
#[derive(Clone, Debug)]
pub enum Token {
    /// Fixed for the process's life (tests, local mode's bootstrap tokens).
    Fixed(String),
    /// Read afresh for each request: Kubernetes rotates projected service-account tokens.
    File(std::path::PathBuf),
}

impl Token {
    /// The token as it is now.
    pub fn current(&self) -> Result<String, tonic::Status> {
        match self {
            Token::Fixed(token) => Ok(token.clone()),
            Token::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| {
                    tonic::Status::unauthenticated(format!(
                        "cannot read the token file {}: {e}",
                        path.display()
                    ))
                }),
        }
    }
}

/// The roots the controller's serving certificate must chain to: those of the root file, read
/// again for every connection (Kubernetes updates the mounted ConfigMap; in local mode the file
/// is the CA's own bundle), with those the CA answered last. Both matter during a root
/// rotation: the controller's certificate is signed by the new root as soon as it is the
/// signing one, and a client must already trust it.
#[derive(Clone)]
pub struct TrustRoots {
    /// Where the roots are published, if anywhere.
    file: Option<PathBuf>,
    state: Arc<Mutex<KnownRoots>>,
}

#[derive(Default)]
struct KnownRoots {
    /// The file's roots as last read successfully.
    from_file: Vec<CertificateDer<'static>>,
    /// The bundle of the CA's last answer.
    learned: Vec<CertificateDer<'static>>,
}

impl TrustRoots {
    /// The roots in `path` (PEM, one or more certificates); an unreadable or empty file is an
    /// error now, and later only keeps the roots last read.
    pub fn from_file(path: PathBuf) -> Result<Self, Error> {
        let roots = read_roots(&path)?;
        Ok(Self {
            file: Some(path),
            state: Arc::new(Mutex::new(KnownRoots {
                from_file: roots,
                learned: Vec::new(),
            })),
        })
    }

    /// Roots given once (tests).
    pub fn fixed(roots: Vec<CertificateDer<'static>>) -> Self {
        Self {
            file: None,
            state: Arc::new(Mutex::new(KnownRoots {
                from_file: roots,
                learned: Vec::new(),
            })),
        }
    }

    /// Every root trusted now, each once.
    pub fn current(&self) -> Vec<CertificateDer<'static>> {
        let fresh = self.file.as_deref().map(read_roots);
        let mut known = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match fresh {
            Some(Ok(roots)) => known.from_file = roots,
            Some(Err(error)) => {
                tracing::warn!(%error, "keeping the CA roots read before");
            }
            None => {}
        }
        let mut all = known.from_file.clone();
        for root in &known.learned {
            if !all.contains(root) {
                all.push(root.clone());
            }
        }
        all
    }

    fn learn(&self, roots: &[CertificateDer<'static>]) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).learned = roots.to_vec();
    }
}

fn read_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem =
        std::fs::read(path).map_err(|e| Error::Root(format!("reading {}: {e}", path.display())))?;
    let roots = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Root(format!("{} is not PEM: {e}", path.display())))?;
    if roots.is_empty() {
        return Err(Error::Root(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(roots)
}

#[derive(Clone)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    /// The same connection, for the controller's other services (the config stream).
    channel: Channel,
    token: Token,
    /// Updated from every answer, so the next connection trusts the bundle in force.
    roots: TrustRoots,
}

impl CaClient {
    /// A lazily connecting client: the first request opens the connection, later ones reuse
    /// it, and a broken one is reopened. `addr` is `host:port`; a name is resolved at each
    /// connection, so a controller Service that moves is followed.
    pub fn new(
        addr: &str,
        roots: TrustRoots,
        controller: Identity,
        token: Token,
    ) -> Result<Self, Error> {
        // Checked now so that unusable roots are reported at start, not at the first request.
        connector(&roots.current())?;
        let address = || Error::Address {
            addr: addr.to_owned(),
        };
        let (host, _port) = addr.rsplit_once(':').ok_or_else(address)?;
        // The server is checked by its SPIFFE identity, not by this name; it only goes in SNI.
        let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|_| address())?;
        let target = addr.to_owned();
        let trusted = roots.clone();
        let connect = tower::service_fn(move |_: Uri| {
            let (trusted, controller) = (trusted.clone(), controller.clone());
            let (addr, server_name) = (target.clone(), server_name.clone());
            async move {
                let connector = connector(&trusted.current()).map_err(std::io::Error::other)?;
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .cloned();
                let seen = peer.as_ref().map(identity_of).transpose().ok().flatten();
                if seen.as_ref() != Some(&controller) {
                    return Err(std::io::Error::other(format!(
                        "CA at {addr} is {seen:?}, not the controller {controller}"
                    )));
                }
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| address())?
            .connect_timeout(Duration::from_secs(5))
            // A controller that vanished without a FIN (its node lost power) is noticed, and
            // the stream reconnects, instead of following a dead connection forever.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connect);
        Ok(Self {
            client: IstioCertificateServiceClient::new(channel.clone()),
            channel,
            token,
            roots,
        })
    }

    /// The controller's configuration stream on the same connection, and the bearer token
    /// that authenticates this node to it.
    pub fn config_service(
        &self,
    ) -> (
        crate::config_pb::config_service_client::ConfigServiceClient<Channel>,
        &Token,
    ) {
        let client =
            crate::config_pb::config_service_client::ConfigServiceClient::new(self.channel.clone())
                .max_decoding_message_size(64 << 20);
        (client, &self.token)
    }

    /// A new key and a certificate for `identity`; the key is made here and never sent.
    pub async fn issue(
        &self,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<WorkloadCertificate, Error> {
        let (key, csr) = certificate_request(identity)?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr)),
            validity_duration: lifetime.as_secs() as i64,
        });
        let bearer = format!("Bearer {}", self.token.current()?)
            .parse()
            .map_err(|_| tonic::Status::internal("token is not a valid header value"))?;
        request.metadata_mut().insert("authorization", bearer);
        // Per request, not on the channel: the config stream shares it and lives long.
        request.set_timeout(Duration::from_secs(10));
        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await?
            .into_inner();
        // Istio's layout: `[leaf, intermediates..., roots]`, where the last element may hold
        // several roots (the trust bundle during a rotation).
        let mut chain = Vec::new();
        for pem in &response.cert_chain {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(cert.map_err(|_| Error::NotPem)?);
            }
        }
        let issued = workload_certificate(identity, key, chain)?;
        self.roots.learn(&issued.roots);
        Ok(issued)
    }
}

/// A TLS connector that accepts a server chaining to `roots` (the identity is checked after
/// the handshake).
fn connector(roots: &[CertificateDer<'static>]) -> Result<tokio_rustls::TlsConnector, Error> {
    let verifier = tls::ServerChainVerifier::new(roots, &tls::provider())
        .map_err(|e| Error::Root(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Root(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
