//! Workload certificates for the service accounts of this node's enrolled pods: requested
//! from the controller's CA (the key is made here and never leaves the node), cached, renewed
//! at half-life, retried with backoff, and kept while still valid when renewal fails.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use mesh_core::{Identity, ca_client::CaClient, tls::key_ids};
use serde::Serialize;
use tokio::task::JoinHandle;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

pub use mesh_core::tls::Issued;

#[derive(Clone, Debug, Serialize)]
pub struct CertificateView {
    pub identity: String,
    pub not_after_unix: u64,
    pub renew_at_unix: u64,
    /// Key id of the root that signed it: during a root rotation, which root is in use.
    pub signed_by: Option<String>,
    /// Key ids of the roots its peers are checked against (several during a rotation).
    pub roots: Vec<String>,
}

pub struct CertificateStore {
    ca: CaClient,
    lifetime: Duration,
    issued: RwLock<HashMap<Identity, Arc<Issued>>>,
    /// One renewal task per identity in use.
    tasks: std::sync::Mutex<HashMap<Identity, JoinHandle<()>>>,
    /// Wakes connections waiting for a pod's first certificate.
    issued_changed: tokio::sync::Notify,
}

impl CertificateStore {
    pub fn new(ca: CaClient, lifetime: Duration) -> Arc<Self> {
        Arc::new(Self {
            ca,
            lifetime,
            issued: RwLock::default(),
            tasks: Default::default(),
            issued_changed: tokio::sync::Notify::new(),
        })
    }

    /// The current certificate for `identity`, if one was issued and has not expired.
    pub fn get(&self, identity: &Identity) -> Option<Arc<Issued>> {
        let issued = self
            .issued
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(identity)
            .cloned()?;
        (!issued.cert.is_expired(SystemTime::now())).then_some(issued)
    }

    /// The certificate for `identity`, waiting up to `timeout` for it to be issued: a pod's
    /// first connections right after it joins the mesh wait for its certificate rather than
    /// fail.
    pub async fn wait_for(&self, identity: &Identity, timeout: Duration) -> Option<Arc<Issued>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.issued_changed.notified();
            if let Some(issued) = self.get(identity) {
                return Some(issued);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.get(identity);
            }
        }
    }

    /// Keeps a certificate for each of `identities`, and drops the others.
    pub fn retain(self: &Arc<Self>, identities: &[Identity]) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|identity, task| {
            let keep = identities.contains(identity);
            if !keep {
                task.abort();
                self.issued
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(identity);
            }
            keep
        });
        for identity in identities {
            if !tasks.contains_key(identity) {
                let store = self.clone();
                let id = identity.clone();
                tasks.insert(
                    identity.clone(),
                    tokio::spawn(async move { store.keep_renewed(id).await }),
                );
            }
        }
    }

    /// Whether every one of `identities` has a valid certificate.
    pub fn has_all(&self, identities: &[Identity]) -> bool {
        identities.iter().all(|id| self.get(id).is_some())
    }

    pub fn view(&self) -> Vec<CertificateView> {
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        let mut all: Vec<_> = self
            .issued
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|i| CertificateView {
                identity: i.cert.identity.to_string(),
                not_after_unix: unix(i.cert.not_after),
                renew_at_unix: unix(i.cert.renew_at()),
                signed_by: i.cert.chain.first().and_then(|l| key_ids(l).authority),
                roots: i
                    .cert
                    .roots
                    .iter()
                    .filter_map(|r| key_ids(r).subject)
                    .collect(),
            })
            .collect();
        all.sort_by(|a, b| a.identity.cmp(&b.identity));
        all
    }

    async fn keep_renewed(&self, identity: Identity) {
        let mut retry = FIRST_RETRY;
        loop {
            match self.issue(&identity).await {
                Ok(issued) => {
                    let renew_at = issued.cert.renew_at();
                    tracing::info!(%identity, "workload certificate issued");
                    self.issued
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(identity.clone(), Arc::new(issued));
                    self.issued_changed.notify_waiters();
                    retry = FIRST_RETRY;
                    let wait = renew_at
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    // The current certificate, if any, stays in use until it expires.
                    tracing::warn!(%identity, %error, retry_in_ms = retry.as_millis() as u64, "certificate request failed");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    async fn issue(&self, identity: &Identity) -> Result<Issued, String> {
        let cert = self
            .ca
            .issue(identity, self.lifetime)
            .await
            .map_err(|e| e.to_string())?;
        Issued::new(cert).map_err(|e| e.to_string())
    }
}

impl Drop for CertificateStore {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            task.abort();
        }
    }
}
