//! A response body as its head framed it, read from the connection by whichever task polls
//! it: the request's own, as it sends the body on downstream.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body::{Frame, SizeHint};

use super::{Connection, Error, MAX_HEAD};

/// The longest chunk-size line read (size and extensions).
const MAX_CHUNK_LINE: usize = 4 << 10;
/// The most trailer fields a chunked body may end with.
const MAX_TRAILERS: usize = 32;

/// How the body after a response head ends (RFC 9112 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the endpoint closes the connection.
    UntilEof,
}

/// Where a chunked body's decoding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    Size,
    /// This many bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last (empty) chunk: trailer fields, then an empty line.
    Trailers,
}

impl Framing {
    /// The framing of a response to a request (`head_request` if it was HEAD). A
    /// `content-length` beside `transfer-encoding` is dropped: the latter frames the body.
    pub(super) fn of(
        head_request: bool,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) -> Result<Self, Error> {
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        if let Some(codings) = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
        {
            let chunked_last = codings.to_str().ok().and_then(|v| v.rsplit(',').next());
            let chunked = chunked_last.is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            headers.remove(header::CONTENT_LENGTH);
            return Ok(if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::UntilEof
            });
        }
        let mut length = None;
        for value in &headers.get_all(header::CONTENT_LENGTH) {
            let value = value
                .to_str()
                .map_err(|_| Error::Malformed("content-length"))?;
            for part in value.split(',') {
                let n: u64 = part
                    .trim()
                    .parse()
                    .map_err(|_| Error::Malformed("content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Malformed("conflicting content-length values"));
                }
                length = Some(n);
            }
        }
        Ok(match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilEof,
        })
    }

    /// Whether the body's end is known without the connection closing.
    pub(super) fn delimited(&self) -> bool {
        !matches!(self, Framing::UntilEof)
    }
}

/// A response body read from its connection; the connection goes back to its pool through
/// [`ResponseBody::take_reusable`] once the body is read to the end.
pub struct ResponseBody {
    connection: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    ended: bool,
}

impl ResponseBody {
    pub(super) fn new(connection: Connection, framing: Framing, keep_alive: bool) -> Self {
        ResponseBody {
            connection: Some(connection),
            ended: framing == Framing::Empty,
            framing,
            keep_alive,
        }
    }

    /// The connection, once the body was read to the end, if it can carry another request.
    pub fn take_reusable(&mut self) -> Option<Connection> {
        if self.ended && self.keep_alive {
            self.connection.take()
        } else {
            None
        }
    }

    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.ended = true;
        Poll::Ready(None)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let read = &mut connection.read;
            match &mut this.framing {
                Framing::Empty | Framing::Length(0) => return this.end(),
                Framing::Length(left) if !read.is_empty() => {
                    let take = (*left).min(read.len() as u64);
                    *left -= take;
                    this.ended = *left == 0;
                    let data = read.split_to(take as usize).freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilEof if !read.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(read.split().freeze()))));
                }
                Framing::Chunked(chunk) => match step(read, chunk)? {
                    Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Step::Trailers(trailers) => {
                        this.ended = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Step::End => return this.end(),
                    Step::More => {}
                },
                Framing::Length(_) | Framing::UntilEof => {}
            }
            // Nothing buffered to hand out: read more.
            if ready!(connection.poll_fill(cx))? == 0 {
                if this.framing == Framing::UntilEof {
                    return this.end();
                }
                return Poll::Ready(Some(Err(Error::Closed)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Chunked(_) | Framing::UntilEof => SizeHint::default(),
        }
    }
}

/// What the buffered bytes of a chunked body give next.
pub(super) enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// Not enough bytes buffered to go on.
    More,
}

/// Decodes the next piece of a chunked body from `read`.
pub(super) fn step(read: &mut BytesMut, chunk: &mut Chunk) -> Result<Step, Error> {
    loop {
        match *chunk {
            Chunk::Size => {
                let Some(end) = read.windows(2).position(|w| w == b"\r\n") else {
                    if read.len() > MAX_CHUNK_LINE {
                        return Err(Error::Malformed("chunk size line too long"));
                    }
                    return Ok(Step::More);
                };
                let line = read.split_to(end + 2);
                let digits = line[..end]
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                let size = parse_hex(digits)?;
                *chunk = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if read.is_empty() {
                    return Ok(Step::More);
                }
                let take = left.min(read.len() as u64);
                *chunk = if take == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - take)
                };
                return Ok(Step::Data(read.split_to(take as usize).freeze()));
            }
            Chunk::DataEnd => {
                if read.len() < 2 {
                    return Ok(Step::More);
                }
                if &read[..2] != b"\r\n" {
                    return Err(Error::Malformed("chunk data not followed by CRLF"));
                }
                read.advance(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers => {
                if read.len() < 2 {
                    return Ok(Step::More);
                }
                if read.starts_with(b"\r\n") {
                    read.advance(2);
                    return Ok(Step::End);
                }
                return trailers(read);
            }
        }
    }
}

fn trailers(read: &mut BytesMut) -> Result<Step, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (length, fields) = match httparse::parse_headers(read, &mut fields) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) if read.len() <= MAX_HEAD => return Ok(Step::More),
        _ => return Err(Error::Malformed("chunked body trailers")),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Error::Malformed("trailer name"))?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| Error::Malformed("trailer value"))?;
        trailers.append(name, value);
    }
    read.advance(length);
    Ok(Step::Trailers(trailers))
}

fn parse_hex(digits: &[u8]) -> Result<u64, Error> {
    if digits.is_empty() || digits.len() > 15 {
        return Err(Error::Malformed("chunk size"));
    }
    digits.iter().try_fold(0u64, |size, digit| {
        let value = (*digit as char)
            .to_digit(16)
            .ok_or(Error::Malformed("chunk size"))?;
        Ok(size << 4 | u64::from(value))
    })
}
