//! `ConfigService` over gRPC: one stream per subscriber, authenticated by the same bearer
//! token as the certificate service (the node is who the token says, never what it claims).

use std::{pin::Pin, sync::Arc};

use mesh_core::config_pb::{
    Role, SubscriberMessage, Update, config_service_server::ConfigService,
    subscriber_message::Message,
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::{Audience, Distributor, Nack, SecretAccess};
use crate::ca_service::{Caller, NodeAuthorizer, authenticate};

pub struct ConfigStreamService {
    pub distributor: Arc<Distributor>,
    /// `None` accepts everyone (tests on loopback only).
    pub authorizer: Option<Arc<dyn NodeAuthorizer>>,
    /// Whether a node's token subscribing as a waypoint reads Gateway Secrets: local mode,
    /// where the waypoints and ingresses of one machine subscribe with their node's token.
    /// With Kubernetes only a gateway's own token does, for its namespace.
    pub nodes_read_secrets: bool,
}

/// How long a new stream may go without its Subscribe.
const SUBSCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

type UpdateStream = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigService for ConfigStreamService {
    type StreamStream = UpdateStream;

    async fn stream(
        &self,
        request: Request<Streaming<SubscriberMessage>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let caller = match &self.authorizer {
            None => None,
            Some(authorizer) => {
                Some(authenticate(&**authorizer, request.metadata(), "config subscription").await?)
            }
        };
        let node = caller
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), ToString::to_string);
        // Set by the listener (`serve::TlsConnection`); absent when served some other way.
        let address = request
            .extensions()
            .get::<Option<std::net::SocketAddr>>()
            .copied()
            .flatten()
            .map(|a| a.ip().to_canonical());
        let mut inbound = request.into_inner();
        // A client that connects and never subscribes holds nothing for long.
        let first = tokio::time::timeout(SUBSCRIBE_WAIT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Subscribe within 10 s"))?;
        let subscribe = match first? {
            Some(SubscriberMessage {
                message: Some(Message::Subscribe(subscribe)),
            }) => subscribe,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be Subscribe",
                ));
            }
        };
        let role = Role::try_from(subscribe.role)
            .ok()
            .filter(|r| *r != Role::Unspecified)
            .ok_or_else(|| Status::invalid_argument("Subscribe.role must be NODE or WAYPOINT"))?;
        // A workload's own token (a waypoint's pod) reads the waypoint's view, not a node's.
        if matches!(caller, Some(Caller::Workload { .. })) && role != Role::Waypoint {
            return Err(Status::permission_denied(format!(
                "{node} may subscribe as a waypoint only"
            )));
        }
        let secrets = match (&caller, &self.authorizer) {
            (
                Some(Caller::Workload {
                    namespace,
                    service_account,
                }),
                Some(authorizer),
            ) => SecretAccess::Gateway {
                namespace: namespace.clone(),
                service_account: service_account.clone(),
                // Asked once per subscription: a grant revoked later takes effect when the
                // gateway reconnects.
                reads_namespace: authorizer.reads_secrets(namespace, service_account).await,
            },
            (Some(Caller::Workload { .. }), None) => SecretAccess::None,
            (Some(Caller::Node(_)), _) if self.nodes_read_secrets => SecretAccess::All,
            (Some(Caller::Node(_)) | None, _) => SecretAccess::None,
        };
        let audience = Audience { role, secrets };
        let (tx, rx) = mpsc::channel(1);
        let distributor = self.distributor.clone();
        tokio::spawn(async move {
            let id = distributor.register(&node, role, &subscribe.build, address);
            if let Err(reason) = serve_subscriber(
                &distributor,
                id,
                &audience,
                (subscribe.epoch, subscribe.resume_from),
                inbound,
                tx,
            )
            .await
            {
                tracing::info!(%node, %reason, "config subscriber left");
            }
            distributor.unregister(id);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends one update at a time and waits for its answer; between changes, waits for the next
/// version (or the subscriber leaving).
async fn serve_subscriber(
    distributor: &Distributor,
    id: u64,
    audience: &Audience,
    (epoch, resume_from): (u64, u64),
    mut inbound: Streaming<SubscriberMessage>,
    tx: mpsc::Sender<Result<Update, Status>>,
) -> Result<(), String> {
    // What the subscriber has: after its first answer, always of this run's epoch.
    let mut epoch = epoch;
    let mut acked = resume_from;
    // A refused version is not sent again; the next one starts from `acked`.
    let mut refused: Option<u64> = None;
    let mut versions = distributor.watch();
    loop {
        let current = *versions.borrow_and_update();
        let pending = refused.is_none_or(|r| current > r);
        let update = pending
            .then(|| distributor.update_for(audience, epoch, acked))
            .flatten();
        let Some(update) = update else {
            tokio::select! {
                changed = versions.changed() => changed.map_err(|_| "controller stopping")?,
                message = inbound.message() => match message {
                    Ok(None) => return Ok(()),
                    Ok(Some(_)) => return Err("a message while no update was pending".into()),
                    Err(status) => return Err(status.to_string()),
                },
            }
            continue;
        };
        let version = update.version;
        let sent = std::time::Instant::now();
        tx.send(Ok(update)).await.map_err(|_| "stream closed")?;
        match inbound.message().await {
            Ok(Some(SubscriberMessage {
                message: Some(Message::Ack(ack)),
            })) if ack.version == version => {
                acked = version;
                epoch = distributor.epoch();
                refused = None;
                distributor.acknowledged(version, sent);
                distributor.set_status(id, |s| {
                    s.acked = version;
                    s.nack = None;
                });
            }
            Ok(Some(SubscriberMessage {
                message: Some(Message::Nack(nack)),
            })) if nack.version == version => {
                tracing::warn!(version, error = %nack.error, "a subscriber refused a configuration update; it keeps its previous one");
                refused = Some(version);
                distributor.set_status(id, |s| {
                    s.nack = Some(Nack {
                        version,
                        error: nack.error.clone(),
                    });
                });
            }
            Ok(None) => return Ok(()),
            Ok(Some(other)) => {
                return Err(format!(
                    "expected an answer to version {version}, got {other:?}"
                ));
            }
            Err(status) => return Err(status.to_string()),
        }
    }
}
