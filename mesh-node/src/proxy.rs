//! Carrying captured connections: each enrolled pod has outbound, inbound and HBONE listeners
//! inside its network namespace. Connections to enrolled pods go over HBONE (mutual TLS);
//! others are forwarded as plain TCP to their original destination from a socket made in the
//! same namespace (so the pod's own address is the source, as without the mesh).

mod connections;
mod copy;
mod hbone_client;
mod hbone_server;
mod inbound;
mod outbound;
mod tunnel;

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Instant,
};

use mesh_core::{
    Identity,
    telemetry::{Peer, ServiceLabel, TrafficLabels, UNKNOWN},
};
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpSocket, TcpStream};

pub use connections::{Authorized, ConnectionInfo, Connections, Rechecked};
pub use hbone_client::HbonePool;
pub use hbone_server::serve_hbone;
pub use inbound::serve_inbound;
pub use outbound::serve_outbound;

use crate::{
    app::State,
    metrics::{Reporter, ResponseFlags, TcpLabels},
    netns::NetNs,
    pods::Pod,
};

/// How long a connection of a pod that just joined waits for the pod's first certificate.
const CERTIFICATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the proxies need to know about an enrolled pod.
#[derive(Debug)]
pub struct PodContext {
    /// `namespace/name`, for logs and connection records: it never changes in place.
    pub key: String,
    /// The pod's spec. Its labels and waypoint binding change in place, without taking the
    /// pod's listeners down: a relabelled pod keeps its connections and keeps accepting.
    spec: RwLock<Arc<Pod>>,
    pub netns: NetNs,
    pub netns_cookie: u64,
    /// The pod's SPIFFE identity (its namespace and service account).
    pub identity: Identity,
}

impl PodContext {
    pub fn new(pod: Pod, netns: NetNs, netns_cookie: u64, identity: Identity) -> Self {
        Self {
            key: pod.key(),
            spec: RwLock::new(Arc::new(pod)),
            netns,
            netns_cookie,
            identity,
        }
    }

    /// The pod as the pods file last described it.
    pub fn pod(&self) -> Arc<Pod> {
        self.spec.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes a new spec that differs only in what can change under live connections
    /// (labels, waypoint binding).
    pub fn update(&self, pod: &Pod) {
        *self.spec.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pod.clone());
    }
}

/// The source the agent delivers inbound connections to the app from: loopback addresses
/// `sk_lookup` lets through (127.0.0.6 as Istio uses, and `::1` for IPv6).
fn delivery_source(dst: SocketAddr) -> SocketAddr {
    use mesh_common::{INBOUND_DELIVERY_SOURCE, INBOUND_DELIVERY_SOURCE6};
    let ip: std::net::IpAddr = if dst.is_ipv4() {
        std::net::Ipv4Addr::from(INBOUND_DELIVERY_SOURCE).into()
    } else {
        std::net::Ipv6Addr::from(INBOUND_DELIVERY_SOURCE6).into()
    };
    SocketAddr::new(ip, 0)
}

/// Opens a TCP connection from inside the pod's namespace, optionally from a fixed source.
async fn connect_from_pod(
    pod: &PodContext,
    dst: SocketAddr,
    source: Option<SocketAddr>,
) -> std::io::Result<TcpStream> {
    let socket = pod.netns.socket(socket2::Domain::for_address(dst))?;
    socket.set_nodelay(true)?;
    if let Some(source) = source {
        bind_address_no_port(&socket)?;
        socket.bind(&source.into())?;
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(dst).await
}

/// Lets the kernel choose the source port at `connect()` rather than at `bind()`
/// (`IP_BIND_ADDRESS_NO_PORT`). Every inbound delivery to a pod binds the same address, so a
/// port chosen at bind time must be free of every other socket on that address, TIME_WAIT
/// ones included: past ~20,000 deliveries a minute bind scanned the whole range under its
/// lock and then failed. Chosen at connect time, a port only has to make the four-tuple
/// unique, and TIME_WAIT ports on loopback are reused.
fn bind_address_no_port(socket: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let enable: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Spawns the task that runs `carry` (copying both ways until both sides are done, counting
/// the bytes in the connection's [`ByteCounters`]; it returns the bytes each way), registered
/// as a live connection that a policy change can close; then records that it closed.
///
/// A task of its own, so that what a connection holds while it lives is only this: the state
/// of setting it up (handshakes, requests) is gone with the task that did it.
fn forward(
    state: Arc<State>,
    labels: TcpLabels,
    carry: impl Future<Output = std::io::Result<(u64, u64)>> + Send + 'static,
    info: ConnectionInfo,
    authorized: Option<Authorized>,
) {
    let (src, dst) = (info.source, info.destination);
    let mut registration = state.connections.register(info, authorized);
    state
        .metrics
        .connections_opened
        .get_or_create(&labels)
        .inc();
    tokio::spawn(async move {
        let started = Instant::now();
        tokio::pin!(carry);
        let closed = registration.closed.wait_for(|close| *close);
        let result = tokio::select! {
            result = &mut carry => result,
            _ = closed => {
                tracing::info!(%src, %dst, "connection closed: policy no longer allows it");
                Err(std::io::Error::other("closed by policy"))
            }
        };
        let (up, down) = match result {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::debug!(%error, %src, %dst, "connection ended with an error");
                (0, 0)
            }
        };
        state
            .metrics
            .connections_closed
            .get_or_create(&labels)
            .inc();
        tracing::debug!(
            %src, %dst, up, down,
            duration_ms = started.elapsed().as_millis() as u64, "connection closed"
        );
    });
}

/// Labels for a connection between `local` (an enrolled pod of this node) and a peer; with
/// the peer's verified identity when the connection is mutual TLS, and the Service it was
/// addressed to when it was.
fn labels(
    state: &State,
    reporter: Reporter,
    local: &PodContext,
    peer: SocketAddr,
    peer_identity: Option<&Identity>,
    service: Option<&ServiceLabel>,
    flags: ResponseFlags,
) -> TcpLabels {
    let cluster = &state.config.cluster_id;
    let mutual_tls = peer_identity.is_some();
    let remote = match state.workloads().by_addr(peer.ip()) {
        Some(pod) => Peer::new(
            &pod.names(),
            &pod.namespace,
            peer_identity.map(ToString::to_string),
            cluster,
        ),
        None => Peer {
            principal: peer_identity.map_or_else(|| UNKNOWN.to_owned(), ToString::to_string),
            ..Peer::unknown()
        },
    };
    let local_pod = local.pod();
    let local = Peer::new(
        &local_pod.names(),
        &local_pod.namespace,
        mutual_tls.then(|| local.identity.to_string()),
        cluster,
    );
    let (source, destination) = match reporter {
        Reporter::Source => (&local, &remote),
        Reporter::Destination => (&remote, &local),
    };
    TrafficLabels::new(
        reporter.as_str(),
        source,
        destination,
        service,
        "tcp",
        mutual_tls,
    )
    .with_flags(flags.as_str())
}

/// A connection's byte counters, counted as the bytes pass (a long transfer shows in the rates
/// while it runs). Istio's names: `received` is what the client sent (the request's
/// direction), `sent` what the server answered.
#[derive(Clone)]
pub struct ByteCounters {
    pub from_client: Counter,
    pub from_server: Counter,
}

impl ByteCounters {
    fn of(state: &State, labels: &TcpLabels) -> Self {
        ByteCounters {
            from_client: state.metrics.received_bytes.get_or_create(labels).clone(),
            from_server: state.metrics.sent_bytes.get_or_create(labels).clone(),
        }
    }
}

/// The Service an inbound connection to `pod`'s `port` most likely came through: the
/// connection names the pod's address, not a service (see `Services::serving`).
fn inbound_service(state: &State, pod: &PodContext, port: u16) -> Option<ServiceLabel> {
    state
        .services()
        .serving(&pod.pod(), port)
        .map(|s| s.label.clone())
}

/// Counts an inbound connection to `pod`'s `port` that could not be carried.
fn record_inbound_failure(
    state: &State,
    pod: &PodContext,
    peer: SocketAddr,
    port: u16,
    flags: ResponseFlags,
) {
    let service = inbound_service(state, pod, port);
    record_failure(
        state,
        Reporter::Destination,
        pod,
        peer,
        service.as_ref(),
        flags,
    );
}

/// Counts a captured connection that could not be carried.
fn record_failure(
    state: &State,
    reporter: Reporter,
    local: &PodContext,
    peer: SocketAddr,
    service: Option<&ServiceLabel>,
    flags: ResponseFlags,
) {
    let labels = labels(state, reporter, local, peer, None, service, flags);
    state
        .metrics
        .connections_failed
        .get_or_create(&labels)
        .inc();
}
