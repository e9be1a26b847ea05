//! The CA in force, and following its directory so that a root rotation needs no restart: when
//! an operator rewrites `root-cert.pem` (the trust bundle) or `root-key.pem`, the new CA
//! replaces the old one for every later certificate, the serving certificate is re-issued,
//! and agents receive the new bundle at their next renewal. A change that does not load (a
//! half-written file, a key that is not the first root's) is reported and the CA in force
//! stays.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::watch;

use super::CertificateAuthority;

/// The CA in force; `changed()` wakes when a rotation step replaced it.
pub type CurrentCa = watch::Receiver<Arc<CertificateAuthority>>;

/// How often the CA directory is looked at: a rotation step is an operator's edit, and agents
/// take it up only at their next renewal anyway.
const POLL: Duration = Duration::from_secs(2);

/// A CA that is not followed (Kubernetes mode, where a new Secret takes a restart; tests):
/// its `changed()` fails at once, as no one can replace it.
pub fn fixed(ca: CertificateAuthority) -> CurrentCa {
    watch::channel(Arc::new(ca)).1
}

/// Follows `dir`, replacing the CA in `current` when its files change and load. Returns the
/// receiver; the follower runs until the process ends.
pub fn follow_dir(dir: PathBuf, ca: CertificateAuthority) -> CurrentCa {
    let trust_domain = ca.trust_domain().to_owned();
    let (sender, receiver) = watch::channel(Arc::new(ca));
    tokio::spawn(async move {
        let mut seen = stamps(&dir);
        loop {
            tokio::time::sleep(POLL).await;
            let now = stamps(&dir);
            if now == seen {
                continue;
            }
            // Read only once the files have stopped changing for one period: an editor or
            // `cp` may still be writing them.
            tokio::time::sleep(POLL).await;
            if stamps(&dir) != now {
                continue;
            }
            seen = now;
            match CertificateAuthority::load(&dir, &trust_domain) {
                Ok(Some(ca)) => {
                    let current = sender.borrow().clone();
                    if ca.bundle() == current.bundle() && ca.root() == current.root() {
                        continue;
                    }
                    tracing::info!(
                        signing_root = %key_id(ca.root()),
                        bundle = ?ca.bundle().iter().map(key_id).collect::<Vec<_>>(),
                        "CA changed: later certificates are signed by this root and carry this bundle"
                    );
                    sender.send_replace(Arc::new(ca));
                }
                Ok(None) => tracing::error!(
                    dir = %dir.display(),
                    "CA files are gone; the CA in force stays"
                ),
                Err(error) => tracing::error!(
                    %error,
                    "CA files changed but do not load; the CA in force stays"
                ),
            }
        }
    });
    receiver
}

/// Modification time and length of each CA file (`None` where one is missing).
fn stamps(dir: &Path) -> Vec<Option<(SystemTime, u64)>> {
    CertificateAuthority::files(dir)
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// A root as agents' `/certs` names it (its subject key id), so log lines and agents' views
/// can be matched.
fn key_id(root: &rustls::pki_types::CertificateDer<'_>) -> String {
    mesh_core::tls::key_ids(root).subject.unwrap_or_default()
}
