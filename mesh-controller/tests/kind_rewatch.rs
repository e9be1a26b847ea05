//! A kind's watch that starts over (its CRD answered 404 for a moment, then is served again)
//! keeps the objects already listed until the new list is whole: an AuthorizationPolicy must
//! never be lifted from the nodes because its watch restarted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use kube::{
    api::DynamicObject,
    runtime::watcher::{Error, Event},
};

mod common;

use mesh_controller::source::{
    ConfigSource as _,
    kube::{EventStream, KindState, KubeSource},
};

const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bookinfo}
"#;

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: bookinfo}
spec: {action: DENY, rules: [{}]}
"#;

fn policies(source: &mut KubeSource) -> Vec<String> {
    let (set, errors) = source.snapshot();
    assert!(errors.is_empty(), "{errors:?}");
    set.authorization_policies()
        .map(|(key, _)| key.name.clone())
        .collect()
}

#[tokio::test]
async fn a_restarted_watch_keeps_what_was_listed_until_the_new_list_is_whole() {
    let objects = common::objects(YAML);
    let client = common::fake_client(&objects).await;
    let namespaces = common::namespaces_shim(&objects);
    let policy: DynamicObject = serde_yaml::from_str(POLICY).unwrap();
    let watches = Arc::new(AtomicUsize::new(0));
    let seen = watches.clone();
    // AuthorizationPolicies: a first watch lists the policy then fails as if the CRD went;
    // the second watch starts its list and never finishes it.
    let shim = move |ar: &kube::api::ApiResource| -> Option<EventStream> {
        if ar.kind != "AuthorizationPolicy" {
            return namespaces(ar);
        }
        let gone: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 404, "reason": "NotFound", "message": "gone"
        }))
        .unwrap();
        let events = match seen.fetch_add(1, Ordering::SeqCst) {
            0 => vec![
                Ok(Event::Init),
                Ok(Event::InitApply(policy.clone())),
                Ok(Event::InitDone),
                Err(Error::WatchFailed(kube::Error::Api(Box::new(gone)))),
            ],
            _ => vec![Ok(Event::Init)],
        };
        Some(
            futures_util::stream::iter(events)
                .chain(futures_util::stream::pending())
                .boxed(),
        )
    };
    let mut source = KubeSource::start_probing(client, shim, Duration::from_millis(100));
    tokio::time::timeout(Duration::from_secs(10), async {
        while watches.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the watch started over");
    let state = source
        .states()
        .into_iter()
        .find(|(kind, _)| kind.ends_with("/AuthorizationPolicy"))
        .unwrap();
    assert_eq!(state.1, KindState::Pending, "relisting");
    assert_eq!(policies(&mut source), ["deny-all"]);
}
