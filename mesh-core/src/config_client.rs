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
    pub version: u64,
    pub resources: BTreeMap<Key, Resource>,
}

impl ConfigView {
    /// This view with `update` applied, or why it does not apply.
    pub fn applied(&self, update: &Update) -> Result<ConfigView, String> {
        let mut next = match update.base_version {
            0 => ConfigView::default(),
            base if base == self.version => self.clone(),
            base => {
                return Err(format!(
                    "update {} is a delta on version {base}, but this subscriber has version {}",
                    update.version, self.version
                ));
            }
        };
        for resource in &update.upserts {
            let key = resource.key.clone().ok_or("a resource without a key")?;
            next.resources
                .insert((key.kind, key.namespace, key.name), resource.clone());
        }
        for key in &update.removes {
            next.resources
                .remove(&(key.kind.clone(), key.namespace.clone(), key.name.clone()));
        }
        next.version = update.version;
        Ok(next)
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
    while let Some(update) = updates.message().await? {
        let answer = match view.applied(&update).and_then(|next| {
            accept(&next)?;
            Ok(next)
        }) {
            Ok(next) => {
                *view = next;
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
    }
    Ok(())
}
