//! Ambit's controller: the certificate authority (workload certificates for node agents) and
//! the validated configuration streamed to subscribers, both over gRPC on one TLS port
//! (15012). Local mode (`--config-dir`) reads the same YAML users would `kubectl apply` from a
//! directory; Kubernetes mode (`--kubernetes`) watches the API server, writes status and
//! events, keeps the CA root in a Secret and runs waypoints.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use mesh_controller::{
    admin,
    ca::{self, CertificateAuthority},
    ca_service::{CaService, LocalAuthorizer, NodeAuthorizer},
    distribution::{Distributor, service::ConfigStreamService},
    kubernetes::{self, KubeAuthorizer},
    mesh_page::{MeshPage, routing},
    metrics::Metrics,
    readiness::Readiness,
    serve,
    source::{
        self, LogStatus,
        dir::DirSource,
        kube::{KindState, KubeSource},
        status::KubeStatus,
    },
};
use mesh_core::{
    Identity, config_pb::config_service_server::ConfigServiceServer,
    pb::istio_certificate_service_server::IstioCertificateServiceServer,
};

/// Ambit controller.
#[derive(Parser)]
#[command(name = "mesh-controller", version)]
struct Args {
    /// The mesh's trust domain (`spiffe://<trust domain>/...`).
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Kubernetes mode: configuration from the API server (in-cluster or kubeconfig
    /// credentials), the CA root in a Secret, node agents authenticated by TokenReview.
    #[arg(long, env = "AMBIT_KUBERNETES")]
    kubernetes: bool,
    /// Local mode: where the root certificate and key live (created on first start).
    #[arg(long, env = "AMBIT_CA_DIR", required_unless_present = "kubernetes")]
    ca_dir: Option<PathBuf>,
    /// Local mode's pods file: who runs where, so a node only gets its own pods' identities.
    #[arg(long, env = "AMBIT_PODS_FILE", required_unless_present = "kubernetes")]
    pods_file: Option<PathBuf>,
    /// Local mode: `node: token` lines, each node agent's bootstrap token.
    #[arg(
        long,
        env = "AMBIT_TOKENS_FILE",
        required_unless_present = "kubernetes"
    )]
    tokens_file: Option<PathBuf>,
    /// Address of the certificate and configuration services.
    #[arg(long, env = "AMBIT_CA_ADDR", default_value = "0.0.0.0:15012")]
    ca_addr: SocketAddr,
    /// Local mode's configuration: a directory of the YAML users would `kubectl apply`
    /// (Namespaces, Services, Istio resources), reloaded on change and streamed to
    /// subscribers on the same port as the certificate service.
    #[arg(long, env = "AMBIT_CONFIG_DIR", conflicts_with = "kubernetes")]
    config_dir: Option<PathBuf>,
    /// Admin endpoint (`/status`, `/config_dump`) that `ambitctl` reads. Keep it on loopback.
    #[arg(
        long,
        env = "AMBIT_CONTROLLER_ADMIN_ADDR",
        default_value = "127.0.0.1:15014"
    )]
    admin_addr: SocketAddr,
    /// The cluster's DNS domain (service hostnames).
    #[arg(long, env = "AMBIT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// The longest workload certificate lifetime granted, in seconds.
    #[arg(long, env = "AMBIT_MAX_CERT_LIFETIME", default_value_t = 24 * 3600)]
    max_cert_lifetime: u64,
    /// Kubernetes mode: the controller's own namespace (CA Secret, root ConfigMap).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ambit-system")]
    namespace: String,
    /// Kubernetes mode: this replica's pod name, in the events it records.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Kubernetes mode: the node agents' service account, as TokenReview names it.
    #[arg(
        long,
        env = "AMBIT_NODE_ACCOUNT",
        default_value = "system:serviceaccount:ambit-system:ambit-node"
    )]
    node_account: String,
    /// Kubernetes mode: the audience node agents' projected tokens are issued for.
    #[arg(long, env = "AMBIT_TOKEN_AUDIENCE", default_value = "ambit")]
    token_audience: String,
    /// Kubernetes mode: the image waypoint Deployments run. By default the mesh-waypoint image
    /// beside the controller's own (same registry and tag), so that renaming the images in
    /// deploy/kustomization.yaml renames it too.
    #[arg(long, env = "AMBIT_WAYPOINT_IMAGE")]
    waypoint_image: Option<String>,
    /// Prometheus metrics (`/metrics`, `/stats/prometheus`), on the port every Ambit component
    /// serves them on (15014, istiod's, is the admin endpoint here, on loopback).
    #[arg(
        long,
        env = "AMBIT_CONTROLLER_METRICS_ADDR",
        default_value = "0.0.0.0:15020"
    )]
    metrics_addr: SocketAddr,
    /// Readiness (`/healthz/ready`): ready once the configuration is published.
    #[arg(
        long,
        env = "AMBIT_CONTROLLER_READINESS_ADDR",
        default_value = "0.0.0.0:15021"
    )]
    readiness_addr: SocketAddr,
    /// Kubernetes mode: where waypoints reach the controller, `host:port`.
    #[arg(
        long,
        env = "AMBIT_WAYPOINT_CA_ADDR",
        default_value = "ambit-controller.ambit-system.svc:15012"
    )]
    waypoint_ca_addr: String,
    /// Kubernetes mode: the OTLP/HTTP traces endpoint the waypoints and ingresses it runs send
    /// spans to (`http://otel-collector.observability:4318/v1/traces`).
    #[arg(long, env = "AMBIT_WAYPOINT_OTLP_ENDPOINT")]
    waypoint_otlp_endpoint: Option<String>,
    /// Kubernetes mode: the Zipkin endpoint they send spans to, as the Zipkin and Jaeger addons
    /// take them (`http://zipkin.istio-system:9411/api/v2/spans`).
    #[arg(long, env = "AMBIT_WAYPOINT_ZIPKIN_ENDPOINT")]
    waypoint_zipkin_endpoint: Option<String>,
    /// Kubernetes mode: percent of requests that start a trace at them to sample.
    #[arg(long, env = "AMBIT_WAYPOINT_TRACE_SAMPLING")]
    waypoint_trace_sampling: Option<f64>,
    /// Lifetime of the controller's own serving certificate, in seconds; renewed in place at
    /// half of it.
    #[arg(long, env = "AMBIT_SERVING_CERT_LIFETIME", default_value_t = 30 * 24 * 3600)]
    serving_cert_lifetime: u64,
    /// Host names in the serving certificate, for clients that verify the controller by name
    /// (ztunnel's CA client, curl); Ambit's own clients check its SPIFFE identity.
    #[arg(
        long,
        env = "AMBIT_SERVING_DNS_NAMES",
        value_delimiter = ',',
        default_value = "ambit-controller,ambit-controller.ambit-system,ambit-controller.ambit-system.svc,ambit-controller.ambit-system.svc.cluster.local"
    )]
    serving_dns_names: Vec<String>,
    /// Deadlines and caps of the certificate and configuration listener.
    #[command(flatten)]
    limits: mesh_core::transport::Limits,
}

fn main() -> anyhow::Result<()> {
    mesh_core::process::init_logging();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let distributor = Arc::new(Distributor::default());
    let status = LogStatus::default();
    let readiness = Readiness::new("starting");
    readiness
        .serve(args.readiness_addr)
        .await
        .with_context(|| format!("binding readiness {}", args.readiness_addr))?;
    let store = if args.kubernetes {
        routing::Store::Kubernetes(
            kube::Client::try_default()
                .await
                .context("no Kubernetes credentials (in-cluster service account or kubeconfig)")?,
        )
    } else {
        match &args.config_dir {
            Some(dir) => routing::Store::Dir(dir.clone()),
            None => routing::Store::Unavailable,
        }
    };
    let page = MeshPage::start(
        distributor.clone(),
        status.report.clone(),
        store,
        &args.cluster_domain,
    );
    admin::serve(
        args.admin_addr,
        distributor.clone(),
        status.report.clone(),
        page,
    )
    .await
    .with_context(|| format!("binding the admin endpoint {}", args.admin_addr))?;
    let metrics = Arc::new(Metrics::new(distributor.pushes.clone()));
    serve_metrics(
        args.metrics_addr,
        metrics.clone(),
        distributor.clone(),
        status.report.clone(),
    )
    .await
    .with_context(|| format!("binding the metrics endpoint {}", args.metrics_addr))?;
    let (ca, authorizer) = if args.kubernetes {
        kubernetes_mode(&args, &distributor, status, &readiness).await?
    } else {
        local_mode(&args, &distributor, status)?
    };
    let identity = Identity::controller(&args.trust_domain)?;
    let lifetime = Duration::from_secs(args.serving_cert_lifetime);
    let (chain, key) =
        serve::issue_serving(&ca.borrow(), &identity, &args.serving_dns_names, lifetime)?;
    let serving = Arc::new(serve::ServingCert::new(chain, key)?);
    tokio::spawn(serve::renew_serving(
        serving.clone(),
        ca.clone(),
        identity.clone(),
        args.serving_dns_names.clone(),
        lifetime,
    ));
    let config = Arc::new(serve::server_config(serving)?);
    let listener = tokio::net::TcpListener::bind(args.ca_addr)
        .await
        .with_context(|| format!("binding {}", args.ca_addr))?;
    let service = CaService {
        ca,
        authorizer: authorizer.clone(),
        max_lifetime: Duration::from_secs(args.max_cert_lifetime),
        answered: metrics.certificates.clone(),
    };
    let config_service = ConfigStreamService {
        distributor: distributor.clone(),
        authorizer: Some(authorizer),
        nodes_read_secrets: !args.kubernetes,
    };
    tracing::info!(addr = %args.ca_addr, %identity, "certificate and configuration services ready");
    // Without a configuration source there is nothing to wait for.
    let expects_configuration = args.kubernetes || args.config_dir.is_some();
    tokio::spawn(ready_when_published(
        distributor.clone(),
        readiness.clone(),
        expects_configuration,
    ));
    // Pings find a subscriber whose connection died without a FIN (a node that lost power):
    // its stream and what it holds are released instead of kept forever.
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(IstioCertificateServiceServer::new(service))
        .add_service(ConfigServiceServer::new(config_service))
        .serve_with_incoming_shutdown(
            serve::tls_incoming(listener, config, args.limits),
            shutdown(),
        )
        .await?;
    Ok(())
}

type Authority = (ca::CurrentCa, Arc<dyn NodeAuthorizer>);

/// Serves `/metrics` (and `/stats/prometheus`, as Istio's components answer) on `addr`.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    distributor: Arc<Distributor>,
    report: mesh_controller::admin::SharedReport,
) -> std::io::Result<()> {
    mesh_core::endpoint::serve(addr, move |request| {
        let status = match request.uri().path() {
            "/metrics" | "/stats/prometheus" => hyper::StatusCode::OK,
            _ => hyper::StatusCode::NOT_FOUND,
        };
        let body = match status {
            hyper::StatusCode::OK => {
                let report = report.lock().unwrap_or_else(|p| p.into_inner());
                metrics.render(&distributor, &report)
            }
            _ => "not found\n".to_owned(),
        };
        let mut reply = hyper::Response::new(http_body_util::Full::new(body.into()));
        *reply.status_mut() = status;
        reply.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        reply
    })
    .await
}

/// Ready once a whole configuration is out (or at once, for a CA without configuration).
async fn ready_when_published(
    distributor: Arc<Distributor>,
    readiness: Readiness,
    expects_configuration: bool,
) {
    if expects_configuration {
        distributor.wait_published().await;
    }
    readiness.ready();
    tracing::info!("ready: configuration published");
}

/// The CA root from a directory, tokens and pods from files, configuration (if any) from a
/// directory.
fn local_mode(
    args: &Args,
    distributor: &Arc<Distributor>,
    status: LogStatus,
) -> anyhow::Result<Authority> {
    let (Some(ca_dir), Some(pods_file), Some(tokens_file)) =
        (&args.ca_dir, &args.pods_file, &args.tokens_file)
    else {
        anyhow::bail!("local mode needs --ca-dir, --pods-file and --tokens-file");
    };
    // Followed, so that an operator rotates the root by editing its files (docs/security.md).
    let ca = ca::follow_dir(
        ca_dir.clone(),
        CertificateAuthority::load_or_create(ca_dir, &args.trust_domain)?,
    );
    let authorizer = Arc::new(LocalAuthorizer {
        tokens_file: tokens_file.clone(),
        pods_file: pods_file.clone(),
    });
    if let Some(dir) = args.config_dir.clone() {
        let source = DirSource::new(dir, Some(pods_file.clone()));
        let (distributor, domain) = (distributor.clone(), args.cluster_domain.clone());
        tokio::spawn(async move {
            source::run(source, status, &distributor, &domain).await;
        });
    }
    Ok((ca, authorizer))
}

/// Everything from the API server: configuration watched, status and events written back,
/// the CA root in a Secret (its certificate published for nodes), nodes checked by
/// TokenReview, and waypoints reconciled.
async fn kubernetes_mode(
    args: &Args,
    distributor: &Arc<Distributor>,
    status: LogStatus,
    readiness: &Readiness,
) -> anyhow::Result<Authority> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes credentials (in-cluster service account or kubeconfig)")?;
    let ca = kubernetes::certificate_authority(&client, &args.namespace, &args.trust_domain)
        .await
        .context("loading the CA root")?;
    kubernetes::publish_root(&client, &args.namespace, ca.bundle_pem())
        .await
        .context("publishing the root certificate")?;
    let source = KubeSource::start(client.clone());
    let pods = source.store("Pod").expect("Pods are watched");
    let authorizer = Arc::new(KubeAuthorizer {
        client: client.clone(),
        node_account: args.node_account.clone(),
        audience: args.token_audience.clone(),
        pods,
        reviews: Default::default(),
        access_reviews: Default::default(),
    });
    let sink = (
        KubeStatus::new(client.clone(), args.pod_name.clone()),
        status,
    );
    let (distributor, domain) = (distributor.clone(), args.cluster_domain.clone());
    let listing = readiness.clone();
    tokio::spawn(async move {
        // Nothing is published from a partial list: a policy missing from it would be lifted
        // on every node. Kinds the cluster does not serve have none to list.
        listing.waiting_for("listing the watched kinds");
        while tokio::time::timeout(Duration::from_secs(30), source.ready())
            .await
            .is_err()
        {
            let pending = kinds_in(&source, KindState::Pending);
            tracing::warn!(
                kinds = %pending,
                "still listing: may the controller list them (deploy/controller-rbac.yaml)?"
            );
            listing.waiting_for(format!("listing {pending}"));
        }
        let absent = kinds_in(&source, KindState::NotServed);
        if !absent.is_empty() {
            tracing::warn!(
                kinds = %absent,
                "not served by this cluster; publishing without them, and watching them once \
                 their CRDs are installed (Ambit's: deploy/crds; the Gateway API: its upstream \
                 release)"
            );
        }
        tracing::info!("every served kind listed; publishing configuration");
        listing.waiting_for("the first configuration");
        source::run(source, sink, &distributor, &domain).await;
    });
    let waypoint_image = match &args.waypoint_image {
        Some(image) => image.clone(),
        None => {
            kubernetes::waypoint_image_beside_own(
                &client,
                &args.namespace,
                args.pod_name.as_deref(),
            )
            .await
        }
    };
    tracing::info!(image = %waypoint_image, "waypoints run this image");
    let settings = mesh_controller::waypoint::WaypointSettings {
        image: waypoint_image,
        ca_addr: args.waypoint_ca_addr.clone(),
        tracing: [
            ("AMBIT_OTLP_ENDPOINT", args.waypoint_otlp_endpoint.clone()),
            (
                "AMBIT_ZIPKIN_ENDPOINT",
                args.waypoint_zipkin_endpoint.clone(),
            ),
            (
                "AMBIT_TRACE_SAMPLING",
                args.waypoint_trace_sampling.map(|p| p.to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?)))
        .collect(),
        root_pem: ca.bundle_pem().to_owned(),
    };
    tokio::spawn(kubernetes::run_waypoints(client, settings));
    // A rotation in Kubernetes is a change to the CA Secret and a restart of the controller.
    Ok((ca::fixed(ca), authorizer))
}

/// The watched kinds in `state`, for the log.
fn kinds_in(source: &KubeSource, state: KindState) -> String {
    source
        .states()
        .into_iter()
        .filter(|(_, s)| *s == state)
        .map(|(kind, _)| kind)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
