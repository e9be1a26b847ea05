//! Sending a request to a target: resolving it to a cluster of endpoints, applying the
//! cluster's connection-pool limits, picking an endpoint, and reusing HTTP connections to it.
//! HTTP/1.1 connections serve one request at a time and go back to the pool once their
//! response body has been read to the end; HTTP/2 (gRPC) connections are shared.
//!
//! # Layout
//! - `connect`: byte streams to endpoints, HBONE or plain;
//! - `cluster`: load balancing, limits and outlier detection per cluster.

pub mod cluster;
pub mod connect;

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use self::{
    cluster::{Cluster, Policy},
    connect::{ConnectError, Connector},
};
use crate::{
    routes::Target,
    store::{Endpoint, Snapshot},
};

/// Response bodies the proxy hands downstream.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// How long a request waits for a pooled connection when the pool is at its limit.
const PENDING_WAIT: Duration = Duration::from_secs(10);

/// Why a request got no response from the cluster (Envoy's response flags).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(String),
    #[error("no cluster for {0}")]
    NoRoute(String),
    #[error("upstream overflow: {0}")]
    Overflow(&'static str),
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: Box<ConnectError>,
    },
    #[error("upstream {addr} reset the request: {source}")]
    Reset {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

impl Failure {
    /// Envoy's response flag for this failure.
    pub fn flag(&self) -> &'static str {
        match self {
            Failure::NoHealthyUpstream(_) => "UH",
            Failure::NoRoute(_) => "NR",
            Failure::Overflow(_) => "UO",
            Failure::Connect { .. } => "UF",
            Failure::Reset { .. } => "UR",
        }
    }
}

/// A resolved target: the endpoints, their policy and the cluster's counters.
pub struct Resolved {
    pub endpoints: Vec<Endpoint>,
    pub policy: Policy,
    pub cluster: Arc<Cluster>,
    pub port: u16,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// An idle HTTP/1.1 connection.
struct Idle {
    sender: http1::SendRequest<Full<Bytes>>,
    served: usize,
}

pub struct Upstreams {
    connector: Connector,
    /// This proxy's own waypoint (`namespace/name`): services bound to another waypoint are
    /// reached through that one.
    own_waypoint: Option<String>,
    clusters: Mutex<HashMap<Target, Arc<Cluster>>>,
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    shared_h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Full<Bytes>>>>,
    /// Wakes requests waiting for a pooled connection.
    returned: tokio::sync::Notify,
}

impl Upstreams {
    pub fn new(connector: Connector, own_waypoint: Option<String>) -> Arc<Self> {
        Arc::new(Upstreams {
            connector,
            own_waypoint,
            clusters: Mutex::default(),
            idle: Mutex::default(),
            shared_h2: Mutex::default(),
            returned: tokio::sync::Notify::new(),
        })
    }

    /// The endpoints and policy of `target` for a request that came in on `port`.
    pub fn resolve(
        &self,
        snapshot: &Snapshot,
        target: &Target,
        port: u16,
    ) -> Result<Resolved, Failure> {
        let service = snapshot
            .services_by_host
            .get(&target.host)
            .ok_or_else(|| Failure::NoRoute(target.host.clone()))?;
        // A gateway's route may leave the port out: a single-port service has only one.
        let port = match (target.port, service.ports.as_slice()) {
            (Some(port), _) => port,
            (None, [(only, _)]) if !service.ports.iter().any(|(p, _)| *p == port) => *only,
            (None, _) => port,
        };
        let rule = snapshot.destination_rules.get(&target.host);
        let subset = match &target.subset {
            Some(name) => Some(
                snapshot
                    .subset(&target.host, name)
                    .ok_or_else(|| Failure::NoRoute(format!("{} subset {name}", target.host)))?,
            ),
            None => None,
        };
        let through = service
            .waypoint
            .as_ref()
            .filter(|w| self.own_waypoint.as_ref() != Some(*w));
        let endpoints = match through {
            // Another waypoint owns this service: it gets the request, for the service address.
            Some(waypoint) => {
                let via = snapshot.waypoint_pod(waypoint).ok_or_else(|| {
                    Failure::NoHealthyUpstream(format!("waypoint {waypoint} has no pod"))
                })?;
                service
                    .addresses
                    .first()
                    .map(|vip| Endpoint {
                        addr: SocketAddr::new(*vip, port),
                        workload: None,
                        via: Some(via),
                    })
                    .into_iter()
                    .collect()
            }
            None => snapshot.endpoints(service, port, subset.map(|s| &s.labels)),
        };
        let policy = Policy::from_rule(
            rule.and_then(|r| r.traffic_policy.as_ref()),
            subset.and_then(|s| s.traffic_policy.as_ref()),
            port,
        );
        let key = Target {
            port: Some(port),
            ..target.clone()
        };
        let cluster = self
            .clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        Ok(Resolved {
            endpoints,
            policy,
            cluster,
            port,
        })
    }

    /// A byte stream to an endpoint (TCP carried through the waypoint).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&mesh_core::Identity>,
        via: Option<&(std::net::IpAddr, mesh_core::Identity)>,
    ) -> Result<connect::Conn, ConnectError> {
        self.connector.connect(addr, identity, via).await
    }

    /// One workload addressed directly (traffic to a pod bound to this waypoint): a cluster
    /// of that one endpoint, with the default policy.
    pub fn resolve_workload(
        &self,
        workload: &Arc<crate::store::Workload>,
        target: SocketAddr,
    ) -> Resolved {
        let key = Target {
            host: target.ip().to_string(),
            subset: None,
            port: Some(target.port()),
        };
        let cluster = self
            .clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        Resolved {
            endpoints: vec![Endpoint {
                addr: target,
                workload: Some(workload.clone()),
                via: None,
            }],
            policy: Policy::default(),
            cluster,
            port: target.port(),
        }
    }

    /// Sends `request` to `endpoint` of `resolved`'s cluster, within its limits.
    pub async fn send(
        self: &Arc<Self>,
        resolved: &Resolved,
        endpoint: &Endpoint,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Body>, Failure> {
        let cluster = &resolved.cluster;
        let limits = &resolved.policy.limits;
        let active = cluster.active_requests.fetch_add(1, Ordering::AcqRel) + 1;
        let mut guard = InFlight {
            cluster: cluster.clone(),
            endpoint: cluster.stats(endpoint.addr),
            returns: None,
        };
        guard.endpoint.active.fetch_add(1, Ordering::AcqRel);
        if limits.max_requests.is_some_and(|max| active > max) {
            return Err(Failure::Overflow("max requests"));
        }
        let h2 = request.version() == Version::HTTP_2;
        let identity = endpoint
            .workload
            .as_ref()
            .filter(|w| w.enrolled)
            .and_then(|w| w.identity.as_ref());
        let addr = endpoint.addr;
        let via = endpoint.via.as_ref();
        let response = if h2 {
            let mut sender = self.h2_sender(addr, identity, via).await?;
            sender
                .send_request(request)
                .await
                .map_err(|source| Failure::Reset { addr, source })?
        } else {
            let mut idle = self.h1_sender(resolved, addr, identity, via).await?;
            let response = idle
                .sender
                .send_request(request)
                .await
                .map_err(|source| Failure::Reset { addr, source })?;
            idle.served += 1;
            let reusable = limits
                .max_requests_per_connection
                .is_none_or(|max| idle.served < max);
            if reusable {
                guard.returns = Some((self.clone(), addr, idle));
            }
            response
        };
        let (parts, body) = response.into_parts();
        if body.is_end_stream() {
            // No body to read (a 204, an empty 200): the connection is free now.
            guard.finished();
            return Ok(Response::from_parts(parts, local_body(Bytes::new())));
        }
        let body = Tracked {
            inner: body,
            guard: Some(guard),
        };
        Ok(Response::from_parts(parts, UnsyncBoxBody::new(body)))
    }

    async fn h2_sender(
        &self,
        addr: SocketAddr,
        identity: Option<&mesh_core::Identity>,
        via: Option<&(std::net::IpAddr, mesh_core::Identity)>,
    ) -> Result<http2::SendRequest<Full<Bytes>>, Failure> {
        let existing = self
            .shared_h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .filter(|s| !s.is_closed())
            .cloned();
        if let Some(sender) = existing {
            return Ok(sender);
        }
        let Sender::H2(sender) = self.open(addr, identity, via, true, None).await? else {
            unreachable!("asked for HTTP/2")
        };
        self.shared_h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, sender.clone());
        Ok(sender)
    }

    /// An idle HTTP/1.1 connection to `addr`, a new one, or (at the connection limit) the
    /// next one returned, waiting as a pending request.
    async fn h1_sender(
        &self,
        resolved: &Resolved,
        addr: SocketAddr,
        identity: Option<&mesh_core::Identity>,
        via: Option<&(std::net::IpAddr, mesh_core::Identity)>,
    ) -> Result<Idle, Failure> {
        let cluster = &resolved.cluster;
        let limits = &resolved.policy.limits;
        let mut pending: Option<PendingSlot> = None;
        let deadline = tokio::time::Instant::now() + PENDING_WAIT;
        loop {
            let returned = self.returned.notified();
            if let Some(idle) = self.take_idle(addr) {
                return Ok(idle);
            }
            let connections = cluster.connections.load(Ordering::Acquire);
            if limits.max_connections.is_none_or(|max| connections < max) {
                let slot = cluster.connections.clone();
                let Sender::H1(sender) = self.open(addr, identity, via, false, Some(slot)).await?
                else {
                    unreachable!("asked for HTTP/1.1")
                };
                return Ok(Idle { sender, served: 0 });
            }
            if pending.is_none() {
                let waiting = cluster.pending.fetch_add(1, Ordering::AcqRel) + 1;
                pending = Some(PendingSlot(cluster.clone()));
                // Envoy's default of 1024 pending requests when the rule sets none.
                if waiting > limits.max_pending.unwrap_or(1024) {
                    return Err(Failure::Overflow("pending requests"));
                }
            }
            if tokio::time::timeout_at(deadline, returned).await.is_err() {
                return Err(Failure::Overflow("no connection freed in time"));
            }
        }
    }

    /// A pooled connection to `addr` ready for a request. One whose last response was just
    /// read may not be marked ready yet: it stays pooled for the next request.
    fn take_idle(&self, addr: SocketAddr) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        list.retain(|candidate| !candidate.sender.is_closed());
        let ready = list
            .iter()
            .position(|candidate| candidate.sender.is_ready())?;
        Some(list.swap_remove(ready))
    }

    fn give_back(&self, addr: SocketAddr, idle: Idle) {
        if !idle.sender.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(addr)
                .or_default()
                .push(idle);
        }
        self.returned.notify_one();
    }

    /// A new HTTP connection to `addr`; `slot` counts it against its cluster while it lives.
    async fn open(
        &self,
        addr: SocketAddr,
        identity: Option<&mesh_core::Identity>,
        via: Option<&(std::net::IpAddr, mesh_core::Identity)>,
        h2: bool,
        slot: Option<Arc<AtomicUsize>>,
    ) -> Result<Sender, Failure> {
        if let Some(slot) = &slot {
            slot.fetch_add(1, Ordering::AcqRel);
        }
        let release = move || {
            if let Some(slot) = &slot {
                slot.fetch_sub(1, Ordering::AcqRel);
            }
        };
        let conn = match self.connector.connect(addr, identity, via).await {
            Ok(conn) => conn,
            Err(source) => {
                release();
                return Err(Failure::Connect {
                    addr,
                    source: Box::new(source),
                });
            }
        };
        tracing::debug!(%addr, h2, via = ?via.map(|v| v.0), "new upstream HTTP connection");
        let io = TokioIo::new(conn);
        let handshake = |e: hyper::Error| Failure::Reset { addr, source: e };
        if h2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(handshake)?;
            tokio::spawn(async move {
                let _ = connection.await;
                release();
            });
            Ok(Sender::H2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await.map_err(handshake)?;
            tokio::spawn(async move {
                let _ = connection.await;
                release();
            });
            Ok(Sender::H1(sender))
        }
    }
}

/// A request waiting for a connection, counted while it waits.
struct PendingSlot(Arc<Cluster>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request in flight: counted in its cluster and endpoint until its response body ends,
/// when its HTTP/1.1 connection (if reusable) goes back to the pool.
struct InFlight {
    cluster: Arc<Cluster>,
    endpoint: Arc<cluster::EndpointStats>,
    /// Where the connection goes back once the response is read to the end.
    returns: Option<(Arc<Upstreams>, SocketAddr, Idle)>,
}

impl InFlight {
    fn finished(mut self) {
        if let Some((upstreams, addr, idle)) = self.returns.take() {
            upstreams.give_back(addr, idle);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cluster.active_requests.fetch_sub(1, Ordering::AcqRel);
        self.endpoint.active.fetch_sub(1, Ordering::AcqRel);
        if let Some((upstreams, _, _)) = self.returns.take() {
            // Not read to the end: the connection is dropped (closed); a waiter may open one.
            upstreams.returned.notify_one();
        }
    }
}

/// A response body that gives its connection back once read to the end (a body dropped
/// early leaves the connection unusable: it is closed instead).
struct Tracked {
    inner: hyper::body::Incoming,
    guard: Option<InFlight>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // hyper stops polling a body that says it ended, so the end is noticed both ways.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended && let Some(guard) = self.guard.take() {
            guard.finished();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body made here (an error page, a fault's answer).
pub fn local_body(text: impl Into<Bytes>) -> Body {
    UnsyncBoxBody::new(Full::new(text.into()).map_err(|never| match never {}))
}
