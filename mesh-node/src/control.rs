//! Policies from the controller's configuration stream (`--policy-source controller`) instead
//! of a local directory: the node subscribes as a NODE, turns the PeerAuthentications and
//! AuthorizationPolicies it receives into its policy set, and applies them as the directory
//! watch would (live connections a new policy forbids are closed). It reconnects with backoff
//! and resumes from the version it has; until the first update it keeps what it had (nothing
//! at start: PERMISSIVE, allow all, as without a config directory).

use std::{sync::Arc, time::Duration};

use mesh_core::{
    ca_client::CaClient,
    config_client::{ConfigView, follow},
    config_pb::{Role, resource::Body},
    policy::{LoadError, PolicySet, parse_documents, streamed_document},
};

use crate::{app::State, policy};

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Follows the stream forever.
pub async fn follow_policies(state: Arc<State>, ca: CaClient) {
    let mut view = ConfigView::default();
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = std::sync::Mutex::new(None);
        let (mut client, token) = ca.config_service();
        let token = token.to_owned();
        let result = follow(
            &mut client,
            Role::Node,
            Some(&token),
            &mut view,
            // The policies of an accepted candidate are built once, then applied.
            |candidate| {
                let built = policy_set(candidate, &state.config.root_namespace)?;
                *accepted.lock().unwrap_or_else(|p| p.into_inner()) = Some(built);
                Ok(())
            },
            |_, update| {
                backoff = BACKOFF_MIN;
                let built = accepted.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some((policies, errors)) = built {
                    tracing::info!(
                        version = update.version,
                        "configuration from the controller"
                    );
                    policy::apply(&state, policies, errors);
                }
            },
        )
        .await;
        match result {
            Ok(()) => tracing::warn!("the controller ended the configuration stream; reconnecting"),
            Err(status) => tracing::warn!(%status, "configuration stream failed; reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The policies of `view`. Policies that do not validate are kept and enforced failing
/// closed (their errors are reported); only a body that is not JSON at all refuses the update.
fn policy_set(
    view: &ConfigView,
    root_namespace: &str,
) -> Result<(PolicySet, Vec<LoadError>), String> {
    let mut documents = String::new();
    for ((kind, namespace, name), resource) in &view.resources {
        if kind != "PeerAuthentication" && kind != "AuthorizationPolicy" {
            continue;
        }
        let Some(Body::IstioJson(spec)) = &resource.body else {
            return Err(format!("{kind} {namespace}/{name} has no Istio body"));
        };
        let spec: serde_json::Value = serde_json::from_str(spec)
            .map_err(|e| format!("{kind} {namespace}/{name}: body is not JSON: {e}"))?;
        let document = streamed_document(kind, namespace, name, &spec)
            .map_err(|e| format!("{kind} {namespace}/{name}: {e}"))?;
        documents.push_str(&document);
    }
    let mut set = PolicySet::with_root_namespace(root_namespace);
    let errors = parse_documents("controller", &documents, &mut set);
    Ok((set, errors))
}
