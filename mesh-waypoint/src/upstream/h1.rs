//! HTTP/1.1 to an endpoint, spoken by the task of the request that uses the connection.
//!
//! hyper's client gives every connection a task of its own and hands each request to it
//! through a channel: per request, two more task wakes and a channel round trip in each
//! direction, on top of the HBONE stream's. Here the request's task writes the request,
//! reads the response head, and (through [`ResponseBody`]) the body, so a pooled connection
//! is only touched by whoever holds it. An idle connection is polled by nobody; it is checked
//! when taken from the pool (`is_open`).
//!
//! What an HTTP/1.1 client must get right, and does here: the response's framing (RFC 9112
//! 6.3: no body for HEAD, 1xx, 204 and 304; chunked; content-length; else to the end of the
//! connection), interim 1xx answers skipped, a response that comes while the request body is
//! still being sent (the rest is not sent, the connection not reused), and `connection:
//! close` on either side.

mod decode;

use std::{
    future::poll_fn,
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use http_body::Body as _;

use self::decode::Framing;
pub use self::decode::ResponseBody;
use super::{connect::Conn, replay::RequestBody};
use crate::counted::Counted;

/// The most bytes a response head may have.
const MAX_HEAD: usize = 64 << 10;
/// The most header fields a response head may have.
const MAX_HEADERS: usize = 100;
/// What one read asks for at least.
const READ_CHUNK: usize = 8 << 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the connection closed before the response was complete")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("request body: {0}")]
    RequestBody(super::replay::BoxError),
}

/// One HTTP/1.1 connection to an endpoint.
pub struct Connection {
    io: Conn,
    /// Bytes read and not consumed yet.
    read: BytesMut,
    /// Responses received on it.
    pub served: usize,
    /// The worker it was opened on, whose runtime drives its HBONE connection.
    pub worker: Option<usize>,
    /// Counts it in its cluster's connections while it lives.
    _slot: Counted,
}

/// A response head and how its body is framed.
pub struct Head {
    pub parts: http::response::Parts,
    framing: Framing,
    /// Whether the connection can carry another request once this response's body is read.
    keep_alive: bool,
}

impl Connection {
    pub fn new(io: Conn, slot: Counted) -> Self {
        Connection {
            io,
            read: BytesMut::new(),
            served: 0,
            worker: crate::workers::current(),
            _slot: slot,
        }
    }

    /// Whether an idle connection can carry a request: the peer has neither closed it nor
    /// sent anything unasked (which would be taken for the next response).
    pub fn is_open(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.poll_fill(&mut cx), Poll::Pending)
    }

    /// Sends `request` and reads the response's head; its body is read through
    /// [`ResponseBody`], which owns the connection until then.
    pub async fn send(&mut self, request: http::Request<RequestBody>) -> Result<Head, Error> {
        let (parts, mut body) = request.into_parts();
        let mut out = BytesMut::with_capacity(512);
        let framing = encode_head(&parts, &body, &mut out);
        let close_asked = has_close(&parts.headers);
        let early = if body.is_end_stream() {
            if framing == Outgoing::Chunked {
                out.put_slice(b"0\r\n\r\n");
            }
            self.write_all(out.freeze()).await?;
            false
        } else {
            self.write_body(out, &mut body, framing).await?
        };
        let head = self.read_head(parts.method == Method::HEAD).await?;
        Ok(Head {
            keep_alive: head.keep_alive && !early && !close_asked,
            ..head
        })
    }

    async fn write_all(&mut self, mut bytes: Bytes) -> Result<(), Error> {
        while !bytes.is_empty() {
            if poll_fn(|cx| self.io.poll_send(cx, &mut bytes)).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
        }
        Ok(())
    }

    /// Writes the head in `out`, then the body as it comes. Returns early, `true`, if the
    /// response began before the body was all sent: the endpoint answered without it (a
    /// 413, a redirect) and will not read the rest.
    async fn write_body(
        &mut self,
        out: BytesMut,
        body: &mut RequestBody,
        framing: Outgoing,
    ) -> Result<bool, Error> {
        let mut pending = out.freeze();
        let mut ended = false;
        poll_fn(|cx| {
            loop {
                if !pending.is_empty() {
                    match self.io.poll_send(cx, &mut pending) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(
                                io::Error::from(io::ErrorKind::WriteZero).into()
                            ));
                        }
                        Poll::Ready(Ok(_)) => continue,
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                        Poll::Pending => return self.poll_early_response(cx),
                    }
                }
                if ended {
                    return Poll::Ready(Ok(false));
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        pending = encode_frame(frame, framing);
                    }
                    Poll::Ready(Some(Err(error))) => {
                        return Poll::Ready(Err(Error::RequestBody(error)));
                    }
                    Poll::Ready(None) => {
                        ended = true;
                        if framing == Outgoing::Chunked {
                            pending = Bytes::from_static(b"0\r\n\r\n");
                        }
                    }
                    Poll::Pending => return self.poll_early_response(cx),
                }
            }
        })
        .await
    }

    /// While the request body waits: `Ready(true)` once a final response has begun. Interim
    /// answers (`103 Early Hints`) are read past: the endpoint still wants the body.
    fn poll_early_response(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        loop {
            if self.final_response_begun()? {
                return Poll::Ready(Ok(true));
            }
            match std::task::ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(Error::Closed)),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(error.into())),
            }
        }
    }

    /// Whether `read` holds the start of a final response, after consuming any complete
    /// interim ones before it.
    fn final_response_begun(&mut self) -> Result<bool, Error> {
        while !self.read.is_empty() {
            let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut response, &self.read, &mut fields)
                .map_err(|_| Error::Malformed("not an HTTP/1.x response head"))?;
            match (parsed, response.code) {
                (_, Some(code)) if !(100..200).contains(&code) || code == 101 => return Ok(true),
                (httparse::Status::Complete(length), Some(_)) => {
                    let _ = self.read.split_to(length);
                }
                _ => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Reads one more chunk into `read`: its length, 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 2 {
            self.read.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    async fn fill(&mut self) -> Result<(), Error> {
        match poll_fn(|cx| self.poll_fill(cx)).await? {
            0 => Err(Error::Closed),
            _ => Ok(()),
        }
    }

    /// The next final response head (interim 1xx answers are read past).
    async fn read_head(&mut self, head_request: bool) -> Result<Head, Error> {
        loop {
            let parsed = loop {
                if let Some(parsed) = parse_head(&mut self.read)? {
                    break parsed;
                }
                if self.read.len() > MAX_HEAD {
                    return Err(Error::Malformed("response head too large"));
                }
                self.fill().await?;
            };
            let Parsed {
                status,
                version,
                headers,
            } = parsed;
            if status.is_informational() {
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Error::Malformed("protocol switch that was not asked for"));
                }
                continue;
            }
            let mut headers = headers;
            // Both framings at once is how requests are smuggled: never reuse after it.
            let ambiguous = headers.contains_key(header::TRANSFER_ENCODING)
                && headers.contains_key(header::CONTENT_LENGTH);
            let framing = Framing::of(head_request, status, &mut headers)?;
            let keep_alive = framing.delimited()
                && !ambiguous
                && !has_close(&headers)
                && (version == Version::HTTP_11 || has_keep_alive(&headers));
            let mut response = http::Response::new(());
            *response.status_mut() = status;
            *response.version_mut() = Version::HTTP_11;
            *response.headers_mut() = headers;
            strip_hop_by_hop(response.headers_mut());
            let (parts, ()) = response.into_parts();
            return Ok(Head {
                parts,
                framing,
                keep_alive,
            });
        }
    }
}

impl Head {
    /// The body that follows this head on `connection`.
    pub fn body(self, connection: Connection) -> (http::response::Parts, ResponseBody) {
        let body = ResponseBody::new(connection, self.framing, self.keep_alive);
        (self.parts, body)
    }
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outgoing {
    /// By its `content-length` (or there is none).
    Length,
    Chunked,
}

/// Writes the request line and headers. The body's framing: the request's own
/// `content-length` if it has one, else the body's exact length, else chunked.
fn encode_head(parts: &http::request::Parts, body: &RequestBody, out: &mut BytesMut) -> Outgoing {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = if parts.headers.contains_key(header::CONTENT_LENGTH) {
        Outgoing::Length
    } else if body.is_end_stream() {
        // As hyper: an empty body is announced where the method usually has one.
        if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            out.put_slice(b"content-length: 0\r\n");
        }
        Outgoing::Length
    } else if let Some(length) = body.size_hint().exact() {
        put_field(out, b"content-length", length.to_string().as_bytes());
        Outgoing::Length
    } else {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        Outgoing::Chunked
    };
    out.put_slice(b"\r\n");
    framing
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// One frame of the request body as it goes on the wire.
fn encode_frame(frame: http_body::Frame<Bytes>, framing: Outgoing) -> Bytes {
    match frame.into_data() {
        Ok(data) if framing == Outgoing::Length => data,
        Ok(data) if data.is_empty() => Bytes::new(),
        Ok(data) => {
            let mut out = BytesMut::with_capacity(data.len() + 12);
            out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.put_slice(&data);
            out.put_slice(b"\r\n");
            out.freeze()
        }
        // HTTP/1.1 endpoints get no request trailers (as from hyper's client).
        Err(_) => Bytes::new(),
    }
}

struct Parsed {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// A complete response head at the start of `read`, consumed from it; `None` when more
/// bytes are needed. Header values share the head's bytes instead of being copied.
fn parse_head(read: &mut BytesMut) -> Result<Option<Parsed>, Error> {
    // Uninitialised: filling 100 empty fields on every parse costs more than the parse.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        read,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Malformed("too many headers")),
        Err(_) => return Err(Error::Malformed("not an HTTP/1.x response head")),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or(0))
        .map_err(|_| Error::Malformed("status code"))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = read.as_ptr() as usize;
    let mut spans = Vec::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Error::Malformed("header name"))?;
        let start = field.value.as_ptr() as usize - base;
        spans.push((name, start..start + field.value.len()));
    }
    let head = read.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, span) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(span))
            .map_err(|_| Error::Malformed("header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Parsed {
        status,
        version,
        headers,
    }))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn has_close(headers: &HeaderMap) -> bool {
    connection_has(headers, "close")
}

fn has_keep_alive(headers: &HeaderMap) -> bool {
    connection_has(headers, "keep-alive")
}

/// Headers of this hop that the client's hop does not get: its own framing is its server's.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests;

/// For the fuzzers (`cargo xtask fuzz`): a whole response read as a connection reads it (the
/// head, then the body as the head frames it), fed `split` bytes at a time. Returns the status,
/// the body bytes decoded and whether trailers ended it; an error for anything malformed or
/// cut short. It must never panic, nor loop.
#[cfg(fuzzing)]
pub fn decode_response(
    wire: &[u8],
    split: usize,
    head_request: bool,
) -> Result<(u16, u64, bool), Error> {
    let split = split.max(1);
    let mut read = BytesMut::new();
    let mut fed = 0;
    let mut feed = |read: &mut BytesMut| {
        let n = split.min(wire.len() - fed);
        read.extend_from_slice(&wire[fed..fed + n]);
        fed += n;
        n > 0
    };
    let parsed = loop {
        match parse_head(&mut read)? {
            Some(parsed) => break parsed,
            None if read.len() > MAX_HEAD => return Err(Error::Malformed("head too long")),
            None if !feed(&mut read) => return Err(Error::Closed),
            None => {}
        }
    };
    let status = parsed.status.as_u16();
    let mut headers = parsed.headers;
    match Framing::of(head_request, parsed.status, &mut headers)? {
        Framing::Empty => Ok((status, 0, false)),
        Framing::Length(length) => {
            while (read.len() as u64) < length {
                if !feed(&mut read) {
                    return Err(Error::Closed);
                }
            }
            Ok((status, length, false))
        }
        Framing::UntilEof => {
            while feed(&mut read) {}
            Ok((status, read.len() as u64, false))
        }
        Framing::Chunked(mut chunk) => {
            let mut body = 0u64;
            loop {
                match decode::step(&mut read, &mut chunk)? {
                    decode::Step::Data(data) => body += data.len() as u64,
                    decode::Step::Trailers(_) => return Ok((status, body, true)),
                    decode::Step::End => return Ok((status, body, false)),
                    decode::Step::More if !feed(&mut read) => return Err(Error::Closed),
                    decode::Step::More => {}
                }
            }
        }
    }
}
