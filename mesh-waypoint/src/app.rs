//! Wires the waypoint: its certificate, the configuration stream, the HBONE listener and the
//! HTTP endpoints (metrics, readiness, admin), which run apart from the data path.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::{
    Identity,
    ca_client::{CaClient, Token, TrustRoots},
    config_client::{ConfigView, follow},
    config_pb::Role,
};

use crate::{
    config::Config,
    identity::Certificates,
    metrics::Metrics,
    store::{Snapshot, Store},
    upstream::{Upstreams, connect::Connector},
};

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the proxy and the endpoints share.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub certificates: Arc<Certificates>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Metrics,
    /// The threads downstream connections are served on.
    pub workers: crate::workers::Workers,
    /// Span export, when an OTLP endpoint is configured.
    pub spans: Option<crate::spans::Exporter>,
    /// A first configuration was applied.
    configured: AtomicBool,
    /// Signals once the waypoint stops accepting: HBONE connections then send GOAWAY.
    pub drain: mesh_core::drain::Watch,
    /// HBONE connections being served, which a drain waits for.
    pub connections: Arc<mesh_core::transport::StreamCount>,
    /// Told to stop: readiness fails from then on.
    stopping: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot serve {what} on {addr}: {source}")]
    Serve {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub async fn run(config: Config) -> Result<(), Error> {
    let identity = Identity::new(
        &config.trust_domain,
        &config.namespace,
        &config.service_account,
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    let ca = ca_client(&config)?;
    let certificates = Certificates::new(identity.clone());
    tokio::spawn(
        certificates
            .clone()
            .keep_issued(ca.clone(), Duration::from_secs(config.cert_lifetime)),
    );
    let (drain_trigger, drain) = mesh_core::drain::channel();
    let app = Arc::new(App {
        drain,
        connections: mesh_core::transport::StreamCount::new(),
        stopping: AtomicBool::new(false),
        upstreams: Upstreams::new(
            Connector::new(certificates.clone(), &config.limits),
            config.waypoint.clone(),
            config
                .pod_name
                .as_ref()
                .map(|name| (config.namespace.clone(), name.clone())),
        ),
        certificates,
        store: Store::default(),
        metrics: Metrics::default(),
        spans: {
            use crate::spans::{Exporter, Format};
            let collectors: Vec<(Format, &str)> = [
                (Format::Otlp, config.otlp_endpoint.as_deref()),
                (Format::Zipkin, config.zipkin_endpoint.as_deref()),
            ]
            .into_iter()
            .filter_map(|(format, endpoint)| Some((format, endpoint?)))
            .collect();
            match collectors.is_empty() {
                true => None,
                false => Some(
                    Exporter::start(
                        &collectors,
                        format!("{}.{}", config.service_account, config.namespace),
                    )
                    .map_err(Error::Config)?,
                ),
            }
        },
        configured: AtomicBool::new(false),
        workers: crate::workers::Workers::start(config.worker_threads).map_err(|source| {
            Error::Serve {
                what: "worker threads",
                addr: config.hbone_addr,
                source,
            }
        })?,
        config,
    });
    tokio::spawn(follow_config(app.clone(), ca));
    for (addr, what) in [
        (app.config.metrics_addr, "metrics"),
        (app.config.readiness_addr, "readiness"),
        (app.config.admin_addr, "admin"),
    ] {
        serve_endpoint(addr, what, app.clone()).await?;
    }
    let listener = tokio::net::TcpListener::bind(app.config.hbone_addr)
        .await
        .map_err(|source| Error::Serve {
            what: "HBONE",
            addr: app.config.hbone_addr,
            source,
        })?;
    if app.config.ingress_gateway.is_some() {
        tokio::spawn(follow_gateway(app.clone()));
    }
    tracing::info!(addr = %app.config.hbone_addr, %identity, waypoint = ?app.config.waypoint,
        ingress = ?app.config.ingress_gateway, "listening");
    let mut serving = Box::pin(crate::inbound::serve(listener, app.clone()));
    tokio::select! {
        () = &mut serving => {}
        () = mesh_core::process::shutdown_signal() => {}
    }
    stop(&app, serving, drain_trigger).await;
    Ok(())
}

/// Stops without failing a request: reported not ready at once, still accepting for the drain
/// delay (until no node agent sends here), then not accepting; every HBONE connection is sent
/// GOAWAY and every HTTP connection inside one closes after its current request; the requests
/// in flight finish, up to the drain deadline or a second signal.
async fn stop(
    app: &App,
    mut serving: std::pin::Pin<Box<impl Future<Output = ()>>>,
    trigger: mesh_core::drain::Trigger,
) {
    app.stopping.store(true, Ordering::Release);
    let delay = Duration::from_secs(app.config.drain_delay_secs);
    tracing::info!(
        delay_secs = delay.as_secs(),
        "stopping: not ready; accepting for the drain delay"
    );
    let again = mesh_core::process::shutdown_signal();
    tokio::pin!(again);
    tokio::select! {
        () = &mut serving => {}
        () = tokio::time::sleep(delay) => {}
        () = &mut again => return,
    }
    // The listener closes: new connections are refused (no node agent sends here any more).
    drop(serving);
    trigger.start();
    let deadline = Duration::from_secs(app.config.drain_timeout_secs);
    tracing::info!(
        connections = app.connections.in_flight(),
        deadline_secs = deadline.as_secs(),
        "draining: GOAWAY sent; requests in flight go on"
    );
    mesh_core::drain::wait_carried(|| app.connections.in_flight(), deadline, again).await;
}

fn ca_client(config: &Config) -> Result<CaClient, Error> {
    let roots =
        TrustRoots::from_file(config.ca_root.clone()).map_err(|e| Error::Config(e.to_string()))?;
    let token = Token::File(config.token_file.clone());
    token
        .current()
        .map_err(|e| Error::Config(e.message().to_owned()))?;
    let controller =
        Identity::controller(&config.trust_domain).map_err(|e| Error::Config(e.to_string()))?;
    CaClient::new(&config.ca_addr, roots, controller, token)
        .map_err(|e| Error::Config(e.to_string()))
}

/// Follows the configuration stream forever. Workloads go to the workload index one at a
/// time; any other change rebuilds the snapshot. Resources the waypoint cannot use are left
/// out and logged (the controller validated them already), so one of them never holds back
/// the rest.
async fn follow_config(app: Arc<App>, ca: CaClient) {
    let mut view = ConfigView::keeping_out(&[crate::store::WORKLOAD_KIND]);
    let mut backoff = BACKOFF_MIN;
    loop {
        let (mut client, token) = ca.config_service();
        let result = match token.current() {
            Err(status) => Err(status),
            Ok(token) => {
                follow(
                    &mut client,
                    Role::Waypoint,
                    Some(&token),
                    &mut view,
                    |_| Ok(()),
                    |view, update| {
                        backoff = BACKOFF_MIN;
                        let touched = app.store.workloads.apply(update, &app.config.trust_domain);
                        app.store.applied(update.version);
                        app.metrics
                            .workload_changes
                            .record(&touched, app.store.workloads.len());
                        if !touched.is_empty() {
                            tracing::debug!(
                                version = update.version,
                                upserted = touched.upserted.len(),
                                removed = touched.removed.len(),
                                held = app.store.workloads.len(),
                                "workloads updated"
                            );
                        }
                        let others_changed = update.base_version == 0
                            || update
                                .upserts
                                .iter()
                                .filter_map(|r| r.key.as_ref())
                                .chain(&update.removes)
                                .any(|k| k.kind != crate::store::WORKLOAD_KIND);
                        if !others_changed {
                            return;
                        }
                        let snapshot = Snapshot::build(
                            view,
                            &app.config.cluster_domain,
                            &app.config.trust_domain,
                            &app.config.root_namespace,
                            app.config.ingress_gateway.as_deref(),
                        );
                        for error in &snapshot.errors {
                            tracing::warn!(version = update.version, "not applied: {error}");
                        }
                        tracing::info!(
                            version = update.version,
                            services = snapshot.services_by_host.len(),
                            "configuration from the controller"
                        );
                        app.store.set(snapshot);
                        app.configured.store(true, Ordering::Release);
                    },
                )
                .await
            }
        };
        match result {
            Ok(()) => tracing::warn!("the controller ended the configuration stream; reconnecting"),
            Err(status) => tracing::warn!(%status, "configuration stream failed; reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Ingress mode: keeps the listeners equal to the Gateway's servers.
async fn follow_gateway(app: Arc<App>) {
    let mut listeners = crate::ingress::Listeners::default();
    let mut changes = app.store.subscribe();
    let name = app.config.ingress_gateway.clone().unwrap_or_default();
    loop {
        let snapshot = app.store.get();
        let gateway = snapshot.gateways.get(&name).cloned();
        if gateway.is_none() && snapshot.version > 0 {
            tracing::warn!(gateway = %name, "no such Gateway in the configuration; nothing to listen for");
        }
        let credentials = crate::ingress::Credentials {
            namespace: name.split_once('/').map_or("", |(namespace, _)| namespace),
            secrets: &snapshot.credentials,
        };
        listeners
            .reconcile(gateway.as_deref(), &credentials, &app)
            .await;
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_endpoint(addr: SocketAddr, what: &'static str, app: Arc<App>) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve { what, addr, source })?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = endpoint(what, &app, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn endpoint<B>(what: &str, app: &App, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (what, request.uri().path()) {
        ("metrics", "/metrics" | "/stats/prometheus") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics.encode(),
        ),
        ("readiness", "/healthz/ready") => {
            let ready = app.certificates.current().is_some()
                && app.configured.load(Ordering::Acquire)
                && !app.stopping.load(Ordering::Acquire);
            if ready {
                reply(StatusCode::OK, "text/plain", "ready\n".to_owned())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for a certificate and a first configuration\n".to_owned(),
                )
            }
        }
        ("admin", "/config_dump") => {
            let snapshot = app.store.get();
            let mut services: Vec<&String> = snapshot.services_by_host.keys().collect();
            services.sort();
            let dump = serde_json::json!({
                "config": &app.config,
                "version": app.store.applied_version(),
                "services": services,
                "workloads": app.store.workloads.len(),
                "errors": snapshot.errors,
                "certificate": app.certificates.current().is_some(),
            });
            reply(StatusCode::OK, "application/json", dump.to_string())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    }
}
