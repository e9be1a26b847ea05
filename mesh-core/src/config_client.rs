//! The subscriber side of the controller's configuration stream (node agents, waypoints):
//! keep a [`ConfigView`] current, accepting each update only if the subscriber's own checks
//! pass. A refused update is NACKed with the reason and the previous view stays in force; a
//! reconnect resumes from the view's version, so the controller sends only what changed.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::config_pb::{
    Ack, Nack, Resource, Role, Subscribe, SubscriberMessage, Update,
    config_service_client::ConfigServiceClient, subscriber_message::Message,
};

/// (kind, namespace, name).
pub type Key = (String, String, String);

/// The configuration a subscriber holds, at a version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigView {
    /// The controller run that numbered `version` (see `Update.epoch`).
    pub epoch: u64,
    pub version: u64,
    pub resources: BTreeMap<Key, Resource>,
    /// Kinds the subscriber keeps in a store of its own, from each applied [`Update`]: the
    /// view holds no copy of them (a node agent's workloads, the bulk of what it is sent).
    pub kept_elsewhere: &'static [&'static str],
}

impl ConfigView {
    /// A view that leaves resources of `kinds` to the subscriber's own store.
    pub fn keeping_out(kinds: &'static [&'static str]) -> Self {
        ConfigView {
            kept_elsewhere: kinds,
            ..ConfigView::default()
        }
    }

    /// Applies `update` in place if `accept` approves the result; otherwise leaves the view
    /// exactly as it was and returns why. Costs what the update touches, not the whole view
    /// (plus what `accept` itself looks at).
    pub fn apply(
        &mut self,
        update: &Update,
        accept: impl FnOnce(&ConfigView) -> Result<(), String>,
    ) -> Result<(), String> {
        if update.base_version != 0 && update.epoch != self.epoch {
            return Err(format!(
                "update {} is a delta in epoch {:x}, but this subscriber's version is of epoch {:x}",
                update.version, update.epoch, self.epoch
            ));
        }
        if update.base_version != 0 && update.base_version != self.version {
            return Err(format!(
                "update {} is a delta on version {}, but this subscriber has version {}",
                update.version, update.base_version, self.version
            ));
        }
        if update.upserts.iter().any(|r| r.key.is_none()) {
            return Err("a resource without a key".to_owned());
        }
        let (previous_epoch, previous_version) = (self.epoch, self.version);
        // What to put back if the result is refused.
        let mut undo: Vec<(Key, Option<Resource>)> = Vec::new();
        let snapshot = (update.base_version == 0).then(|| std::mem::take(&mut self.resources));
        let kept_elsewhere = self.kept_elsewhere;
        for resource in &update.upserts {
            let k = resource.key.clone().expect("checked above");
            if kept_elsewhere.contains(&k.kind.as_str()) {
                continue;
            }
            let key = (k.kind, k.namespace, k.name);
            let old = self.resources.insert(key.clone(), resource.clone());
            if snapshot.is_none() {
                undo.push((key, old));
            }
        }
        for k in &update.removes {
            if kept_elsewhere.contains(&k.kind.as_str()) {
                continue;
            }
            let key = (k.kind.clone(), k.namespace.clone(), k.name.clone());
            if let Some(old) = self.resources.remove(&key)
                && snapshot.is_none()
            {
                undo.push((key, Some(old)));
            }
        }
        self.version = update.version;
        self.epoch = update.epoch;
        if let Err(error) = accept(self) {
            self.version = previous_version;
            self.epoch = previous_epoch;
            match snapshot {
                Some(resources) => self.resources = resources,
                None => {
                    for (key, old) in undo.into_iter().rev() {
                        match old {
                            Some(resource) => self.resources.insert(key, resource),
                            None => self.resources.remove(&key),
                        };
                    }
                }
            }
            return Err(error);
        }
        Ok(())
    }
}

/// Subscribes as `role` and follows the stream until it ends or fails, keeping `view`
/// current. `accept` judges each candidate view (the subscriber's own validation); `applied`
/// is told of each update that took effect. The caller reconnects with the same `view`.
pub async fn follow(
    client: &mut ConfigServiceClient<Channel>,
    role: Role,
    token: Option<&str>,
    view: &mut ConfigView,
    mut accept: impl FnMut(&ConfigView) -> Result<(), String>,
    mut applied: impl FnMut(&ConfigView, &Update),
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let subscribe = Message::Subscribe(Subscribe {
        role: role as i32,
        resume_from: view.version,
        build: build_name(role),
        epoch: view.epoch,
    });
    let send = |message| SubscriberMessage {
        message: Some(message),
    };
    tx.send(send(subscribe))
        .await
        .map_err(|_| tonic::Status::cancelled("stream closed"))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::internal("token is not a valid header value"))?;
        request.metadata_mut().insert("authorization", bearer);
    }
    let mut updates = client.stream(request).await?.into_inner();
    // The controller answers a Subscribe at once (with a snapshot, or an empty delta); one
    // that does not is stuck or is not a controller: reconnect elsewhere or later.
    let first = tokio::time::timeout(FIRST_UPDATE_WAIT, updates.message())
        .await
        .map_err(|_| {
            tonic::Status::deadline_exceeded(format!(
                "no configuration within {FIRST_UPDATE_WAIT:?} of subscribing"
            ))
        })??;
    let mut next = first;
    while let Some(update) = next {
        let answer = match view.apply(&update, &mut accept) {
            Ok(()) => {
                applied(view, &update);
                Message::Ack(Ack {
                    version: update.version,
                })
            }
            Err(error) => Message::Nack(Nack {
                version: update.version,
                error,
            }),
        };
        tx.send(send(answer))
            .await
            .map_err(|_| tonic::Status::cancelled("stream closed"))?;
        next = updates.message().await?;
    }
    Ok(())
}

/// How long a subscriber waits for the first update after subscribing.
const FIRST_UPDATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The subscriber's program and version, as `ambitctl version` lists them (mesh-core is
/// built at the same version as the agent and the waypoint).
fn build_name(role: Role) -> String {
    let program = match role {
        Role::Waypoint => "mesh-waypoint",
        _ => "mesh-node",
    };
    format!("{program} {}", env!("CARGO_PKG_VERSION"))
}
