//! The controller's mesh page in a real browser (Debian's Chromium, headless, background
//! networking off): under a 90/10 canary it draws both versions' edges with their shares,
//! mutual TLS and the resources in force; moving the weights to 50/50 on the page (its own
//! sliders and button) rewrites the routing through the configuration directory, and the
//! split the clients measure follows. Screenshots go to target/mesh-page/. Needs root,
//! Chromium; run with `cargo xtask test`.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use mesh_tests::{
    browser::{Browser, Page},
    l7::{self, L7, REVIEWS},
};
use serde_json::Value;

const PAGE: &str = "http://127.0.0.1:15014/mesh";

fn canary(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
  labels: {{kiali_wizard: weighted_routing}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}
"
    )
}

/// The share of `reviews`' answers the page draws for `version`, if it draws that edge.
fn share(browser: &mut Browser, page: &Page, version: &str) -> Result<Option<f64>> {
    let value = browser.eval(
        page,
        &format!(
            "(() => {{ const e = [...document.querySelectorAll('#graph .edge')].find(e => e.dataset.from === 'reviews.default' && e.dataset.to === '{version}'); return e ? Number(e.dataset.share) : null; }})()"
        ),
    )?;
    Ok(value.as_f64())
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/mesh-page")
}

/// Requests to reviews until stopped.
fn traffic(l7: &L7, stop: &AtomicBool) -> Result<()> {
    while !stop.load(Ordering::SeqCst) {
        let mut client = l7.client(REVIEWS, "reviews")?;
        for _ in 0..20 {
            let response = client.get("/reviews/1", &[])?;
            ensure!(response.status == 200, "{}", response.body);
        }
    }
    Ok(())
}

#[test]
fn the_mesh_page_shows_the_canary_and_shifts_its_weights() -> Result<()> {
    let l7 = l7::setup()?;
    l7.name_workloads()?;
    l7.route(&canary(90, 10))?;
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let load = scope.spawn(|| traffic(&l7, &stop));
        let checked = drive(&l7);
        stop.store(true, Ordering::SeqCst);
        let load = load.join().expect("the traffic thread panicked");
        checked.and(load)
    })
}

fn drive(l7: &L7) -> Result<()> {
    let mut browser = Browser::start(&l7.tb.fabric_netns_path(), &l7.tb.work_dir)?;
    eprintln!("browser: {}", browser.version()?);
    let page = browser.open(PAGE)?;
    // Both versions drawn, shares near 90/10, all of it mutual TLS.
    let mut last = (None, None);
    browser
        .wait(&page, "both versions' edges at about 90/10", Duration::from_secs(60), |b, p| {
            last = (share(b, p, "reviews v1")?, share(b, p, "reviews v2")?);
            Ok(matches!(last, (Some(v1), Some(v2)) if (80.0..=97.0).contains(&v1) && (3.0..=20.0).contains(&v2)))
        })
        .with_context(|| format!("shares drawn: {last:?}"))?;
    let locked: Value = browser.eval(
        &page,
        "[...document.querySelectorAll('#graph .edge')].filter(e => e.dataset.from === 'productpage v1' || e.dataset.from === 'reviews.default').every(e => e.dataset.mtls === 'true')",
    )?;
    ensure!(
        locked == Value::Bool(true),
        "an edge of the canary is not marked mutual TLS"
    );
    let resources: Value = browser.eval(
        &page,
        "[...document.querySelectorAll('#resources tbody tr')].map(r => r.innerText).join('\\n')",
    )?;
    let resources = resources.as_str().unwrap_or_default();
    ensure!(
        resources.contains("VirtualService\tdefault/reviews\taccepted"),
        "the canary is not listed as accepted:\n{resources}"
    );
    browser.screenshot(&page, &screenshots().join("canary-90-10.png"))?;

    // Kiali's "weighted routing", on the page: the v1 slider to 50 (v2 follows), Apply.
    browser.wait(
        &page,
        "the routing form",
        Duration::from_secs(20),
        |b, p| {
            Ok(
                b.eval(p, "!!document.querySelector('#apply-default-reviews')")?
                    == Value::Bool(true),
            )
        },
    )?;
    browser.eval(
        &page,
        "(() => { const r = document.querySelector('input[data-service=\"default/reviews\"][data-subset=\"v1\"]'); r.value = 50; r.dispatchEvent(new Event('input', {bubbles: true})); document.querySelector('#apply-default-reviews').click(); })()",
    )?;
    let mut message = Value::Null;
    browser
        .wait(
            &page,
            "the page's change applied",
            Duration::from_secs(30),
            |b, p| {
                message = b.eval(p, "document.querySelector('#message').textContent")?;
                Ok(message.as_str().is_some_and(|m| m.starts_with("applied")))
            },
        )
        .with_context(|| format!("message: {message}"))?;
    // The page wrote the routing through the configuration directory.
    let written =
        std::fs::read_to_string(l7.tb.config_dir().join("routes.yaml")).or_else(|_| {
            std::fs::read_to_string(l7.tb.config_dir().join("mesh-page.default.reviews.yaml"))
        })?;
    ensure!(written.contains("weight: 50"), "{written}");
    // What the clients measure follows...
    let (v1, v2) = l7.tally(200, "/", &[])?;
    ensure!((60..=140).contains(&v2), "after 50/50: v1 {v1}, v2 {v2}");
    // ...and so does the page, once its window holds only the new split.
    browser
        .wait(&page, "both versions' edges at about 50/50", Duration::from_secs(60), |b, p| {
            last = (share(b, p, "reviews v1")?, share(b, p, "reviews v2")?);
            Ok(matches!(last, (Some(v1), Some(v2)) if (40.0..=60.0).contains(&v1) && (40.0..=60.0).contains(&v2)))
        })
        .with_context(|| format!("shares drawn: {last:?}"))?;
    browser.screenshot(&page, &screenshots().join("weights-50-50.png"))?;
    Ok(())
}
