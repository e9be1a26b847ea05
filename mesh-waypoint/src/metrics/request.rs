//! Recording a request: its series are chosen when its response headers are known, and it is
//! counted when the response ends (or is dropped: a client that went away still made a
//! request), with the bytes that really passed each way, whatever Content-Length said.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

use super::{GrpcStatus, RequestLabels, access_log, traffic_labels};
use crate::{
    app::App,
    proxy::{Destination, Downstream, Outcome},
    store::Workload,
    upstream::Body,
};

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// One label set's four series, cloned out of their families (each is a shared handle).
#[derive(Clone)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// What decides a request's labels beyond its connection. Requests on one connection mostly
/// share it, so a connection keeps the series of its last few keys and finds them by this
/// without building, hashing and comparing seventeen labels per request.
struct SeriesKey {
    /// Held (not just its address) so a freed workload's address cannot be mistaken for it.
    destination: Option<Arc<Workload>>,
    service: Option<String>,
    response_code: u16,
    /// The gRPC status code (0-16), as far as the upstream's `grpc-status` is one.
    grpc_status: Option<GrpcStatus>,
    flags: Vec<&'static str>,
    grpc: bool,
}

impl SeriesKey {
    fn matches(&self, other: &SeriesKey) -> bool {
        let same_destination = match (&self.destination, &other.destination) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_destination
            && self.response_code == other.response_code
            && self.grpc == other.grpc
            && self.flags == other.flags
            && self.grpc_status == other.grpc_status
            && self.service == other.service
    }
}

/// The series a connection used last, newest first.
#[derive(Default)]
pub struct SeriesCache(Mutex<Vec<(SeriesKey, Series)>>);

/// Label sets a connection remembers (a few destinations and answers).
const CACHED_SERIES: usize = 8;

impl SeriesCache {
    fn get_or_insert(&self, key: SeriesKey, make: impl FnOnce(&SeriesKey) -> Series) -> Series {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = cached.iter().position(|(k, _)| k.matches(&key)) {
            if at != 0 {
                cached[..=at].rotate_right(1);
            }
            return cached[0].1.clone();
        }
        let series = make(&key);
        cached.truncate(CACHED_SERIES - 1);
        cached.insert(0, (key, series.clone()));
        series
    }
}

/// What is known of a request when it arrives, completed when it is answered.
pub struct RequestRecord {
    grpc: bool,
    /// Bytes of the request's body read from the client so far.
    request_bytes: Arc<AtomicU64>,
    logged: Option<access_log::Logged>,
    started: Instant,
}

impl RequestRecord {
    /// Starts recording `request`, whose body is then counted as it is read.
    pub fn start(
        request: Request<hyper::body::Incoming>,
        app: &App,
    ) -> (Self, Request<CountedBody<hyper::body::Incoming>>) {
        let request_bytes = Arc::new(AtomicU64::new(0));
        let record = RequestRecord {
            grpc: request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            request_bytes: request_bytes.clone(),
            logged: access_log::Logged::of(&request, app),
            started: Instant::now(),
        };
        let request = request.map(|inner| CountedBody {
            inner,
            count: request_bytes,
        });
        (record, request)
    }

    /// The response is known: logs it, and returns it with a body that counts the request
    /// once it ends.
    pub fn finish(
        self,
        app: &App,
        downstream: &Downstream,
        outcome: &Outcome,
        response: Response<Body>,
    ) -> Response<Body> {
        let destination =
            outcome
                .upstream_workload
                .clone()
                .or_else(|| match &downstream.destination {
                    Destination::Workload(w) => Some(w.clone()),
                    Destination::Service(_) | Destination::Gateway(_) => None,
                });
        let key = SeriesKey {
            destination,
            service: match &downstream.destination {
                Destination::Gateway(_) => outcome.service.clone(),
                Destination::Service(_) | Destination::Workload(_) => None,
            },
            response_code: response.status().as_u16(),
            grpc_status: response.headers().get(GRPC_STATUS).map(GrpcStatus::of),
            flags: outcome.flags.clone(),
            grpc: self.grpc,
        };
        let series = downstream.series.get_or_insert(key, |key| {
            let labels = labels(downstream, key, &app.config.cluster_id);
            let metrics = &app.metrics;
            Series {
                requests: metrics.requests.get_or_create(&labels).clone(),
                duration: metrics.duration.get_or_create(&labels).clone(),
                request_bytes: metrics.request_bytes.get_or_create(&labels).clone(),
                response_bytes: metrics.response_bytes.get_or_create(&labels).clone(),
            }
        });
        if let Some(logged) = &self.logged {
            let elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
            let destination = outcome.upstream_workload.as_deref();
            access_log::log(
                app,
                downstream,
                outcome,
                logged,
                &response,
                destination,
                elapsed_ms,
            );
        }
        let recording = Recording {
            series,
            request_bytes: self.request_bytes,
            response_bytes: 0,
            started: self.started,
        };
        response.map(|inner| {
            RecordedBody {
                inner,
                recording: Some(recording),
            }
            .boxed_unsync()
        })
    }
}

/// Istio's labels of a request on `downstream` with what `key` says of its answer.
fn labels(downstream: &Downstream, key: &SeriesKey, cluster: &str) -> RequestLabels {
    let protocol = if key.grpc { "grpc" } else { "http" };
    RequestLabels {
        traffic: traffic_labels(
            downstream,
            key.destination.as_deref(),
            key.service.as_deref(),
            protocol,
            cluster,
            &key.flags,
        ),
        response_code: key.response_code,
        grpc_response_status: key.grpc_status.map_or_else(String::new, |s| s.label()),
    }
}

/// A request counted once its response ended.
struct Recording {
    series: Series,
    request_bytes: Arc<AtomicU64>,
    response_bytes: u64,
    started: Instant,
}

impl Drop for Recording {
    fn drop(&mut self) {
        let series = &self.series;
        series.requests.inc();
        series
            .duration
            .observe(self.started.elapsed().as_secs_f64() * 1e3);
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        series.request_bytes.observe(request_bytes as f64);
        series.response_bytes.observe(self.response_bytes as f64);
    }
}

/// A response body that records its request when it ends or is dropped.
struct RecordedBody {
    inner: Body,
    recording: Option<Recording>,
}

impl http_body::Body for RecordedBody {
    type Data = Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(recording)) = (frame.data_ref(), &mut self.recording) {
                    recording.response_bytes += data.len() as u64;
                }
            }
            // Ended, or failed: counted now.
            Poll::Ready(_) => drop(self.recording.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that counts what the client sent through it.
pub struct CountedBody<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> http_body::Body for CountedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
