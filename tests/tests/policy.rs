//! L4 policy enforced by the destination's agent: PeerAuthentication STRICT / PERMISSIVE,
//! AuthorizationPolicy DENY by principal and port, ALLOW lists, and live connections closed
//! when a new policy forbids them. Needs root; run with `cargo xtask test`.

use std::{net::TcpStream, time::Duration};

use anyhow::Result;
use mesh_tests::{
    Agent, AgentOptions, Testbed, Topology,
    controller::Controller,
    traffic::{closed_by_peer, echo_round_trip, echo_server, read_greeting},
};

const PORT: u16 = 8080;
const OTHER_PORT: u16 = 9090;

/// Two nodes with HBONE: n0-p0 runs as `web`, n0-p1 as `batch` (both enrolled); n1-p0 is the
/// enrolled server with echo servers on both ports; n1-p1 stays out of the mesh.
struct Mesh {
    tb: Testbed,
    /// Taken while a test has it stopped.
    controller: Option<Controller>,
    agents: [Agent; 2],
    _servers: Vec<mesh_tests::traffic::Server>,
}

fn mesh() -> Result<Mesh> {
    mesh_with(AgentOptions::default())
}

fn mesh_with(options: AgentOptions) -> Result<Mesh> {
    let tb = Testbed::new(Topology::default())?;
    tb.set_service_account("n0-p0", "web")?;
    tb.set_service_account("n0-p1", "batch")?;
    for pod in ["n0-p0", "n0-p1", "n1-p0"] {
        tb.set_pod_mode(pod, Some("ambient"))?;
    }
    let (controller, agents) = tb.start_mesh(options)?;
    let server = tb.pod("n1-p0");
    agents[1].wait_enrolled(&server.key(), true)?;
    agents[0].wait_enrolled(&tb.pod("n0-p1").key(), true)?;
    let servers = vec![
        echo_server(server.listen(PORT)?)?,
        echo_server(server.listen(OTHER_PORT)?)?,
    ];
    Ok(Mesh {
        tb,
        controller: Some(controller),
        agents,
        _servers: servers,
    })
}

impl Mesh {
    fn connect(&self, client: &str, port: u16) -> Result<TcpStream> {
        Ok(self
            .tb
            .pod(client)
            .connect(self.tb.pod("n1-p0").addr(port))?)
    }

    fn allowed(&self, client: &str, port: u16) -> bool {
        self.connect(client, port).is_ok_and(|mut s| {
            read_greeting(&mut s).is_ok() && echo_round_trip(&mut s, b"ok").is_ok()
        })
    }

    fn apply(&self, name: &str, yaml: &str, count: usize) -> Result<()> {
        self.tb.write_policy(name, yaml)?;
        self.agents[1].wait_policies(count)
    }

    fn refused_metric(&self) -> f64 {
        self.agents[1]
            .metric_sum(
                "istio_tcp_connections_failed_total",
                &["response_flags=\"UAEX\""],
            )
            .unwrap_or(0.0)
    }
}

#[test]
fn strict_refuses_plaintext_and_closes_it_permissive_accepts_it() -> Result<()> {
    let m = mesh()?;
    // n1-p1 is outside the mesh, and on the server's node: plaintext straight to the pod.
    let plain_client = m.tb.pod("n1-p1");
    let server = m.tb.pod("n1-p0").addr(PORT);
    let mut before = plain_client.connect(server)?;
    read_greeting(&mut before)?;
    echo_round_trip(&mut before, b"permissive by default")?;

    let refused = m.refused_metric();
    m.apply(
        "strict",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: default, namespace: istio-system }\nspec: { mtls: { mode: STRICT } }\n",
        1,
    )?;
    assert!(
        closed_by_peer(&mut before, Duration::from_secs(5)),
        "a plaintext connection survived STRICT"
    );
    let mut after = plain_client.connect(server)?;
    assert!(
        read_greeting(&mut after).is_err(),
        "plaintext accepted under STRICT"
    );
    assert!(m.refused_metric() > refused, "refusal not counted");
    assert!(
        m.agents[1].log().contains("PeerAuthentication STRICT"),
        "refusal not logged"
    );
    assert!(
        m.allowed("n0-p0", PORT),
        "mutual TLS must still pass STRICT"
    );

    m.apply(
        "strict",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: default, namespace: istio-system }\nspec: { mtls: { mode: PERMISSIVE } }\n",
        1,
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let mut again = plain_client.connect(server)?;
    read_greeting(&mut again)?;
    Ok(())
}

#[test]
fn deny_by_principal_and_by_port() -> Result<()> {
    let m = mesh()?;
    assert!(m.allowed("n0-p0", PORT) && m.allowed("n0-p1", PORT));
    m.apply(
        "deny",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-batch, namespace: default }
spec:
  action: DENY
  rules: [{ from: [{ source: { principals: ["cluster.local/ns/default/sa/batch"] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-9090, namespace: default }
spec:
  action: DENY
  rules: [{ to: [{ operation: { ports: ["9090"] } }] }]
"#,
        2,
    )?;
    let dump = m.agents[1].config_dump()?;
    assert!(
        dump["policy_list"]
            .to_string()
            .contains("AuthorizationPolicy default/no-batch action=Deny"),
        "{dump}"
    );
    assert!(!m.allowed("n0-p1", PORT), "batch was not denied");
    assert!(m.allowed("n0-p0", PORT), "web was denied");
    assert!(!m.allowed("n0-p0", OTHER_PORT), "port 9090 was not denied");
    assert!(
        m.agents[1]
            .log_tail()
            .contains("denied by AuthorizationPolicy default/no-batch")
    );
    Ok(())
}

#[test]
fn allow_list_admits_only_what_it_names_and_changes_close_live_connections() -> Result<()> {
    let m = mesh()?;
    let mut web = m.connect("n0-p0", PORT)?;
    read_greeting(&mut web)?;
    let mut batch = m.connect("n0-p1", PORT)?;
    read_greeting(&mut batch)?;
    m.apply(
        "allow",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: web-only, namespace: default }
spec:
  action: ALLOW
  rules: [{ from: [{ source: { principals: ["cluster.local/ns/default/sa/web"] } }] }]
"#,
        1,
    )?;
    assert!(
        closed_by_peer(&mut batch, Duration::from_secs(5)),
        "batch's open connection survived the ALLOW list"
    );
    echo_round_trip(&mut web, b"web keeps its connection")?;
    assert!(m.allowed("n0-p0", PORT));
    assert!(!m.allowed("n0-p1", PORT));
    let plain = m.tb.pod("n1-p1");
    let mut stream = plain.connect(m.tb.pod("n1-p0").addr(PORT))?;
    assert!(
        read_greeting(&mut stream).is_err(),
        "plaintext has no principal: not on the list"
    );

    m.tb.remove_policy("allow")?;
    m.agents[1].wait_policies(0)?;
    assert!(
        m.allowed("n0-p1", PORT),
        "removing the policy restores access"
    );
    Ok(())
}

/// Pods and policies through the controller, as in Kubernetes: the agents have no pods file
/// and no config directory (`--config-source controller`). The controller streams the
/// workloads, each agent finds its pods' network namespaces in `/proc` by their `pod<uid>`
/// cgroups; a policy written to the controller's directory is validated, streamed, enforced by
/// the server's agent and let go of when removed; a pod leaving the mesh is released.
#[test]
fn pods_and_policies_reach_agents_through_the_controller_stream() -> Result<()> {
    let m = mesh_with(AgentOptions {
        config_from_controller: true,
        ..AgentOptions::default()
    })?;
    let dump = m.agents[1].config_dump()?;
    let server = m.tb.pod("n1-p0");
    assert!(
        dump["enrolled"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|pod| pod["pod"] == server.key().as_str()
                && pod["netns"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("/proc/"))),
        "the server pod was not enrolled through /proc: {dump}"
    );
    assert!(m.allowed("n0-p1", PORT));
    m.apply(
        "deny",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-batch, namespace: default }
spec:
  action: DENY
  rules: [{ from: [{ source: { principals: ["cluster.local/ns/default/sa/batch"] } }] }]
"#,
        1,
    )?;
    assert!(!m.allowed("n0-p1", PORT), "batch was not denied");
    assert!(m.allowed("n0-p0", PORT), "web was denied");
    let log = m.agents[1].log();
    assert!(log.contains("configuration from the controller"), "{log}");
    assert!(
        log.contains("denied by AuthorizationPolicy default/no-batch"),
        "{log}"
    );
    m.tb.remove_policy("deny")?;
    m.agents[1].wait_policies(0)?;
    assert!(m.allowed("n0-p1", PORT), "batch still denied after removal");

    let batch = m.tb.pod("n0-p1").key();
    m.tb.set_pod_mode("n0-p1", Some("none"))?;
    m.agents[0].wait_enrolled(&batch, false)?;
    m.tb.set_pod_mode("n0-p1", Some("ambient"))?;
    m.agents[0].wait_enrolled(&batch, true)?;
    Ok(())
}

/// A pod's labels change under it (in Kubernetes, `kubectl label`): the agent applies the new
/// labels in place, without re-enrolling the pod (which would refuse connections while its
/// listeners reopen). A harmless label leaves live connections alone; a label that brings the
/// pod under a DENY refuses new connections and closes the live ones, as a new policy would.
#[test]
fn a_relabelled_pod_keeps_its_listeners_and_connections() -> Result<()> {
    let m = mesh()?;
    m.apply(
        "locked",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: locked, namespace: default }
spec:
  selector: { matchLabels: { locked: "yes" } }
  action: DENY
  rules: [{}]
"#,
        1,
    )?;
    let mut live = m.connect("n0-p0", PORT)?;
    read_greeting(&mut live)?;
    assert!(m.allowed("n0-p1", PORT), "denied before the label was set");

    m.tb.label_pod("n1-p0", "team", Some("reviews"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !m.agents[1].log().contains("pod relabelled") {
        assert!(std::time::Instant::now() < deadline, "relabel not seen");
        std::thread::sleep(Duration::from_millis(50));
    }
    echo_round_trip(&mut live, b"still open after a harmless relabel")?;

    m.tb.label_pod("n1-p0", "locked", Some("yes"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m.allowed("n0-p1", PORT) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new label was not applied: {}",
            m.agents[1].log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed_by_peer(&mut live, Duration::from_secs(5)),
        "the live connection stayed open under DENY"
    );
    let log = m.agents[1].log();
    assert!(log.contains("pod relabelled"), "{log}");
    assert!(
        !log.contains("pod released"),
        "the pod was re-enrolled: {log}"
    );
    Ok(())
}

/// A controller restarted while agents follow its stream: a DENY stays enforced while it is
/// down, the agents resume from a snapshot of the new run (its epoch differs, so its version
/// numbers are never read as the old run's) and take the changes made after it.
#[test]
fn a_controller_restart_loses_no_deny() -> Result<()> {
    let mut m = mesh_with(AgentOptions {
        config_from_controller: true,
        ..AgentOptions::default()
    })?;
    let deny = |port: u16| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-{port}, namespace: default}}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {{ports: [\"{port}\"]}}\n"
        )
    };
    m.apply("deny-port", &deny(PORT), 1)?;
    assert!(!m.allowed("n0-p1", PORT));
    assert!(m.allowed("n0-p1", OTHER_PORT));

    drop(m.controller.take());
    assert!(
        !m.allowed("n0-p1", PORT),
        "the DENY holds while the controller is down"
    );
    assert!(m.allowed("n0-p1", OTHER_PORT));
    m.controller = Some(m.tb.start_controller()?);

    m.apply("deny-other", &deny(OTHER_PORT), 2)?;
    assert!(
        !m.allowed("n0-p1", OTHER_PORT),
        "a change after the restart"
    );
    assert!(!m.allowed("n0-p1", PORT), "and the DENY from before it");
    let log = m.agents[1].log();
    let epochs: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("configuration from the controller") && l.contains("snapshot=true"))
        .filter_map(|l| l.split("epoch=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(
        epochs.len(),
        2,
        "one snapshot per controller run: {epochs:?}"
    );
    // The new run's metrics show both agents subscribed and up to date, once both ACKs are
    // in (an agent's reconnect may still be under way when the policies have arrived).
    let metrics = || -> Result<String> {
        let (status, text) =
            mesh_tests::sys::loopback_get(&m.tb.fabric_netns_path(), 15020, "/metrics")?;
        anyhow::ensure!(status == 200, "metrics answered {status}");
        Ok(text)
    };
    let sample = |text: &str, series: &str, filters: &[&str]| {
        mesh_tests::agent::sum_samples(text, series, filters)
    };
    mesh_tests::sys::wait_until(
        "both agents subscribed and acknowledged",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        || {
            let text = metrics()?;
            Ok(sample(
                &text,
                "ambit_controller_subscribers_behind",
                &["role=\"node\""],
            ) == 0.0
                && sample(&text, "ambit_controller_push_duration_seconds_count", &[]) >= 2.0)
        },
    )?;
    let text = metrics()?;
    assert_eq!(
        sample(&text, "ambit_controller_subscribers", &["role=\"node\""]),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "ambit_controller_subscribers_refusing",
            &["role=\"node\""]
        ),
        0.0
    );
    assert!(sample(&text, "ambit_controller_push_duration_seconds_count", &[]) >= 2.0);
    Ok(())
}
