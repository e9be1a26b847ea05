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
    Body, BoxError, Upstreams,
    cluster::{Cluster, EndpointStats},
    h1::{Connection, ResponseBody},
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
    pub(super) returns: Option<(Arc<Upstreams>, SocketAddr)>,
}

impl InFlight {
    /// The response ended; `connection` is its HTTP/1.1 connection if it can be reused.
    fn finished(mut self, connection: Option<Connection>) {
        if let (Some((upstreams, addr)), Some(connection)) = (self.returns.take(), connection) {
            upstreams.give_back(addr, connection);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cluster.active_requests.fetch_sub(1, Ordering::AcqRel);
        self.endpoint.active.fetch_sub(1, Ordering::AcqRel);
        if let Some((upstreams, _)) = self.returns.take() {
            // Not given back: the connection is dropped (closed); a waiter may open one.
            upstreams.returned.notify_one();
        }
    }
}

/// A response body from an endpoint: whatever can be reused of its connection goes back once
/// it is read to the end.
pub(super) trait Upstream: http_body::Body<Data = Bytes> + Send + Unpin + 'static {
    /// The connection, once the body ended, if another request may use it.
    fn take_reusable(&mut self) -> Option<Connection>;
}

impl Upstream for hyper::body::Incoming {
    fn take_reusable(&mut self) -> Option<Connection> {
        // HTTP/2 connections are shared, never taken.
        None
    }
}

impl Upstream for ResponseBody {
    fn take_reusable(&mut self) -> Option<Connection> {
        ResponseBody::take_reusable(self)
    }
}

/// A response body that ends its request's [`InFlight`] when read to the end (a body
/// dropped early leaves an HTTP/1.1 connection unusable: it is closed instead).
pub(super) struct Tracked<B> {
    inner: B,
    guard: Option<InFlight>,
}

impl<B: Upstream> Tracked<B>
where
    B::Error: Into<BoxError>,
{
    pub(super) fn body(mut inner: B, guard: InFlight) -> Body {
        if inner.is_end_stream() {
            // No body to read (a 204, an empty 200): the connection is free now.
            guard.finished(inner.take_reusable());
            return local_body(Bytes::new());
        }
        let tracked = Tracked {
            inner,
            guard: Some(guard),
        };
        UnsyncBoxBody::new(tracked.map_err(Into::into))
    }
}

impl<B: Upstream> http_body::Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // hyper stops polling a body that says it ended, so the end is noticed both ways.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended && let Some(guard) = self.guard.take() {
            guard.finished(self.inner.take_reusable());
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
