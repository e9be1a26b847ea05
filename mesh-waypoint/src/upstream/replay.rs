//! Request bodies streamed upstream as they arrive, never read whole first: a gRPC stream or
//! an upload goes through at once and in constant memory. What a retry needs is kept as it
//! passes, up to [`KEEP_LIMIT`]: a later try replays the kept frames, then goes on from the
//! source where the last try stopped. A body that outgrew the limit cannot be sent again, so
//! its request is not retried (as in Envoy, whose retries need the body buffered).
//!
//! Mirrors get their copy frame by frame through a bounded channel: a mirror that falls
//! behind is cut off (its upstream sees the body fail, never a truncated body that looks
//! whole), and never slows the original.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request as one try sends it.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// Bytes of a streamed request body kept for another try (Envoy's retry buffer is of this
/// order); past it the request is sent once.
pub const KEEP_LIMIT: usize = 64 << 10;

/// Frames a mirror may lag behind the original before it is cut off.
const MIRROR_QUEUE: usize = 16;

/// A request's body, for as many tries (and mirrors) as it allows.
pub enum Source {
    /// No body, or one read whole (small with a known length): every try gets all of it.
    Whole(Bytes),
    /// Streamed from the client as tries read it.
    Streamed(Arc<Mutex<State>>),
}

impl Source {
    /// Takes `body`: one that is already at its end or announces a small length is read
    /// whole (no stream to keep state for); any other is streamed.
    pub async fn new<B>(body: B) -> Result<Self, BoxError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Ok(Source::Whole(Bytes::new()));
        }
        let hint = body.size_hint();
        if hint
            .exact()
            .is_some_and(|length| length <= KEEP_LIMIT as u64)
        {
            let collected = body.collect().await.map_err(Into::into)?;
            return Ok(Source::Whole(collected.to_bytes()));
        }
        Ok(Source::Streamed(Arc::new(Mutex::new(State {
            source: Some(body.map_err(Into::into).boxed_unsync()),
            hint,
            read: 0,
            kept: Vec::new(),
            kept_bytes: 0,
            trailers: None,
            ended: false,
            spent: false,
            mirrors: Vec::new(),
            waiting: Vec::new(),
        }))))
    }

    /// The body for the next try, or `None` when it cannot be sent again (it outgrew
    /// [`KEEP_LIMIT`] or its client broke it).
    pub fn for_try(&self) -> Option<RequestBody> {
        match self {
            Source::Whole(bytes) => Some(whole(bytes.clone())),
            Source::Streamed(state) => {
                if state.lock().unwrap_or_else(|p| p.into_inner()).spent {
                    return None;
                }
                Some(UnsyncBoxBody::new(Replay {
                    state: state.clone(),
                    next: 0,
                    trailers_sent: false,
                }))
            }
        }
    }

    /// Whether another try can send the body again.
    pub fn replayable(&self) -> bool {
        match self {
            Source::Whole(_) => true,
            Source::Streamed(state) => !state.lock().unwrap_or_else(|p| p.into_inner()).spent,
        }
    }

    /// A copy of the body for a mirror. A streamed body's copy follows the original's
    /// reading; one asked for once the client's frames began to be read would miss some,
    /// so it gets none.
    pub fn for_mirror(&self) -> Option<RequestBody> {
        match self {
            Source::Whole(bytes) => Some(whole(bytes.clone())),
            Source::Streamed(state) => {
                let mut locked = state.lock().unwrap_or_else(|p| p.into_inner());
                if locked.read > 0 || locked.trailers.is_some() || locked.ended {
                    return None;
                }
                let (sender, receiver) = mpsc::channel(MIRROR_QUEUE);
                locked.mirrors.push(sender);
                Some(UnsyncBoxBody::new(MirrorBody {
                    frames: receiver,
                    hint: locked.hint,
                    ended: false,
                }))
            }
        }
    }
}

/// All of a body at once (an empty one is at its end from the start).
fn whole(bytes: Bytes) -> RequestBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What the tries of one streamed body share.
pub struct State {
    /// The client's body; `None` once it ended or failed.
    source: Option<RequestBody>,
    hint: SizeHint,
    /// Data frames read from the client so far.
    read: usize,
    /// Those frames, while they fit in [`KEEP_LIMIT`].
    kept: Vec<Bytes>,
    kept_bytes: usize,
    trailers: Option<HeaderMap>,
    /// The client's body ended (everything read is in `kept` unless `spent`).
    ended: bool,
    /// Frames were sent that are not kept (or the source failed): no other try.
    spent: bool,
    /// Each mirror's queue, dropped (cutting the mirror off) when it is full.
    mirrors: Vec<mpsc::Sender<Result<Frame<Bytes>, ()>>>,
    /// Tries waiting for the client. A try given up on (a per-try timeout) may still be
    /// sending while the next one begins; whichever reads a frame wakes the others, which
    /// find it kept.
    waiting: Vec<Waker>,
}

impl State {
    /// Passes a frame just read from the client to the mirrors and keeps it for retries.
    fn passed(&mut self, frame: &Frame<Bytes>) {
        self.mirrors.retain(|mirror| {
            let copy = match frame.data_ref() {
                Some(data) => Frame::data(data.clone()),
                None => Frame::trailers(frame.trailers_ref().cloned().unwrap_or_default()),
            };
            mirror.try_send(Ok(copy)).is_ok()
        });
        if let Some(data) = frame.data_ref() {
            self.read += 1;
            if !self.spent && self.kept_bytes + data.len() <= KEEP_LIMIT {
                self.kept_bytes += data.len();
                self.kept.push(data.clone());
            } else {
                self.spent = true;
                self.kept = Vec::new();
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
        }
    }

    fn wait(&mut self, waker: &Waker) {
        if !self.waiting.iter().any(|w| w.will_wake(waker)) {
            self.waiting.push(waker.clone());
        }
    }

    fn wake_waiting(&mut self) {
        for waker in self.waiting.drain(..) {
            waker.wake();
        }
    }

    fn finished(&mut self) {
        self.ended = true;
        self.source = None;
        for mirror in self.mirrors.drain(..) {
            // The end marker: a mirror's channel closing without it means "cut off".
            let _ = mirror.try_send(Err(()));
        }
    }
}

/// One try's view of a streamed body: the kept frames, then the source.
struct Replay {
    state: Arc<Mutex<State>>,
    /// Data frames this try has sent.
    next: usize,
    trailers_sent: bool,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut state = this.state.lock().unwrap_or_else(|p| p.into_inner());
        if this.next < state.read {
            // Read by another try: kept, unless the body has outgrown the limit since.
            if state.spent {
                return Poll::Ready(Some(Err(
                    "the request body outgrew what is kept for another try".into(),
                )));
            }
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(state.kept[this.next - 1].clone()))));
        }
        if state.ended {
            return Poll::Ready(match state.trailers.clone() {
                Some(trailers) if !this.trailers_sent => {
                    this.trailers_sent = true;
                    Some(Ok(Frame::trailers(trailers)))
                }
                _ => None,
            });
        }
        let Some(source) = state.source.as_mut() else {
            return Poll::Ready(Some(Err("the request body failed earlier".into())));
        };
        let polled = Pin::new(source).poll_frame(cx);
        match &polled {
            Poll::Pending => {
                state.wait(cx.waker());
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(frame))) => {
                state.passed(frame);
                if frame.is_data() {
                    this.next += 1;
                } else if frame.is_trailers() {
                    this.trailers_sent = true;
                }
            }
            Poll::Ready(None) => state.finished(),
            Poll::Ready(Some(Err(_))) => {
                // A broken body is not sent again, and mirrors see it end without the marker.
                state.spent = true;
                state.source = None;
                state.mirrors.clear();
            }
        }
        state.wake_waiting();
        polled
    }

    fn size_hint(&self) -> SizeHint {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).hint
    }
}

/// A mirror's copy of a streamed body, fed by the original's reads.
struct MirrorBody {
    frames: mpsc::Receiver<Result<Frame<Bytes>, ()>>,
    hint: SizeHint,
    ended: bool,
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.frames.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(()))) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(Some(Err(
                "the mirror fell behind the original request and was cut off".into(),
            ))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn streamed(chunks: Vec<&'static [u8]>) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read(body: RequestBody) -> Result<Vec<u8>, BoxError> {
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_retry_replays_what_the_first_try_read_then_the_rest() {
        let source = Source::new(streamed(vec![b"ab", b"cd", b"ef"]))
            .await
            .unwrap();
        let mut first = source.for_try().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first);
        assert_eq!(read(source.for_try().unwrap()).await.unwrap(), b"abcdef");
        assert_eq!(read(source.for_try().unwrap()).await.unwrap(), b"abcdef");
    }

    #[tokio::test]
    async fn a_try_still_sending_and_the_next_one_both_get_every_frame() {
        let source = Source::new(streamed(vec![b"ab", b"cd", b"ef"]))
            .await
            .unwrap();
        let mut given_up = source.for_try().unwrap();
        let mut next = source.for_try().unwrap();
        let mut first = Vec::new();
        let mut second = Vec::new();
        // Interleaved: each reads some frames the other read first.
        for _ in 0..3 {
            first.extend_from_slice(
                &given_up
                    .frame()
                    .await
                    .unwrap()
                    .unwrap()
                    .into_data()
                    .unwrap(),
            );
            if second.len() < 2 {
                second
                    .extend_from_slice(&next.frame().await.unwrap().unwrap().into_data().unwrap());
            }
        }
        second.extend(read(next).await.unwrap());
        assert_eq!(
            (first.as_slice(), second.as_slice()),
            (&b"abcdef"[..], &b"abcdef"[..])
        );
    }

    #[tokio::test]
    async fn a_try_that_falls_behind_a_body_past_the_limit_fails_rather_than_skip() {
        static BIG: [u8; KEEP_LIMIT] = [7; KEEP_LIMIT];
        let source = Source::new(streamed(vec![b"x", &BIG, b"y"])).await.unwrap();
        let mut given_up = source.for_try().unwrap();
        let next = source.for_try().unwrap();
        given_up.frame().await.unwrap().unwrap();
        given_up.frame().await.unwrap().unwrap();
        assert!(read(next).await.is_err(), "frame 1 is no longer kept");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_sent_once() {
        static BIG: [u8; KEEP_LIMIT] = [7; KEEP_LIMIT];
        let source = Source::new(streamed(vec![b"x", &BIG])).await.unwrap();
        assert_eq!(
            read(source.for_try().unwrap()).await.unwrap().len(),
            KEEP_LIMIT + 1
        );
        assert!(source.for_try().is_none());
    }

    #[tokio::test]
    async fn a_mirror_gets_the_same_bytes_and_an_end() {
        let source = Source::new(streamed(vec![b"ab", b"cd"])).await.unwrap();
        let mirror = source.for_mirror().unwrap();
        assert_eq!(read(source.for_try().unwrap()).await.unwrap(), b"abcd");
        assert_eq!(read(mirror).await.unwrap(), b"abcd");
        assert!(source.for_mirror().is_none(), "too late for a new mirror");
    }

    #[tokio::test]
    async fn a_lagging_mirror_is_cut_off_not_truncated() {
        let chunks: Vec<&'static [u8]> = vec![b"z"; MIRROR_QUEUE + 4];
        let source = Source::new(streamed(chunks)).await.unwrap();
        let mirror = source.for_mirror().unwrap();
        assert_eq!(
            read(source.for_try().unwrap()).await.unwrap().len(),
            MIRROR_QUEUE + 4
        );
        assert!(read(mirror).await.is_err());
    }

    #[tokio::test]
    async fn a_small_body_of_known_length_is_read_whole() {
        let body = Full::new(Bytes::from_static(b"hello"));
        let source = Source::new(body.map_err(|never| match never {}))
            .await
            .unwrap();
        assert!(matches!(&source, Source::Whole(b) if b == "hello"));
        assert!(source.for_try().unwrap().size_hint().exact() == Some(5));
    }
}
