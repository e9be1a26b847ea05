//! `cargo xtask demo`, end to end in `--check` mode: every step's measurement is asserted
//! by the demo itself (shares, latencies, status codes, the deciding policy, the mesh
//! page's graph), and this test checks it printed each step. Needs root; run with
//! `cargo xtask test`.

use std::process::Command;

use anyhow::{Result, ensure};

#[test]
fn the_demo_runs_every_step_and_checks_what_it_measures() -> Result<()> {
    // Cargo builds the package's programs for its integration tests.
    let output = Command::new(env!("CARGO_BIN_EXE_ambit-demo"))
        .arg("--check")
        .output()?;
    let printed = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "the demo failed:\n{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "refused by the node agent",
        "over mutual TLS; the waypoint saw the client as spiffe://cluster.local/ns/bookinfo/sa/sleep",
        "300 requests: reviews v1 answered",
        "20 requests from Chrome: productpage v1 0, v2 20",
        "as jason: 200 after 7.",
        "without a retry policy, 9 requests:",
        "with retries (3 attempts on 5xx), 9 requests: 9 x 200",
        "POST /ratings/0: 403",
        "policy=bookinfo/ratings-deny",
        "-> reviews.bookinfo -> reviews v2",
        "(checked)",
        "done",
    ] {
        ensure!(
            printed.contains(expected),
            "missing {expected:?} in:\n{printed}"
        );
    }
    Ok(())
}
