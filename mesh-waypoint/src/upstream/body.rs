//! Requests counted while they wait for a connection or are in flight, and response bodies
//! that give their HTTP/1.1 connection back to the pool once read to the end.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};

use super::{
    Body, Idle, Upstreams,
    cluster::{Cluster, EndpointStats},
};

/// A request waiting for a connection, counted while it waits.
pub(super) struct PendingSlot(pub(super) Arc<Cluster>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request in flight: counted in its cluster and endpoint until its response body ends,
/// when its HTTP/1.1 connection (if reusable) goes back to the pool.
pub(super) struct InFlight {
    pub(super) cluster: Arc<Cluster>,
    pub(super) endpoint: Arc<EndpointStats>,
    /// Where the connection goes back once the response is read to the end.
    pub(super) returns: Option<(Arc<Upstreams>, SocketAddr, Idle)>,
}

impl InFlight {
    pub(super) fn finished(mut self) {
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
pub(super) struct Tracked {
    pub(super) inner: hyper::body::Incoming,
    pub(super) guard: Option<InFlight>,
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
