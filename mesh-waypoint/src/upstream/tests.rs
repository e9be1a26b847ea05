use std::net::SocketAddr;

use mesh_core::{Identity, transport::Limits};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::identity::Certificates;

async fn idle_connection(to: SocketAddr, worker: Option<usize>) -> h1::Connection {
    let tcp = TcpStream::connect(to).await.expect("connect");
    let mut connection = h1::Connection::new(connect::Conn::Plain(tcp), Counted::take(None));
    connection.worker = worker;
    connection
}

/// An idle connection is reused by the worker it was opened on; another worker takes it
/// only when it may not open one of its own.
#[tokio::test]
async fn idle_connections_stay_with_their_worker() {
    let identity = Identity::new("cluster.local", "default", "waypoint").expect("identity");
    let upstreams = Upstreams::new(
        Connector::new(Certificates::new(identity), &Limits::default()),
        None,
        None,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    // This test's thread is no worker (`None`); the connection is worker 1's.
    upstreams.give_back(addr, idle_connection(addr, Some(1)).await);
    let _accepted = listener.accept().await.expect("accept");
    assert!(upstreams.take_idle(addr, false).is_none());
    let taken = upstreams
        .take_idle(addr, true)
        .expect("worker 1's, at the limit");
    assert_eq!(taken.worker, Some(1));

    upstreams.give_back(addr, idle_connection(addr, Some(1)).await);
    upstreams.give_back(addr, idle_connection(addr, None).await);
    let _accepted = (listener.accept().await, listener.accept().await);
    let own = upstreams.take_idle(addr, false).expect("its own");
    assert_eq!(own.worker, None);
    assert!(upstreams.take_idle(addr, false).is_none());
}

/// Idle connections are not kept past the idle timeout, and an endpoint that went away leaves
/// nothing behind in the pool.
#[tokio::test]
async fn idle_connections_past_the_timeout_are_dropped() {
    let identity = Identity::new("cluster.local", "default", "waypoint").expect("identity");
    // The shortest timeout there is (a millisecond).
    let limits = Limits {
        idle_timeout_secs: 0.0,
        ..Limits::default()
    };
    let upstreams = Upstreams::new(
        Connector::new(Certificates::new(identity), &limits),
        None,
        None,
    );
    let (gone, live) = (
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    );
    let (gone_addr, live_addr) = (
        gone.local_addr().expect("address"),
        live.local_addr().expect("address"),
    );
    upstreams.give_back(gone_addr, idle_connection(gone_addr, None).await);
    let (mut held, _) = gone.accept().await.expect("accept");
    // What is awaited here is time itself: the timeout must have passed.
    std::thread::sleep(limits.idle_timeout() * 5);
    upstreams.give_back(live_addr, idle_connection(live_addr, None).await);
    let kept = upstreams
        .idle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .by_addr
        .contains_key(&gone_addr);
    assert!(
        !kept,
        "the first endpoint's idle connection was kept past the timeout"
    );
    // And it was closed, not just forgotten.
    let mut byte = [0u8; 1];
    use tokio::io::AsyncReadExt as _;
    assert_eq!(held.read(&mut byte).await.expect("read"), 0);
}

/// A DestinationRule's `tls` refuses requests when it asks for TLS Ambit does not originate
/// or for checks it does not make; the mesh's own mutual TLS does not. The subset's and the
/// port's settings win over the rule's.
#[test]
fn tls_the_rule_asks_for_and_ambit_cannot_give_refuses_requests() {
    use mesh_api::networking::TrafficPolicy;
    let policy = |yaml: &str| serde_yaml::from_str::<TrafficPolicy>(yaml).unwrap();
    let refused = |top: &TrafficPolicy, subset: Option<&TrafficPolicy>, port| {
        cluster::Policy::from_rule(Some(top), subset, port).tls_refusal
    };
    let mesh = policy("{tls: {mode: ISTIO_MUTUAL}}");
    let simple = policy("{tls: {mode: SIMPLE}}");
    let named = policy("{tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://x/ns/a/sa/b]}}");
    let on_443 = policy(
        "{tls: {mode: DISABLE}, portLevelSettings: [{port: {number: 443}, tls: {mode: MUTUAL}}]}",
    );
    assert_eq!(refused(&mesh, None, 80), None);
    assert!(refused(&simple, None, 80).is_some_and(|why| why.contains("SIMPLE")));
    assert_eq!(refused(&simple, Some(&mesh), 80), None, "the subset's wins");
    assert!(refused(&mesh, Some(&simple), 80).is_some());
    assert!(refused(&named, None, 80).is_some_and(|why| why.contains("subjectAltNames")));
    assert_eq!(refused(&on_443, None, 80), None);
    assert!(refused(&on_443, None, 443).is_some_and(|why| why.contains("MUTUAL")));
}
