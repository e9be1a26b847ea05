//! Locality-aware load balancing at the waypoint, as in Istio's locality tasks: the waypoint
//! and reviews v1 run in zone1, reviews v2 in zone2 (pods' `istio-locality` labels). With
//! `distribute`, zone1 and zone2 take their shares; with failover (the default once outliers
//! are ejected), zone1 takes every request until v1 fails and is ejected, then zone2 does.
//! Needs root; run with `cargo xtask test`.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Result;
use mesh_tests::l7::setup;

fn rule(locality: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}\n    loadBalancer: {{simple: ROUND_ROBIN, localityLbSetting: {locality}}}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n"
    )
}

#[test]
fn nearer_localities_take_requests_first_and_shares_are_kept() -> Result<()> {
    let l7 = setup()?;
    let upserted = || {
        l7.waypoint.metrics().map(|text| {
            mesh_tests::agent::sum_samples(
                &text,
                "ambit_waypoint_workload_changes_total",
                &["change=\"upserted\""],
            )
        })
    };
    let before = upserted()?;
    for (pod, locality) in [
        ("n0-p1", "region1.zone1"),
        ("n1-p0", "region1.zone1"),
        ("n1-p1", "region1.zone2"),
    ] {
        l7.tb.label_pod(pod, "istio-locality", Some(locality))?;
    }

    // Failover: all to zone1 while v1 answers (once the pods' localities have reached the
    // waypoint with their labels).
    l7.rules(&rule("{enabled: true}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while l7.tally(20, "/", &[])? != (20, 0) {
        assert!(Instant::now() < deadline, "zone2 still takes requests");
    }
    assert_eq!(
        l7.tally(40, "/", &[])?,
        (40, 0),
        "the waypoint's own zone first"
    );
    // Each relabelled pod reached the waypoint as itself: one upsert each, nothing rebuilt.
    let changed = upserted()? - before;
    assert_eq!(changed, 3.0, "workloads upserted for 3 relabelled pods");

    // distribute: 30 % of requests from zone1 stay there, 70 % go to zone2.
    l7.rules(&rule(
        "{distribute: [{from: 'region1/zone1/*', to: {'region1/zone1/*': 30, 'region1/zone2/*': 70}}]}",
    ))?;
    // 70 % of 1,000 is 700 (sd 14.5).
    let (v1, v2) = l7.tally(1000, "/", &[])?;
    assert!((600..=800).contains(&v2), "zone2 took {v2}, zone1 {v1}");

    l7.rules(&rule("{enabled: true}"))?;
    assert_eq!(l7.tally(20, "/", &[])?, (20, 0));
    // v1 fails: one 500 ejects it, and zone2 takes over.
    l7.v1_failing.store(true, Ordering::SeqCst);
    let mut client = l7.client(mesh_tests::l7::REVIEWS, "reviews")?;
    let first = client.get("/", &[])?;
    assert_eq!(first.status, 500, "{}", first.body);
    assert_eq!(l7.tally(40, "/", &[])?, (0, 40), "failed over to zone2");
    Ok(())
}
