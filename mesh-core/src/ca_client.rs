//! The CA client: a node agent makes a key and a CSR for a service account, and asks the
//! controller's `IstioCertificateService` to sign it. The channel is TLS; the controller must
//! chain to the mesh root and present the controller's identity. The agent authenticates with
//! its token (`authorization: Bearer`), since it has no certificate of its own.

use std::{sync::Arc, time::Duration};

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

#[derive(Clone)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    /// The same connection, for the controller's other services (the config stream).
    channel: Channel,
    token: Token,
}

impl CaClient {
    /// A lazily connecting client: the first request opens the connection, later ones reuse
    /// it, and a broken one is reopened. `addr` is `host:port`; a name is resolved at each
    /// connection, so a controller Service that moves is followed.
    pub fn new(
        addr: &str,
        roots: Vec<CertificateDer<'static>>,
        controller: Identity,
        token: Token,
    ) -> Result<Self, Error> {
        let verifier = tls::ServerChainVerifier::new(&roots, &tls::provider())
            .map_err(|e| Error::Root(e.to_string()))?;
        let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Root(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let address = || Error::Address {
            addr: addr.to_owned(),
        };
        let (host, _port) = addr.rsplit_once(':').ok_or_else(address)?;
        // The server is checked by its SPIFFE identity, not by this name; it only goes in SNI.
        let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|_| address())?;
        let target = addr.to_owned();
        let connect = tower::service_fn(move |_: Uri| {
            let (connector, controller) = (connector.clone(), controller.clone());
            let (addr, server_name) = (target.clone(), server_name.clone());
            async move {
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
        let chain = response
            .cert_chain
            .iter()
            .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| Error::NotPem))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(workload_certificate(identity, key, chain)?)
    }
}
