//! An app that answers and closes while its client is still sending: the HBONE stream must end
//! the way ztunnel ends it, with END_STREAM, and what the client still sends is drained, not
//! answered with RST_STREAM (which a ztunnel peer logs as an error, and which can discard
//! answer bytes still queued in HTTP/2). Needs root; run with `cargo xtask test`.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_tests::{
    AgentOptions, Testbed, Topology,
    hbone_client::{dial, handshake, own_certificate},
    traffic::serve,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ANSWER: usize = 256 * 1024;

#[test]
fn an_app_closing_mid_conversation_ends_the_stream_cleanly() -> Result<()> {
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
    // Reads the request line, answers, and closes at once.
    let _app = serve(server.listen(9000)?, |mut stream, _| {
        let mut go = [0u8; 3];
        stream.read_exact(&mut go)?;
        stream.write_all(&vec![b'a'; ANSWER])?;
        Ok(())
    })?;

    let cert = own_certificate(&controller, "spiffe://cluster.local/ns/default/sa/default")?;
    let tcp = dial(&tb.pod("n0-p0").netns_path(), server.addr(15008))?;
    let ip = server.ip;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut sender = handshake(tcp, &cert).await?;
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{ip}:9000"))
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        anyhow::ensure!(response.status() == StatusCode::OK, "{}", response.status());
        let mut tunnel = TokioIo::new(hyper::upgrade::on(response).await?);
        tunnel.write_all(b"go\n").await?;
        // The whole answer, then the app's end of sending (END_STREAM reads as EOF here).
        let mut answer = Vec::new();
        tunnel
            .read_to_end(&mut answer)
            .await
            .context("the answer ended with an error, not END_STREAM")?;
        anyhow::ensure!(answer.len() == ANSWER, "{} of {ANSWER} bytes", answer.len());
        // The client goes on sending after the app closed: drained by the agent, never reset.
        for i in 0..20 {
            tunnel
                .write_all(&[b'x'; 1024])
                .await
                .with_context(|| format!("write {i} after the app closed: the stream was reset"))?;
            tunnel.flush().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tunnel
            .shutdown()
            .await
            .context("ending our side: the stream was reset")?;
        // A new stream on the same connection still works.
        let again = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{ip}:9000"))
            .body(Empty::<Bytes>::new())?;
        anyhow::ensure!(sender.send_request(again).await?.status() == StatusCode::OK);
        anyhow::Ok(())
    })
}
