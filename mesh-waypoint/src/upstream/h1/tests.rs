use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt as _, stream};
use http::{HeaderMap, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{
    Connection, Error, Parsed,
    decode::{Chunk, Framing, Step, step},
    parse_head,
};
use crate::counted::Counted;
use crate::upstream::{
    connect::Conn,
    replay::{BoxError, RequestBody},
};

fn parsed(head: &str) -> Parsed {
    let mut read = BytesMut::from(head);
    let parsed = parse_head(&mut read).unwrap().expect("complete");
    assert!(read.is_empty(), "the head is consumed, nothing more");
    parsed
}

#[test]
fn a_head_is_parsed_once_complete_and_consumed() {
    let mut read = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n");
    assert!(parse_head(&mut read).unwrap().is_none());
    read.extend_from_slice(b"x-a: 2\r\n\r\nhello");
    let Parsed {
        status,
        headers,
        version,
    } = parse_head(&mut read).unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version, http::Version::HTTP_11);
    assert_eq!(headers.get_all("x-a").iter().count(), 2);
    assert_eq!(&read[..], b"hello", "the body's bytes stay buffered");
    let mut garbage = BytesMut::from("SSH-2.0-OpenSSH\r\n\r\n");
    assert!(matches!(parse_head(&mut garbage), Err(Error::Malformed(_))));
}

#[test]
fn framing_follows_rfc_9112() {
    let framing = |head_request, head: &str| {
        let Parsed {
            status,
            mut headers,
            ..
        } = parsed(head);
        Framing::of(head_request, status, &mut headers).map(|f| (f, headers))
    };
    let (f, _) = framing(true, "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n").unwrap();
    assert_eq!(f, Framing::Empty, "a HEAD answer has no body");
    let (f, _) = framing(false, "HTTP/1.1 204 No Content\r\n\r\n").unwrap();
    assert_eq!(f, Framing::Empty);
    let (f, _) = framing(
        false,
        "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
    )
    .unwrap();
    assert_eq!(f, Framing::Empty);
    let (f, headers) = framing(
        false,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 9\r\n\r\n",
    )
    .unwrap();
    assert_eq!(f, Framing::Chunked(Chunk::Size));
    assert!(!headers.contains_key(header::CONTENT_LENGTH));
    let (f, _) = framing(false, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").unwrap();
    assert_eq!(f, Framing::UntilEof);
    let (f, _) = framing(false, "HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n").unwrap();
    assert_eq!(f, Framing::Length(7));
    assert!(
        framing(
            false,
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 8\r\n\r\n"
        )
        .is_err()
    );
    assert!(framing(false, "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
    let (f, _) = framing(false, "HTTP/1.0 200 OK\r\n\r\n").unwrap();
    assert_eq!(f, Framing::UntilEof);
}

/// Decodes `wire` fed one byte at a time: every split point must give the same result.
fn decode_bytewise(wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
    let (mut read, mut chunk) = (BytesMut::new(), Chunk::Size);
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match step(&mut read, &mut chunk)? {
            Step::Data(bytes) => data.extend_from_slice(&bytes),
            Step::Trailers(trailers) => return Ok((data, Some(trailers))),
            Step::End => return Ok((data, None)),
            Step::More if fed == wire.len() => return Err(Error::Closed),
            Step::More => {
                read.extend_from_slice(&wire[fed..fed + 1]);
                fed += 1;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_across_any_split() {
    let (data, trailers) =
        decode_bytewise(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap();
    assert_eq!(data, b"hello world");
    assert!(trailers.is_none());
    let (data, trailers) =
        decode_bytewise(b"A\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\n").unwrap();
    assert_eq!(data, b"0123456789");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    for broken in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloXX0\r\n\r\n",
        b"\r\nhello\r\n",
        b"ffffffffffffffffff\r\n",
    ] {
        assert!(
            matches!(decode_bytewise(broken), Err(Error::Malformed(_))),
            "{}",
            String::from_utf8_lossy(broken)
        );
    }
    assert!(matches!(decode_bytewise(b"5\r\nhel"), Err(Error::Closed)));
}

/// A loopback endpoint that answers each request head it reads with the next of `answers`
/// (and closes after the last); the heads and bodies it read come back at the end.
async fn endpoint(
    answers: Vec<&'static str>,
) -> (Connection, tokio::task::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        for answer in answers {
            while !String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
                let mut chunk = [0u8; 4096];
                let n = tcp.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return seen;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            seen.push(text);
            buf.clear();
            tcp.write_all(answer.as_bytes()).await.unwrap();
        }
        // Whatever else came (a body the answer did not wait for), then the end.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), async {
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
        })
        .await;
        seen
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    (
        Connection::new(Conn::Plain(tcp), Counted::take(None)),
        server,
    )
}

fn get(path: &str) -> http::Request<RequestBody> {
    let mut request =
        http::Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *request.uri_mut() = path.parse().unwrap();
    request
        .headers_mut()
        .insert(header::HOST, "reviews".parse().unwrap());
    request
}

/// A request to `/upload` carrying `body`.
fn upload(method: http::Method, body: RequestBody) -> http::Request<RequestBody> {
    let mut request = get("/upload");
    *request.method_mut() = method;
    *request.body_mut() = body;
    request
}

async fn within_5s<T>(sent: impl Future<Output = Result<T, Error>>, what: &str) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(5), sent)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
        .unwrap()
}

#[tokio::test]
async fn a_connection_carries_requests_one_after_another() {
    let (mut connection, server) = endpoint(vec![
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nv2",
    ])
    .await;
    let head = connection.send(get("/one")).await.unwrap();
    assert!(!head.parts.headers.contains_key(header::TRANSFER_ENCODING));
    assert!(!head.parts.headers.contains_key(header::CONNECTION));
    let (_, mut body) = head.body(connection);
    let collected = (&mut body).collect().await.unwrap().to_bytes();
    assert_eq!(collected, "hello");
    let mut connection = body.take_reusable().expect("reusable once read to the end");
    assert!(connection.is_open());
    let (parts, mut body) = connection
        .send(get("/two?x=1"))
        .await
        .unwrap()
        .body(connection);
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!((&mut body).collect().await.unwrap().to_bytes(), "v2");
    // The endpoint closes after its last answer: the pool must not hand this one out.
    let mut connection = body.take_reusable().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!connection.is_open());
    let seen = server.await.unwrap();
    assert!(
        seen[0].starts_with("GET /one HTTP/1.1\r\nhost: reviews\r\n"),
        "{seen:?}"
    );
    assert!(seen[1].starts_with("GET /two?x=1 HTTP/1.1\r\n"));
    assert!(!seen[0].contains("content-length"), "no body, no length");
}

#[tokio::test]
async fn interim_answers_are_skipped_and_close_is_honoured() {
    let (mut connection, _server) = endpoint(vec![
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    ])
    .await;
    let mut request = get("/");
    *request.method_mut() = http::Method::POST;
    *request.body_mut() = Full::new(Bytes::from_static(b"abc"))
        .map_err(|never| match never {})
        .boxed_unsync();
    let (parts, mut body) = connection.send(request).await.unwrap().body(connection);
    assert_eq!(parts.status, StatusCode::CREATED);
    assert!((&mut body).collect().await.is_ok());
    assert!(body.take_reusable().is_none(), "the endpoint said close");
}

#[tokio::test]
async fn a_streamed_body_goes_chunked_and_an_early_answer_stops_it() {
    let frames = stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"part")))])
        .chain(stream::pending());
    let request = upload(http::Method::PUT, StreamBody::new(frames).boxed_unsync());
    let (mut connection, server) = endpoint(vec![
        "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
    ])
    .await;
    let answer = within_5s(connection.send(request), "the answer ends the send").await;
    assert_eq!(answer.parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    let (_, mut body) = answer.body(connection);
    assert!(body.take_reusable().is_none(), "the body was cut short");
    let seen = server.await.unwrap();
    assert!(
        seen[0].contains("transfer-encoding: chunked\r\n"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_endpoint_that_closes_without_answering_is_an_error() {
    let (mut connection, _server) = endpoint(vec![]).await;
    let error = connection.send(get("/")).await.err().expect("no answer");
    assert!(matches!(error, Error::Closed | Error::Io(_)), "{error}");
    let (mut connection, _server) =
        endpoint(vec!["HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"]).await;
    let (_, mut body) = connection.send(get("/")).await.unwrap().body(connection);
    assert!(
        (&mut body).collect().await.is_err(),
        "a body cut short is an error"
    );
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn an_interim_answer_does_not_stop_the_request_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut hinted = false;
        while !seen.ends_with(b"0\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the body was cut short");
            seen.extend_from_slice(&chunk[..n]);
            if !hinted && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                tcp.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n")
                    .await
                    .unwrap();
                hinted = true;
            }
        }
        tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")
            .await
            .unwrap();
        String::from_utf8(seen).unwrap()
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut connection = Connection::new(Conn::Plain(tcp), Counted::take(None));
    // The second half of the body comes after the endpoint's 103.
    let frames = stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(
        b"first ",
    )))])
    .chain(stream::once(async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        Ok(Frame::data(Bytes::from_static(b"second")))
    }));
    let request = upload(http::Method::POST, StreamBody::new(frames).boxed_unsync());
    let head = within_5s(
        connection.send(request),
        "the whole body went, then the answer",
    )
    .await;
    assert_eq!(head.parts.status, StatusCode::OK);
    let (_, mut body) = head.body(connection);
    assert_eq!((&mut body).collect().await.unwrap().to_bytes(), "done");
    assert!(
        body.take_reusable().is_some(),
        "the whole exchange completed"
    );
    let seen = server.await.unwrap();
    assert!(
        seen.ends_with("6\r\nfirst \r\n6\r\nsecond\r\n0\r\n\r\n"),
        "{seen:?}"
    );
}
