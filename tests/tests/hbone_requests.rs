//! Malformed HBONE requests against a real agent: each gets ztunnel's HTTP status, and a good
//! tunnel on the same HTTP/2 connection keeps working. Needs root; run with `cargo xtask test`.

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_tests::{
    AgentOptions, Testbed, Topology,
    hbone_client::{dial, handshake, own_certificate},
    traffic::echo_server,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn connect(authority: &str) -> Request<Empty<Bytes>> {
    let mut request = Request::new(Empty::new());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = hyper::Uri::builder().authority(authority).build().unwrap();
    request
}

#[test]
fn malformed_requests_get_clear_errors_and_spare_other_streams() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let controller = tb.start_controller()?;
    tb.set_pod_mode("n1-p0", Some("ambient"))?;
    let agent = tb.start_agent(
        "n1",
        &AgentOptions {
            ca_root: Some(controller.root.clone()),
            ..AgentOptions::default()
        },
    )?;
    let server = tb.pod("n1-p0");
    agent.wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(8080)?)?;

    let cert = own_certificate(&controller, "spiffe://cluster.local/ns/default/sa/default")?;
    let tcp = dial(&tb.pod("n0-p0").netns_path(), server.addr(15008))?;
    let ip = server.ip;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut sender = handshake(tcp, &cert).await?;

        // A good tunnel first, held open while the bad requests go by on the same connection.
        let response = sender.send_request(connect(&format!("{ip}:8080"))).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let mut tunnel = TokioIo::new(hyper::upgrade::on(response).await?);
        // The echo server greets with the peer address and a newline.
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            tunnel.read_exact(&mut byte).await?;
        }

        let cases = [
            (
                Request::builder()
                    .method(Method::GET)
                    .uri(format!("http://{ip}:8080/"))
                    .body(Empty::new())?,
                StatusCode::BAD_REQUEST,
            ),
            (connect("bookinfo.example:8080"), StatusCode::BAD_REQUEST),
            (connect("198.19.9.9:8080"), StatusCode::BAD_REQUEST),
            (
                connect(&format!("{ip}:15008")),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (request, expected) in cases {
            let what = format!("{} {}", request.method(), request.uri());
            let response = sender.send_request(request).await?;
            assert_eq!(response.status(), expected, "{what}");
        }
        // Headers past the server's 64 KiB limit: refused, one way or another, without
        // taking the connection down.
        let mut huge = connect(&format!("{ip}:8080"));
        huge.headers_mut()
            .insert("x-padding", "a".repeat(100 * 1024).parse()?);
        match sender.send_request(huge).await {
            Ok(response) => assert_ne!(
                response.status(),
                StatusCode::OK,
                "oversized headers accepted"
            ),
            Err(error) => assert!(!error.is_closed(), "the connection died: {error}"),
        }

        tunnel.write_all(b"still here").await?;
        let mut back = [0u8; 10];
        tunnel.read_exact(&mut back).await?;
        assert_eq!(&back, b"still here");
        let response = sender.send_request(connect(&format!("{ip}:8080"))).await?;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "a new tunnel after the bad requests"
        );
        anyhow::Ok(())
    })
}
