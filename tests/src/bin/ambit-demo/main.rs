//! `cargo xtask demo`: the mesh on this machine, doing what it is for. Bookinfo's services
//! run in network namespaces on two "nodes"; the namespace joins the mesh with Istio's
//! labels and gets a waypoint; then the YAML of deploy/examples is applied one file at a
//! time (STRICT mutual TLS, a 90/10 canary, a user-agent A/B, a fault delay, retries, a
//! DENY), and each step prints what was measured. Then the mesh page's address.
//!
//! `--check` asserts what each step measured and does not pause (the test suite runs it);
//! `--keep` leaves everything running, with a trickle of traffic, until Ctrl-C.
//!
//! # Layout
//! - `apps`: Bookinfo's services as the pods run them;
//! - `forward`: the controller's admin port on this machine's loopback;
//! - `mesh`: starting the mesh and applying YAML, waiting for every proxy to have it.

mod apps;
mod forward;
mod mesh;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use clap::Parser;
use mesh_tests::http::HttpClient;

use apps::PORT;

#[derive(Parser)]
#[command(
    about = "Ambit on this machine: Bookinfo, a waypoint, and Istio's YAML applied step by step"
)]
struct Args {
    /// Check every measurement, without pauses (the test suite runs the demo so).
    #[arg(long)]
    check: bool,
    /// Leave the mesh running (and the mesh page open) until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    mesh_tests::sys::require_root()?;
    let started = Instant::now();
    println!("Ambit demo: Bookinfo in an ambient mesh, with Istio's own YAML");
    let demo = mesh::start(&args)?;
    let check = |ok: bool, what: &str| -> Result<()> {
        if args.check {
            ensure!(ok, "check failed: {what}");
        }
        Ok(())
    };

    demo.section("STRICT mutual TLS for the whole mesh (deploy/examples/strict-mtls.yaml)");
    demo.apply_example("strict-mtls.yaml")?;
    let legacy = demo.tb.pod(apps::LEGACY_POD);
    let plain = HttpClient::connect(legacy, demo.tb.pod("n1-p0").addr(PORT), "reviews")
        .and_then(|mut c| c.get("/", &[]));
    demo.say(&format!(
        "legacy (outside the mesh) -> reviews-v1 in plaintext: {}",
        match &plain {
            Ok(r) => format!("answered {} (NOT refused)", r.status),
            Err(_) => "refused by the node agent on n1".to_owned(),
        }
    ));
    check(plain.is_err(), "STRICT refuses plaintext")?;
    let answer = demo.get("reviews", "/reviews/0", &[])?;
    let principal = demo.waypoint_principal_of("sleep")?;
    demo.say(&format!(
        "sleep -> reviews: {} over mutual TLS; the waypoint saw the client as {principal}",
        answer.status
    ));
    check(
        answer.status == 200 && principal.ends_with("/ns/bookinfo/sa/sleep"),
        "the mesh carries sleep's identity",
    )?;
    demo.pause(&args);

    demo.section("A 90/10 canary of reviews (deploy/examples/canary-90-10.yaml)");
    demo.apply_canary()?;
    let (v1, v2) = demo.tally("reviews", 300, &[])?;
    let share = v2 as f64 / (v1 + v2) as f64 * 100.0;
    demo.say(&format!(
        "300 requests: reviews v1 answered {v1} ({:.1} %), v2 {v2} ({share:.1} %)",
        100.0 - share
    ));
    check((4.0..=18.0).contains(&share), "v2's share near 10 %")?;
    demo.pause(&args);

    demo.section("A/B by user agent on productpage (deploy/examples/user-agent-ab.yaml)");
    demo.apply_example("user-agent-ab.yaml")?;
    let chrome = [("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0")];
    let curl = [("user-agent", "curl/8.5.0")];
    let (chrome_v1, chrome_v2) = demo.tally("productpage", 20, &chrome)?;
    let (curl_v1, curl_v2) = demo.tally("productpage", 20, &curl)?;
    demo.say(&format!(
        "20 requests from Chrome: productpage v1 {chrome_v1}, v2 {chrome_v2}"
    ));
    demo.say(&format!(
        "20 requests from curl:   productpage v1 {curl_v1}, v2 {curl_v2}"
    ));
    check(
        chrome_v2 == 20 && curl_v1 == 20,
        "Chrome to v2, the rest to v1",
    )?;
    demo.pause(&args);

    demo.section("A 7 s fault delay for user jason on ratings (deploy/examples/fault-delay.yaml)");
    demo.apply_example("fault-delay.yaml")?;
    let timed = |headers: &[(&str, &str)]| -> Result<(u16, Duration)> {
        let at = Instant::now();
        let response = demo.get("ratings", "/ratings/0", headers)?;
        Ok((response.status, at.elapsed()))
    };
    let (jason_status, jason) = timed(&[("end-user", "jason")])?;
    let (other_status, other) = timed(&[("end-user", "alice")])?;
    demo.say(&format!(
        "as jason: {jason_status} after {:.2} s; as alice: {other_status} after {:.1} ms",
        jason.as_secs_f64(),
        other.as_secs_f64() * 1e3
    ));
    check(
        jason >= Duration::from_millis(6_900) && other < Duration::from_secs(1),
        "only jason is delayed",
    )?;
    demo.pause(&args);

    demo.section(
        "Retries for details, which fails two calls in three (deploy/examples/retries.yaml)",
    );
    let before = demo.statuses("details", 9)?;
    demo.say(&format!(
        "without a retry policy, 9 requests: {}",
        summary(&before)
    ));
    let calls_before = demo.details_calls();
    demo.apply_example("retries.yaml")?;
    let after = demo.statuses("details", 9)?;
    let calls = demo.details_calls() - calls_before;
    demo.say(&format!(
        "with retries (3 attempts on 5xx), 9 requests: {}; details answered {calls} calls",
        summary(&after)
    ));
    check(
        before.iter().filter(|s| **s == 500).count() >= 5 && after.iter().all(|s| *s == 200),
        "retries turn the failures into answers",
    )?;
    demo.pause(&args);

    demo.section("DENY POST to ratings (deploy/examples/deny-policy.yaml)");
    demo.apply_example("deny-policy.yaml")?;
    let post = demo.request("ratings", "POST", "/ratings/0", &[])?;
    let get = demo.get("ratings", "/ratings/0", &[])?;
    let decided = demo.denial()?;
    demo.say(&format!(
        "POST /ratings/0: {} ({}); GET: {}",
        post.status,
        post.body.trim(),
        get.status
    ));
    demo.say(&format!("the waypoint's log: {decided}"));
    check(
        post.status == 403 && get.status == 200 && decided.contains("ratings-deny"),
        "the DENY decides POSTs only",
    )?;
    demo.pause(&args);

    demo.section("The kernel's side: node n0's enrollment map, as bpftool shows it");
    let map = demo.enrollment_map()?;
    for line in map.iter().take(14) {
        demo.say(line);
    }
    if map.len() > 14 {
        demo.say(&format!(
            "... ({} lines; keys are network-namespace cookies)",
            map.len()
        ));
    }
    check(
        map.iter()
            .any(|l| l.contains("\"key\"") || l.contains("key")),
        "bpftool reads the pinned map",
    )?;
    demo.pause(&args);

    demo.section("The mesh page (served by the controller; it reads the proxies' metrics itself)");
    let edges = demo.page_edges()?;
    for edge in &edges {
        demo.say(edge);
    }
    check(
        edges
            .iter()
            .any(|e| e.contains("sleep v1 -> reviews") && e.contains("mTLS"))
            && edges
                .iter()
                .any(|e| e.contains("ratings") && e.contains("denied")),
        "the page's graph shows the canary and the denial",
    )?;
    let page = demo.page_addr;
    println!(
        "\n    Open http://{page}/mesh for the live graph, the resources and weighted routing."
    );
    println!("    Try:  ambitctl --controller {page} status");
    println!("          ambitctl --controller {page} dashboard");
    println!("          ambitctl analyze deploy/examples");
    println!(
        "\nEverything above took {:.0} s{}.",
        started.elapsed().as_secs_f64(),
        if args.check { " (checked)" } else { "" }
    );
    if args.keep {
        println!("\n--keep: the mesh keeps running with a little traffic; Ctrl-C removes it.");
        demo.keep_until_interrupted()?;
    }
    demo.section("cleaning up (namespaces, cgroups, pinned programs, processes)");
    drop(demo);
    println!("    done");
    Ok(())
}

/// `9 x 200` / `3 x 200, 6 x 500`.
fn summary(statuses: &[u16]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for status in statuses {
        *counts.entry(status).or_insert(0) += 1;
    }
    counts
        .iter()
        .map(|(status, n)| format!("{n} x {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}
