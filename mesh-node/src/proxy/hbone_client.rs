//! HBONE client: captured connections to enrolled pods are carried as CONNECT streams over
//! mutual TLS to the destination pod's port 15008. Connections are pooled per (source pod,
//! destination address) and multiplexed; the server must present the destination workload's
//! identity before any request is sent.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::{Identity, hbone, tls::identity_of};
use rustls::pki_types::ServerName;

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

/// Open HTTP/2 connections, keyed by source pod and destination address.
#[derive(Clone, Default)]
pub struct HbonePool {
    connections: Arc<Mutex<HashMap<Key, SendRequest<Empty<Bytes>>>>>,
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
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, Error> {
        let mut sender = self.sender(state, pod, target.ip(), expected).await?;
        let response = sender
            .send_request(hbone::connect_request(target, client).map(|()| Empty::new()))
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
        Ok(TokioIo::new(upgraded))
    }

    async fn sender(
        &self,
        state: &State,
        pod: &PodContext,
        ip: IpAddr,
        expected: &Identity,
    ) -> Result<SendRequest<Empty<Bytes>>, Error> {
        let key = (pod.pod.key(), ip);
        if let Some(sender) = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && sender.is_ready()
        {
            return Ok(sender.clone());
        }
        let sender = open(state, pod, SocketAddr::new(ip, hbone::PORT), expected).await?;
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, sender.clone());
        Ok(sender)
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
        .get(&pod.identity)
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
