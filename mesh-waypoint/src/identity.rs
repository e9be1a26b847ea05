//! The waypoint's own certificate (its service account's SPIFFE identity) from the
//! controller's CA: asked for at start, renewed at half-life, retried with backoff, and kept
//! while still valid when renewal fails. Without a valid certificate the waypoint serves and
//! sends nothing: HBONE needs it both ways.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use mesh_core::{
    Identity,
    ca_client::CaClient,
    tls::{self, WorkloadCertificate},
};

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

pub use mesh_core::tls::Issued;

pub struct Certificates {
    pub identity: Identity,
    issued: RwLock<Option<Arc<Issued>>>,
    changed: tokio::sync::Notify,
}

impl Certificates {
    pub fn new(identity: Identity) -> Arc<Self> {
        Arc::new(Certificates {
            identity,
            issued: RwLock::new(None),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// The certificate, unless there is none yet or it expired.
    pub fn current(&self) -> Option<Arc<Issued>> {
        let issued = self
            .issued
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        (!issued.cert.is_expired(SystemTime::now())).then_some(issued)
    }

    /// Waits up to `timeout` for a certificate.
    pub async fn wait(&self, timeout: Duration) -> Option<Arc<Issued>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if let Some(issued) = self.current() {
                return Some(issued);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.current();
            }
        }
    }

    fn set(&self, cert: WorkloadCertificate) -> Result<(), tls::Error> {
        let issued = Issued::new(cert)?;
        *self.issued.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(issued));
        self.changed.notify_waiters();
        Ok(())
    }

    /// Keeps a certificate issued, forever.
    pub async fn keep_issued(self: Arc<Self>, ca: CaClient, lifetime: Duration) {
        let mut retry = FIRST_RETRY;
        loop {
            match ca.issue(&self.identity, lifetime).await {
                Ok(cert) => {
                    let renew_at = cert.renew_at();
                    match self.set(cert) {
                        Ok(()) => {
                            tracing::info!(identity = %self.identity, "certificate issued");
                            retry = FIRST_RETRY;
                            let wait = renew_at
                                .duration_since(SystemTime::now())
                                .unwrap_or_default();
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        Err(error) => {
                            tracing::error!(%error, "the CA's certificate is unusable")
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, identity = %self.identity, "certificate request failed; retrying")
                }
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(MAX_RETRY);
        }
    }
}
