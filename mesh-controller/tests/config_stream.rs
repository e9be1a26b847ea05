//! The configuration stream over real gRPC on loopback: a subscriber gets a snapshot, then only
//! deltas; a refused update is reported and the previous configuration stays; a reconnect
//! resumes with a delta.

use std::{sync::Arc, time::Duration};

use mesh_controller::distribution::{Distributor, service::ConfigStreamService};
use mesh_core::{
    config_client::{ConfigView, follow},
    config_pb::{
        Resource, ResourceKey, Role, Update, Workload, config_service_client::ConfigServiceClient,
        config_service_server::ConfigServiceServer, resource::Body,
    },
};
use tokio::sync::{mpsc, oneshot};

fn workload(name: &str, node: &str) -> Resource {
    Resource {
        key: Some(ResourceKey {
            kind: "Workload".into(),
            namespace: "shop".into(),
            name: name.into(),
        }),
        body: Some(Body::Workload(Workload {
            name: name.into(),
            namespace: "shop".into(),
            node: node.into(),
            addresses: vec!["10.0.0.1".into()],
            service_account: "default".into(),
            enrolled: true,
            ..Workload::default()
        })),
        refused: String::new(),
    }
}

fn istio(kind: &str, name: &str) -> Resource {
    Resource {
        key: Some(ResourceKey {
            kind: kind.into(),
            namespace: "shop".into(),
            name: name.into(),
        }),
        body: Some(Body::IstioJson("{}".into())),
        refused: String::new(),
    }
}

async fn serve(distributor: Arc<Distributor>) -> ConfigServiceClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ConfigStreamService {
        distributor,
        authorizer: None,
        nodes_read_secrets: false,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ConfigServiceClient::new(channel)
}

/// A subscriber that refuses any resource named `poison`, reports each applied update, and
/// hands its view back when told to disconnect.
struct Subscriber {
    applied: mpsc::UnboundedReceiver<(ConfigView, Update)>,
    disconnect: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<ConfigView>,
}

fn subscribe(
    mut client: ConfigServiceClient<tonic::transport::Channel>,
    mut view: ConfigView,
) -> Subscriber {
    let (tx, applied) = mpsc::unbounded_channel();
    let (disconnect, mut stop) = oneshot::channel();
    let done = tokio::spawn(async move {
        let accept =
            |candidate: &ConfigView| match candidate.resources.keys().find(|k| k.2 == "poison") {
                Some(k) => Err(format!("{}/{} is not acceptable", k.1, k.2)),
                None => Ok(()),
            };
        let report = |view: &ConfigView, update: &Update| {
            let _ = tx.send((view.clone(), update.clone()));
        };
        tokio::select! {
            result = follow(&mut client, Role::Node, None, &mut view, accept, report) => {
                result.expect("stream failed");
            }
            _ = &mut stop => {}
        }
        view
    });
    Subscriber {
        applied,
        disconnect,
        done,
    }
}

async fn next(sub: &mut Subscriber) -> (ConfigView, Update) {
    tokio::time::timeout(Duration::from_secs(5), sub.applied.recv())
        .await
        .expect("no update within 5 s")
        .expect("subscriber ended")
}

/// Waits until the controller's view of its only subscriber satisfies `check` (the ACK that
/// follows an applied update reaches it a moment later).
async fn wait_for_status(
    distributor: &Distributor,
    check: impl Fn(&mesh_controller::distribution::SubscriberStatus) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = distributor.subscribers();
        if status.len() == 1 && check(&status[0]) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriber status never matched: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names(update: &Update) -> (Vec<String>, Vec<String>) {
    let up = update
        .upserts
        .iter()
        .map(|r| r.key.as_ref().unwrap().name.clone())
        .collect();
    let rm = update.removes.iter().map(|k| k.name.clone()).collect();
    (up, rm)
}

#[tokio::test]
async fn a_subscriber_gets_a_snapshot_then_only_deltas() {
    let distributor = Arc::new(Distributor::default());
    distributor.publish(vec![
        workload("a", "n0"),
        workload("b", "n0"),
        workload("c", "n1"),
        istio("VirtualService", "routes"),
    ]);
    let mut sub = subscribe(serve(distributor.clone()).await, ConfigView::default());
    let (view, update) = next(&mut sub).await;
    assert_eq!(update.base_version, 0, "a snapshot first");
    assert_eq!(
        names(&update).0,
        ["a", "b", "c"],
        "a node gets no VirtualService"
    );
    assert_eq!(view.resources.len(), 3);

    distributor.publish(vec![
        workload("a", "n0"),
        workload("b", "n1"), // moved
        istio("VirtualService", "routes"),
        istio("AuthorizationPolicy", "deny"),
    ]);
    let (view, update) = next(&mut sub).await;
    assert_eq!(update.base_version, 1);
    assert_eq!(
        names(&update),
        (vec!["deny".into(), "b".into()], vec!["c".into()]),
        "only what changed"
    );
    assert_eq!(view.version, 2);
    assert_eq!(view.resources.len(), 3);
    wait_for_status(&distributor, |s| s.acked == 2 && s.nack.is_none()).await;
    let _ = sub.disconnect.send(());
}

#[tokio::test]
async fn a_refused_update_is_reported_and_the_previous_config_stays() {
    let distributor = Arc::new(Distributor::default());
    distributor.publish(vec![workload("a", "n0")]);
    let mut sub = subscribe(serve(distributor.clone()).await, ConfigView::default());
    let (view, _) = next(&mut sub).await;
    assert_eq!(view.version, 1);

    distributor.publish(vec![workload("a", "n0"), workload("poison", "n0")]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let nack = loop {
        if let Some(nack) = distributor
            .subscribers()
            .first()
            .and_then(|s| s.nack.clone())
        {
            break nack;
        }
        assert!(tokio::time::Instant::now() < deadline, "no NACK reported");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(nack.version, 2);
    assert_eq!(nack.error, "shop/poison is not acceptable");
    assert_eq!(distributor.subscribers()[0].acked, 1, "still on version 1");

    // The fix goes out as a delta on what the subscriber has (version 1), not on the refused one.
    distributor.publish(vec![workload("a", "n1")]);
    let (view, update) = next(&mut sub).await;
    assert_eq!((update.version, update.base_version), (3, 1));
    assert_eq!(view.resources.len(), 1);
    wait_for_status(&distributor, |s| s.acked == 3 && s.nack.is_none()).await;
    let _ = sub.disconnect.send(());
}

#[tokio::test]
async fn a_reconnect_resumes_with_a_delta() {
    let distributor = Arc::new(Distributor::default());
    let names_of = |n: usize| (0..n).map(|i| workload(&format!("w{i}"), "n0")).collect();
    distributor.publish(names_of(100));
    let client = serve(distributor.clone()).await;
    let mut sub = subscribe(client.clone(), ConfigView::default());
    let (_, first) = next(&mut sub).await;
    assert_eq!(first.upserts.len(), 100);
    sub.disconnect.send(()).unwrap();
    let view = sub.done.await.unwrap();
    assert_eq!(view.version, 1);

    // Changes while away.
    distributor.publish(names_of(101));
    let mut sub = subscribe(client.clone(), view);
    let (view, update) = next(&mut sub).await;
    assert_eq!(update.base_version, 1, "resumed, not resent");
    assert_eq!(names(&update).0, ["w100"]);
    assert_eq!(view.resources.len(), 101);
    sub.disconnect.send(()).unwrap();

    // A version the controller does not know (it restarted, say): a full snapshot.
    let stale = ConfigView {
        version: 99,
        ..ConfigView::default()
    };
    let mut sub = subscribe(client, stale);
    let (view, update) = next(&mut sub).await;
    assert_eq!(update.base_version, 0);
    assert_eq!(view.resources.len(), 101);
    let _ = sub.disconnect.send(());
}

#[tokio::test]
async fn a_restarted_controller_sends_a_snapshot_even_at_the_same_version_number() {
    // Before the restart: a DENY, then a change elsewhere (version 2).
    let before = Arc::new(Distributor::default());
    before.publish(vec![istio("AuthorizationPolicy", "deny-legacy")]);
    before.publish(vec![
        istio("AuthorizationPolicy", "deny-legacy"),
        workload("w0", "n0"),
    ]);
    let mut sub = subscribe(serve(before.clone()).await, ConfigView::default());
    let (_, first) = next(&mut sub).await;
    assert_eq!(first.version, 2);
    sub.disconnect.send(()).unwrap();
    let view = sub.done.await.unwrap();
    assert_eq!(view.epoch, before.epoch());

    // The new run numbers its own history: by version 3 it has the DENY and another
    // workload. A delta "since 2" of the new run (only w1) on top of the old view would be
    // applied to the wrong base; the epoch makes it a snapshot instead.
    let after = Arc::new(Distributor::default());
    assert_ne!(after.epoch(), before.epoch());
    after.publish(vec![workload("w1", "n0")]);
    after.publish(vec![workload("w1", "n0")]);
    after.publish(vec![
        istio("AuthorizationPolicy", "deny-legacy"),
        workload("w1", "n0"),
    ]);
    let mut sub = subscribe(serve(after.clone()).await, view);
    let (view, update) = next(&mut sub).await;
    assert_eq!(update.base_version, 0, "a snapshot of the new epoch");
    assert_eq!(view.epoch, after.epoch());
    let kept: Vec<&str> = view.resources.keys().map(|k| k.2.as_str()).collect();
    assert_eq!(kept, ["deny-legacy", "w1"], "w0 is gone, the DENY is there");
    let _ = sub.disconnect.send(());
}

/// The controller's metrics tell what `ambitctl status` does: the version, subscribers by
/// role, those behind or refusing, how long pushes took, and what validation refused.
#[tokio::test]
async fn metrics_follow_subscribers_and_validation() {
    use mesh_api::common::Condition;
    use mesh_controller::{
        admin::{Report, ResourceReport},
        metrics::Metrics,
    };
    let sample = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let distributor = Arc::new(Distributor::default());
    let metrics = Metrics::new(distributor.pushes.clone());
    distributor.publish(vec![workload("a", "n0")]);
    let mut sub = subscribe(serve(distributor.clone()).await, ConfigView::default());
    next(&mut sub).await;
    wait_for_status(&distributor, |s| s.acked == 1).await;
    let report = Report {
        resources: vec![ResourceReport {
            kind: "AuthorizationPolicy".to_owned(),
            namespace: "shop".to_owned(),
            name: "broken".to_owned(),
            conditions: vec![Condition {
                type_: "Accepted".to_owned(),
                status: "False".to_owned(),
                reason: "InvalidIpBlock".to_owned(),
                ..Condition::default()
            }],
        }],
        ..Report::default()
    };
    let text = metrics.render(&distributor, &report);
    assert_eq!(sample(&text, "ambit_controller_config_version"), Some(1.0));
    assert_eq!(
        sample(&text, "ambit_controller_subscribers{role=\"node\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "ambit_controller_subscribers{role=\"waypoint\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "ambit_controller_subscribers_behind{role=\"node\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "ambit_controller_push_duration_seconds_count"),
        Some(1.0),
        "{text}"
    );
    // Served without authentication here: the subscriber is "anonymous".
    let acked = "ambit_controller_subscriber_acked_version{role=\"node\",subscriber=\"anonymous\"}";
    assert_eq!(sample(&text, acked), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "ambit_controller_rejected_resources{kind=\"AuthorizationPolicy\",reason=\"InvalidIpBlock\"}"
        ),
        Some(1.0)
    );
    assert!(text.contains("istio_build{component=\"pilot\""), "{text}");

    // A poisoned update is refused: the subscriber is behind and refusing until the fix.
    distributor.publish(vec![workload("a", "n0"), workload("poison", "n0")]);
    wait_for_status(&distributor, |s| s.nack.is_some()).await;
    let text = metrics.render(&distributor, &Report::default());
    assert_eq!(
        sample(&text, "ambit_controller_subscribers_behind{role=\"node\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "ambit_controller_subscribers_refusing{role=\"node\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, acked), Some(1.0), "it still runs version 1");
    assert!(
        !text.contains("ambit_controller_rejected_resources{"),
        "a report without refusals clears them: {text}"
    );
    let _ = sub.disconnect.send(());
}
