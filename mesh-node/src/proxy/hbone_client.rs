//! HBONE client: captured connections to enrolled pods are carried as CONNECT streams over
//! mutual TLS to the destination pod's port 15008. Connections are pooled per (source pod,
//! destination address) and multiplexed, up to [`STREAMS_PER_CONNECTION`] tunnels each (more
//! open another connection); the server must present the destination workload's identity
//! before any request is sent.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::{Identity, hbone, tls::identity_of};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{PodContext, connect_from_pod, hbone_settings};
use crate::app::State;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no certificate yet for {0}")]
    NoCertificate(Identity),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer at {addr} presented {got:?}, not the expected {want}")]
    WrongPeer {
        addr: SocketAddr,
        got: Option<String>,
        want: Identity,
    },
    #[error("HTTP/2 with {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("CONNECT {target} answered {status}")]
    Status {
        target: SocketAddr,
        status: hyper::StatusCode,
    },
}

type Key = (String, IpAddr);

/// Tunnels per HTTP/2 connection before another is opened (ztunnel's number; servers allow
/// 200, so a full connection never queues).
pub const STREAMS_PER_CONNECTION: usize = 100;

struct Pooled {
    sender: SendRequest<Empty<Bytes>>,
    /// Tunnels open on this connection.
    active: Arc<AtomicUsize>,
}

/// Open HTTP/2 connections, keyed by source pod and destination address.
#[derive(Clone, Default)]
pub struct HbonePool {
    connections: Arc<Mutex<HashMap<Key, Vec<Pooled>>>>,
}

/// A tunnel, counted against its connection's streams until dropped.
pub struct Tunnel {
    io: TokioIo<hyper::upgrade::Upgraded>,
    active: Arc<AtomicUsize>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl HbonePool {
    /// Opens a CONNECT stream to `target` for `pod`'s app; returns the tunnel as a byte stream.
    pub async fn connect(
        &self,
        state: &State,
        pod: &PodContext,
        target: SocketAddr,
        expected: &Identity,
        client: SocketAddr,
    ) -> Result<Tunnel, Error> {
        let (mut sender, active) = self.sender(state, pod, target.ip(), expected).await?;
        // The slot is taken: give it back if the tunnel is not established.
        let mut release = Release(Some(active));
        let workload = super::workload_name(&pod.pod);
        let baggage = hbone::Baggage {
            namespace: &pod.pod.namespace,
            pod: &pod.pod.name,
            workload: &workload,
        };
        let request = hbone::connect_request(target, client, Some(baggage)).map(|()| Empty::new());
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| Error::Http {
                addr: target,
                source,
            })?;
        if response.status() != hyper::StatusCode::OK {
            return Err(Error::Status {
                target,
                status: response.status(),
            });
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|source| Error::Http {
                addr: target,
                source,
            })?;
        let active = release.0.take().expect("taken once");
        Ok(Tunnel {
            io: TokioIo::new(upgraded),
            active,
        })
    }

    async fn sender(
        &self,
        state: &State,
        pod: &PodContext,
        ip: IpAddr,
        expected: &Identity,
    ) -> Result<(SendRequest<Empty<Bytes>>, Arc<AtomicUsize>), Error> {
        let key = (pod.pod.key(), ip);
        {
            let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            let pooled = connections.entry(key.clone()).or_default();
            pooled.retain(|p| !p.sender.is_closed());
            let free = pooled.iter().find(|p| {
                p.sender.is_ready() && p.active.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION
            });
            if let Some(p) = free {
                p.active.fetch_add(1, Ordering::Relaxed);
                return Ok((p.sender.clone(), p.active.clone()));
            }
        }
        let sender = open(state, pod, SocketAddr::new(ip, hbone::PORT), expected).await?;
        let active = Arc::new(AtomicUsize::new(1));
        let pooled = Pooled {
            sender: sender.clone(),
            active: active.clone(),
        };
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.entry(key).or_default().push(pooled);
        Ok((sender, active))
    }
}

/// Gives a stream slot back unless taken over by a [`Tunnel`].
struct Release(Option<Arc<AtomicUsize>>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(active) = &self.0 {
            active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn open(
    state: &State,
    pod: &PodContext,
    addr: SocketAddr,
    expected: &Identity,
) -> Result<SendRequest<Empty<Bytes>>, Error> {
    let certs = state
        .certificates
        .as_ref()
        .ok_or_else(|| Error::NoCertificate(pod.identity.clone()))?;
    let issued = certs
        .wait_for(&pod.identity, super::CERTIFICATE_WAIT)
        .await
        .ok_or_else(|| Error::NoCertificate(pod.identity.clone()))?;
    let tcp = connect_from_pod(pod, addr, None)
        .await
        .map_err(|source| Error::Connect { addr, source })?;
    let tls = tokio_rustls::TlsConnector::from(issued.client.clone())
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|source| Error::Tls { addr, source })?;
    let got = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(identity_of);
    match got {
        Some(Ok(identity)) if &identity == expected => {}
        other => {
            let got = other.map(|r| r.map(|i| i.to_string()).unwrap_or_else(|e| e.to_string()));
            return Err(Error::WrongPeer {
                addr,
                got,
                want: expected.clone(),
            });
        }
    }
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    hbone_settings::client(&mut builder);
    let (sender, connection) = builder
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|source| Error::Http { addr, source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, %addr, "HBONE connection closed");
        }
    });
    Ok(sender)
}
