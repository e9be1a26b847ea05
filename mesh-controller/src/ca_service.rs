//! `IstioCertificateService/CreateCertificate`: a node agent asks for a certificate for one of
//! its pods' service accounts. The agent is authenticated by its bootstrap token (in
//! Kubernetes, its service-account token, checked with a TokenReview: see `kubernetes`), and
//! may only get identities of pods that run on its own node: a compromised node cannot mint
//! other nodes' identities.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use mesh_core::{
    Identity,
    pb::{
        IstioCertificateRequest, IstioCertificateResponse,
        istio_certificate_service_server::IstioCertificateService,
    },
    pods::PodsFile,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, pem::PemObject as _};
use tonic::{Request, Response, Status};

use crate::{
    ca::{CurrentCa, DEFAULT_LIFETIME},
    metrics::CertificateLabels,
};
use prometheus_client::metrics::{counter::Counter, family::Family};

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A node agent: it may get the identities of the pods on its node.
    Node(String),
    /// A workload with a token of its own (a waypoint's pod): it may get only its own
    /// identity, and subscribes as a waypoint.
    Workload {
        namespace: String,
        service_account: String,
    },
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Node(node) => write!(f, "node {node}"),
            Caller::Workload {
                namespace,
                service_account,
            } => write!(f, "service account {namespace}/{service_account}"),
        }
    }
}

/// Who may ask for what.
pub trait NodeAuthorizer: Send + Sync + 'static {
    /// Who a bearer token belongs to (asking the API server may take a round trip).
    fn caller_of<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<Caller>>;
    /// Whether `node` runs a pod that has `identity`.
    fn may_issue(&self, node: &str, identity: &Identity) -> bool;
    /// Whether the service account may read every Secret of its namespace (Kubernetes: a
    /// SubjectAccessReview); such a gateway gets them all, not only those its Gateways name.
    fn reads_secrets<'a>(
        &'a self,
        _namespace: &'a str,
        _service_account: &'a str,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
}

/// Who a request's `authorization: Bearer <token>` belongs to; `what` names the request in
/// the log when the token is unknown.
pub async fn authenticate(
    authorizer: &dyn NodeAuthorizer,
    metadata: &tonic::metadata::MetadataMap,
    what: &str,
) -> Result<Caller, Status> {
    let token = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
    authorizer.caller_of(token).await.ok_or_else(|| {
        tracing::warn!("{what} with an unknown token refused");
        Status::unauthenticated("unknown token")
    })
}

/// Local mode: tokens from a YAML map `node: token`, pods from the pods file, both read on
/// each request so changes apply without a restart.
pub struct LocalAuthorizer {
    pub tokens_file: PathBuf,
    pub pods_file: PathBuf,
}

impl NodeAuthorizer for LocalAuthorizer {
    fn caller_of<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<Caller>> {
        let node = (|| {
            let text = std::fs::read_to_string(&self.tokens_file).ok()?;
            let tokens: HashMap<String, String> = serde_yaml_tokens(&text)?;
            tokens
                .into_iter()
                .find(|(_, t)| constant_time_eq(t.as_bytes(), token.as_bytes()))
                .map(|(node, _)| Caller::Node(node))
        })();
        Box::pin(std::future::ready(node))
    }

    fn may_issue(&self, node: &str, identity: &Identity) -> bool {
        let Ok(file) = PodsFile::read(&self.pods_file) else {
            return false;
        };
        file.pods.iter().any(|pod| {
            pod.node == node
                && pod.namespace == identity.namespace
                && pod.service_account == identity.service_account
        })
    }
}

/// `node: token` lines (a YAML mapping of strings).
fn serde_yaml_tokens(text: &str) -> Option<HashMap<String, String>> {
    let mut tokens = HashMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (node, token) = line.split_once(':')?;
        tokens.insert(
            node.trim().to_owned(),
            token.trim().trim_matches('"').to_owned(),
        );
    }
    Some(tokens)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub struct CaService {
    /// The CA in force (replaced whole by a root rotation step).
    pub ca: CurrentCa,
    pub authorizer: Arc<dyn NodeAuthorizer>,
    /// Longest lifetime granted, whatever is asked.
    pub max_lifetime: Duration,
    /// Requests answered, by outcome (`ambit_controller_certificate_requests`).
    pub answered: Family<CertificateLabels, Counter>,
}

impl CaService {
    fn count(&self, outcome: &'static str) {
        self.answered
            .get_or_create(&CertificateLabels { outcome })
            .inc();
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller =
            authenticate(&*self.authorizer, request.metadata(), "certificate request").await?;
        let request = request.into_inner();
        let csr = CertificateSigningRequestDer::from_pem_slice(request.csr.as_bytes())
            .map_err(|_| Status::invalid_argument("csr is not a PEM certificate request"))?;
        let identity =
            requested_identity(&csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let allowed = match &caller {
            Caller::Node(node) => self.authorizer.may_issue(node, &identity),
            Caller::Workload {
                namespace,
                service_account,
            } => identity.namespace == *namespace && identity.service_account == *service_account,
        };
        if !allowed {
            let why = match &caller {
                Caller::Node(_) => format!("{caller} runs no pod with identity {identity}"),
                Caller::Workload { .. } => format!("{caller} may have only its own identity"),
            };
            tracing::warn!(%caller, %identity, "certificate request refused: {why}");
            self.count("refused");
            return Err(Status::permission_denied(why));
        }
        let asked = u64::try_from(request.validity_duration).unwrap_or(0);
        let lifetime = if asked == 0 {
            DEFAULT_LIFETIME
        } else {
            Duration::from_secs(asked)
        }
        .min(self.max_lifetime);
        let ca = self.ca.borrow().clone();
        let chain = ca
            .sign(csr.as_ref(), &identity, lifetime)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(%caller, %identity, lifetime_s = lifetime.as_secs(), "certificate issued");
        self.count("issued");
        // Istio's layout: the leaf, then the trust bundle as one PEM element (several roots
        // during a rotation), which is what ztunnel reads its roots from.
        let (leaf, roots) = chain.split_at(1);
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![pem(&leaf[0]), roots.iter().map(pem).collect()],
        }))
    }
}

/// The identity a CSR asks for: its one URI SAN.
fn requested_identity(csr: &CertificateSigningRequestDer<'_>) -> Result<Identity, String> {
    use x509_parser::prelude::FromDer as _;
    let (_, parsed) =
        x509_parser::certification_request::X509CertificationRequest::from_der(csr.as_ref())
            .map_err(|e| format!("csr is not valid: {e}"))?;
    let uri = parsed
        .requested_extensions()
        .into_iter()
        .flatten()
        .find_map(|ext| match ext {
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                san.general_names.iter().find_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                })
            }
            _ => None,
        })
        .ok_or("csr asks for no URI SAN")?;
    uri.parse()
        .map_err(|e: mesh_core::identity::Error| e.to_string())
}

fn pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}
