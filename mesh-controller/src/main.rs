//! Ambit's controller in local mode: the certificate authority (the mesh root kept in a
//! directory, workload certificates for node agents) and, with `--config-dir`, the validated
//! configuration streamed to subscribers, both over gRPC on one TLS port (15012).
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use mesh_controller::{
    admin,
    ca::CertificateAuthority,
    ca_service::{CaService, LocalAuthorizer},
    distribution::{Distributor, service::ConfigStreamService},
    serve,
    source::{self, LogStatus, dir::DirSource},
};
use mesh_core::{
    Identity, config_pb::config_service_server::ConfigServiceServer,
    pb::istio_certificate_service_server::IstioCertificateServiceServer, tls,
};
use tracing_subscriber::EnvFilter;

/// How long the controller's own serving certificate lasts; it is re-issued at every start.
const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Ambit controller (local mode: the CA for node agents).
#[derive(Parser)]
#[command(name = "mesh-controller", version)]
struct Args {
    /// The mesh's trust domain (`spiffe://<trust domain>/...`).
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Where the root certificate and key live (created on first start).
    #[arg(long, env = "AMBIT_CA_DIR")]
    ca_dir: PathBuf,
    /// Local mode's pods file: who runs where, so a node only gets its own pods' identities.
    #[arg(long, env = "AMBIT_PODS_FILE")]
    pods_file: PathBuf,
    /// `node: token` lines: each node agent's bootstrap token.
    #[arg(long, env = "AMBIT_TOKENS_FILE")]
    tokens_file: PathBuf,
    /// Address of the certificate service.
    #[arg(long, env = "AMBIT_CA_ADDR", default_value = "0.0.0.0:15012")]
    ca_addr: SocketAddr,
    /// Local mode's configuration: a directory of the YAML users would `kubectl apply`
    /// (Namespaces, Services, Istio resources), reloaded on change and streamed to
    /// subscribers on the same port as the certificate service.
    #[arg(long, env = "AMBIT_CONFIG_DIR")]
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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("AMBIT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ca = Arc::new(CertificateAuthority::load_or_create(
        &args.ca_dir,
        &args.trust_domain,
    )?);
    let identity = Identity::controller(&args.trust_domain)?;
    let (key, csr) = tls::certificate_request(&identity)?;
    let chain = ca.sign(&csr, &identity, SERVING_CERT_LIFETIME)?;
    let serving = tls::workload_certificate(&identity, key, chain)?;
    let config = Arc::new(serve::server_config(&serving)?);
    let listener = tokio::net::TcpListener::bind(args.ca_addr)
        .await
        .with_context(|| format!("binding {}", args.ca_addr))?;
    let authorizer = Arc::new(LocalAuthorizer {
        tokens_file: args.tokens_file,
        pods_file: args.pods_file.clone(),
    });
    let service = CaService {
        ca,
        authorizer: authorizer.clone(),
        max_lifetime: Duration::from_secs(args.max_cert_lifetime),
    };
    let distributor = Arc::new(Distributor::default());
    let status = LogStatus::default();
    admin::serve(args.admin_addr, distributor.clone(), status.report.clone())
        .await
        .with_context(|| format!("binding the admin endpoint {}", args.admin_addr))?;
    if let Some(dir) = args.config_dir {
        let source = DirSource::new(dir, Some(args.pods_file));
        let (distributor, domain) = (distributor.clone(), args.cluster_domain);
        tokio::spawn(async move {
            source::run(source, status, &distributor, &domain).await;
        });
    }
    let config_service = ConfigStreamService {
        distributor,
        authorizer: Some(authorizer),
    };
    tracing::info!(addr = %args.ca_addr, %identity, "certificate and configuration services ready");
    tonic::transport::Server::builder()
        .add_service(IstioCertificateServiceServer::new(service))
        .add_service(ConfigServiceServer::new(config_service))
        .serve_with_incoming_shutdown(serve::tls_incoming(listener, config), shutdown())
        .await?;
    Ok(())
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
