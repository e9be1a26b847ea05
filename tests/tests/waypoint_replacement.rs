//! HTTP through a waypoint fails no request while the node agents of the client and the
//! backends are restarted (each hands over to a successor), nor while the waypoint is replaced.
//! A second waypoint instance starts in another
//! pod; the first leaves the waypoint's endpoints (the node agents stop choosing it), and is
//! then told to stop (SIGTERM, as Kubernetes does): it goes on accepting for its drain delay,
//! stops accepting, sends GOAWAY on its HBONE connections, closes each HTTP connection after
//! the request it carries (a slow one in flight finishes), and exits. Needs root; run with
//! `cargo xtask test`.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use mesh_tests::{
    http::HttpClient,
    l7::{FLAKY, PORT, REVIEWS, setup_with},
    sys::wait_until,
};

/// Clients sending one request per connection.
const CLIENTS: usize = 4;

#[test]
fn a_waypoint_replaced_under_load_fails_no_request() -> Result<()> {
    let mut l7 = setup_with(&["--drain-delay-secs", "1", "--drain-timeout-secs", "20"])?;

    let stop = AtomicBool::new(false);
    let (answered, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let errors = Mutex::new(Vec::new());
    let (tb, agents, controller) = (&l7.tb, &mut l7.agents, &l7.controller);
    let first = &mut l7.waypoint;
    let reviews: SocketAddr = format!("{REVIEWS}:{PORT}").parse()?;
    let load = |stop: &AtomicBool| {
        while !stop.load(Ordering::SeqCst) {
            let result = HttpClient::connect(tb.pod("n0-p0"), reviews, "reviews")
                .and_then(|mut client| client.get("/", &[]));
            match result {
                Ok(response) if response.status == 200 => {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                Ok(response) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", response.status, response.body));
                }
                Err(error) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    errors.lock().unwrap().push(format!("{error:#}"));
                }
            }
        }
    };
    let wait_answered = |count: usize| {
        let target = answered.load(Ordering::SeqCst) + count;
        wait_until(
            &format!("{count} more requests answered"),
            Duration::from_secs(60),
            Duration::from_millis(20),
            || Ok(answered.load(Ordering::SeqCst) >= target),
        )
    };

    let second_pod = "n0-p2";
    let (stopped, slow_done, _second) = std::thread::scope(|scope| -> Result<_> {
        let clients: Vec<_> = (0..CLIENTS).map(|_| scope.spawn(|| load(&stop))).collect();
        let replaced = (|| -> Result<_> {
            wait_answered(200)?;
            // The node agents of the client and of the backends are restarted under the load
            // (each hands over to a successor, which a DaemonSet rollout starts beside it).
            let mut handed_over = Vec::new();
            for node in [1, 0] {
                let successor = agents[node].start_successor(None)?;
                agents[node].terminate()?;
                handed_over.push(std::mem::replace(&mut agents[node], successor));
                wait_answered(200)?;
            }
            for mut old in handed_over {
                old.wait_exit(Duration::from_secs(20))?;
            }
            // A keep-alive connection through the first waypoint, for a slow request during
            // its drain.
            let mut slow_client =
                HttpClient::connect(tb.pod("n0-p0"), format!("{FLAKY}:{PORT}").parse()?, "flaky")?;
            ensure!(slow_client.get("/warm", &[])?.status == 200);
            // The second instance, in a pod of its own.
            tb.set_service_account(second_pod, "waypoint")?;
            tb.set_pod_mode(second_pod, Some("none"))?;
            // Released from capture first: the agent's HBONE listener leaves the pod's port.
            agents[0].wait_enrolled(&tb.pod(second_pod).key(), false)?;
            let second = tb.start_waypoint(
                controller,
                second_pod,
                "default/waypoint",
                "waypoint",
                &["--drain-delay-secs", "1"],
            )?;
            // Ready: now one of the waypoint's pods (in Kubernetes the controller offers a
            // waypoint pod only once it is ready; the test bed has no kubelet to say so).
            tb.label_pod(
                second_pod,
                mesh_node::pods::GATEWAY_NAME_LABEL,
                Some("waypoint"),
            )?;
            wait_answered(200)?;
            // The first leaves the waypoint's endpoints: once both agents know, no new
            // connection is sent to it.
            tb.label_pod(&first.pod, mesh_node::pods::GATEWAY_NAME_LABEL, None)?;
            for agent in agents.iter() {
                wait_until(
                    "the agents to stop choosing the first waypoint",
                    Duration::from_secs(20),
                    Duration::from_millis(50),
                    || {
                        let dump = agent.config_dump()?;
                        Ok(dump["pods"]["pods"].as_array().is_some_and(|pods| {
                            pods.iter().any(|p| {
                                p["name"] == "n0-p1"
                                    && p["labels"]
                                        .get(mesh_node::pods::GATEWAY_NAME_LABEL)
                                        .is_none()
                            })
                        }))
                    },
                )?;
            }
            // A slow request is in flight on the first waypoint when it is told to stop.
            let slow = scope.spawn(move || slow_client.get("/slow", &[]));
            std::thread::sleep(Duration::from_millis(300));
            let signalled = Instant::now();
            let stopped = first.stop()?;
            let slow = slow.join().expect("the slow request")?;
            ensure!(
                slow.status == 200 && slow.body == "slow",
                "the request in flight during the drain got {} {}",
                slow.status,
                slow.body
            );
            let slow_done = signalled.elapsed();
            wait_answered(300)?;
            Ok((stopped, slow_done, second))
        })();
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            client.join().expect("a load thread");
        }
        replaced
    })?;
    eprintln!(
        "{} requests answered, {} failed; the first waypoint exited {stopped:.1?} after SIGTERM, \
         its request in flight answered after {slow_done:.1?}",
        answered.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    ensure!(
        failed.load(Ordering::SeqCst) == 0,
        "{} requests failed across the replacement: {:#?}\nthe first waypoint said:\n{}",
        failed.load(Ordering::SeqCst),
        errors.lock().unwrap(),
        first.log()
    );
    let log = first.log();
    ensure!(
        log.contains("GOAWAY sent") && log.contains("drained"),
        "the first waypoint did not drain:\n{log}"
    );
    Ok(())
}
