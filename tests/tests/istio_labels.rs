//! Istio's labels, unchanged, on the test bed: `istio.io/dataplane-mode` joins a namespace
//! and takes a pod out, `istio.io/use-waypoint` binds the namespace to its waypoint, as
//! Ambit's own labels do (the controller's unit tests compare the two spellings binding by
//! binding). Needs root; run with `cargo xtask test`.

use anyhow::Result;
use mesh_tests::{
    http::HttpClient,
    l7::{self, PORT, vs},
};

#[test]
fn istio_labels_join_the_mesh_and_bind_the_waypoint() -> Result<()> {
    let l7 = l7::setup_with_istio_labels()?;
    for (agent, pods) in l7
        .agents
        .iter()
        .zip([["n0-p0", "n0-p2"], ["n1-p0", "n1-p1"]])
    {
        for pod in pods {
            agent.wait_enrolled(&l7.tb.pod(pod).key(), true)?;
        }
    }
    // Only the waypoint applies VirtualServices: every request reaching v2 went through it.
    l7.route(&vs(
        "  - route:\n    - {destination: {host: reviews, subset: v2}}\n",
    ))?;
    assert_eq!(l7.tally(20, "/", &[])?, (0, 20));
    let requests = mesh_tests::agent::sum_samples(
        &l7.waypoint.metrics()?,
        "istio_requests_total",
        &["reporter=\"waypoint\""],
    );
    assert!(requests >= 20.0, "the waypoint saw {requests} requests");

    // `istio.io/dataplane-mode: none` takes a pod out of the mesh; the pods behind the
    // waypoint then refuse it (it would skip the waypoint's policy).
    l7.tb
        .label_pod("n0-p2", "istio.io/dataplane-mode", Some("none"))?;
    l7.agents[0].wait_enrolled(&l7.tb.pod("n0-p2").key(), false)?;
    let around = HttpClient::connect(l7.tb.pod("n0-p2"), l7.tb.pod("n1-p0").addr(PORT), "reviews")
        .and_then(|mut c| c.get("/around", &[]));
    assert!(
        around.is_err(),
        "reached the pod around its waypoint: {around:?}"
    );
    Ok(())
}
