//! HTTP/2 (and gRPC's shape of it) through the waypoint: a client speaking HTTP/2 with prior
//! knowledge to a service behind the waypoint reaches an HTTP/2 backend over HTTP/2, routed
//! by a header, a gRPC fault answers with `grpc-status`, and a bidirectional stream flows
//! message by message (the waypoint never waits for a request body to end) with its
//! trailers. Needs root; run with `cargo xtask test`.

use std::{convert::Infallible, net::SocketAddr};

use anyhow::Result;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt as _, Either, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_tests::{Pod, l7::setup};

const GRPC_VIP: &str = "10.96.0.13";
const H2_PORT: u16 = 9090;

/// An HTTP/2 (prior knowledge) server in `pod` answering `<version> <path>`, or for
/// `/echo.Echo/Stream` its request body frame by frame as it comes (trailers included).
fn h2_server(pod: &Pod, answer: &'static str) -> Result<()> {
    let listener = pod.listen(H2_PORT)?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request: Request<_>| async move {
                            if request.uri().path() == "/echo.Echo/Stream" {
                                return Ok::<_, Infallible>(Response::new(Either::Right(
                                    request.into_body(),
                                )));
                            }
                            let body = format!(
                                "{answer} {:?} {}",
                                request.version(),
                                request.uri().path()
                            );
                            Ok(Response::new(Either::Left(Full::new(Bytes::from(body)))))
                        });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    });
    Ok(())
}

#[test]
fn http2_and_grpc_pass_through_the_waypoint() -> Result<()> {
    let l7 = setup()?;
    h2_server(l7.tb.pod("n1-p2"), "h2-backend")?;
    l7.write(
        "grpc",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: grpc, namespace: default}}\nspec: {{clusterIP: {GRPC_VIP}, selector: {{app: flaky}}, ports: [{{port: {H2_PORT}, appProtocol: grpc}}]}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: grpc, namespace: default}}\nspec:\n  hosts: [grpc]\n  http:\n\
             \x20 - match: [{{headers: {{x-fail: {{exact: \"yes\"}}}}}}]\n    fault: {{abort: {{grpcStatus: UNAVAILABLE, percentage: {{value: 100}}}}}}\n    route: [{{destination: {{host: grpc}}}}]\n\
             \x20 - route: [{{destination: {{host: grpc}}}}]\n"
        ),
    )?;
    let tcp = l7
        .tb
        .pod("n0-p0")
        .connect(SocketAddr::new(GRPC_VIP.parse()?, H2_PORT))?;
    tcp.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::from_std(tcp)?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        let call = |fail: bool| {
            let mut request =
                Request::post(format!("http://grpc:{H2_PORT}/helloworld.Greeter/SayHello"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers");
            if fail {
                request = request.header("x-fail", "yes");
            }
            request
                .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")).boxed_unsync())
                .unwrap()
        };
        let response = sender.send_request(call(false)).await?;
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await?.to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&body),
            "h2-backend HTTP/2.0 /helloworld.Greeter/SayHello",
            "the backend was reached over HTTP/2"
        );
        let response = sender.send_request(call(true)).await?;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "14", "UNAVAILABLE");
        bidirectional_stream(&mut sender).await
    })?;
    let metrics = l7.waypoint.metrics()?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("request_protocol=\"grpc\"")
                && l.contains("grpc_response_status=\"14\"")),
        "{metrics}"
    );
    Ok(())
}

/// Each message must come back before the next is sent: a proxy that read the request body
/// whole before forwarding would stall here. The request's trailers end the echo.
async fn bidirectional_stream(
    sender: &mut hyper::client::conn::http2::SendRequest<UnsyncBoxBody<Bytes, Infallible>>,
) -> Result<()> {
    let (messages, receiver) = tokio::sync::mpsc::channel(4);
    let request = Request::post(format!("http://grpc:{H2_PORT}/echo.Echo/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver)).boxed_unsync(),
        )?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    for n in 0..3 {
        let message = format!("message {n}");
        messages
            .send(Ok(Frame::data(Bytes::from(message.clone()))))
            .await?;
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .map_err(|_| anyhow::anyhow!("message {n} was not echoed while the stream was open"))?
            .ok_or_else(|| anyhow::anyhow!("the response ended early"))??;
        assert_eq!(echoed.into_data().ok(), Some(Bytes::from(message)));
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    messages.send(Ok(Frame::trailers(trailers))).await?;
    drop(messages);
    let last = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no trailers"))??;
    assert_eq!(
        last.trailers_ref().and_then(|t| t.get("grpc-status")),
        Some(&http::HeaderValue::from_static("0")),
        "the trailers went through both ways"
    );
    Ok(())
}
