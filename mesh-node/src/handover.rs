//! Restart and upgrade with nothing lost: a new agent takes the running one's listening
//! sockets over a Unix socket, so no connection is refused and none waiting in a backlog is
//! dropped, then the old one drains what it carries.
//!
//! The conversation, started by the new agent (the successor):
//! 1. `hello`: each learns the other's build; the successor learns the predecessor's cgroup,
//!    whose sockets the kernel programs must keep leaving alone while it drains.
//! 2. `endpoints`: the node's metrics, readiness and admin listeners move at once (they share
//!    the node's address), so the kubelet's probe reaches the successor, not ready yet.
//! 3. `pods`: once the successor has its configuration and its pods' certificates, every
//!    enrolled pod's listeners move, one message per pod. The predecessor then stops
//!    accepting, sends GOAWAY on its HBONE connections and drains.
//!
//! If the conversation breaks before step 3 completes, the predecessor keeps everything and
//! goes on; the successor opens its own listeners once the predecessor's are gone.

mod wire;

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::admin::Endpoint;

/// Mismatched builds still hand over; a different protocol does not.
const PROTOCOL: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hand-over socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hand-over from pid {pid}: {source}")]
    Conversation { pid: u32, source: std::io::Error },
    #[error("hand-over from pid {pid}: {reason}")]
    Refused { pid: u32, reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
enum Ask {
    Hello {
        protocol: u32,
        build: String,
    },
    Endpoints,
    Pods,
    /// Every pod's listeners arrived: the predecessor may stop accepting.
    Taken,
    /// `mesh-node --uninstall`: release every pod, remove the programs and pins, drain.
    Release,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
enum Answer {
    Hello {
        protocol: u32,
        build: String,
        pid: u32,
        cgroup_id: u64,
    },
    /// The node's endpoint listeners, attached in this order.
    Endpoints {
        endpoints: Vec<Endpoint>,
    },
    /// One pod's listeners, attached in this order.
    Pod {
        key: String,
        netns_cookie: u64,
        listeners: Vec<SocketAddr>,
    },
    /// Every pod was sent; the predecessor drains from now on.
    Done {
        pods: usize,
    },
    /// Every pod was released and the pins removed; the agent drains from now on.
    Released {
        pods: usize,
    },
    Refused {
        reason: String,
    },
}

/// This build, as the hand-over names it: the version and the binary's size and time.
pub fn build() -> String {
    let binary = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            format!("{} bytes, built {modified}", m.len())
        })
        .unwrap_or_default();
    format!("mesh-node {} ({binary})", env!("CARGO_PKG_VERSION"))
}

/// The running agent this one takes over from.
pub struct Predecessor {
    channel: wire::Channel,
    pub pid: u32,
    pub build: String,
    /// Its cgroup v2 id: its sockets in pods must not be captured while it drains.
    pub cgroup_id: u64,
}

impl Predecessor {
    /// Asks the agent serving `path`, if any, to hand over.
    pub fn find(path: &Path) -> Result<Option<Self>, Error> {
        let socket = |source| Error::Socket {
            path: path.to_owned(),
            source,
        };
        let Some(channel) = wire::Channel::connect(path).map_err(socket)? else {
            return Ok(None);
        };
        channel
            .send(
                &Ask::Hello {
                    protocol: PROTOCOL,
                    build: build(),
                },
                &[],
            )
            .map_err(socket)?;
        match channel.recv().map_err(socket)? {
            (
                Answer::Hello {
                    protocol,
                    build,
                    pid,
                    cgroup_id,
                },
                _,
            ) if protocol == PROTOCOL => Ok(Some(Self {
                channel,
                pid,
                build,
                cgroup_id,
            })),
            (Answer::Refused { reason }, _) => Err(Error::Refused { pid: 0, reason }),
            (other, _) => Err(Error::Refused {
                pid: 0,
                reason: format!("unexpected answer to hello: {other:?}"),
            }),
        }
    }

    fn error(&self, source: std::io::Error) -> Error {
        Error::Conversation {
            pid: self.pid,
            source,
        }
    }

    /// Takes the node's endpoint listeners; the predecessor stops serving them.
    pub fn take_endpoints(&self) -> Result<Vec<(Endpoint, std::net::TcpListener)>, Error> {
        self.channel
            .send(&Ask::Endpoints, &[])
            .map_err(|e| self.error(e))?;
        match self.channel.recv().map_err(|e| self.error(e))? {
            (Answer::Endpoints { endpoints }, fds) if endpoints.len() == fds.len() => Ok(endpoints
                .into_iter()
                .zip(fds.into_iter().map(std::net::TcpListener::from))
                .collect()),
            (other, _) => Err(Error::Refused {
                pid: self.pid,
                reason: format!("unexpected answer to endpoints: {other:?}"),
            }),
        }
    }

    /// Asks the running agent to release every pod and remove its programs and pins (it then
    /// drains what it carries and waits to be stopped); how many pods it released.
    pub fn release(self) -> Result<usize, Error> {
        self.channel
            .send(&Ask::Release, &[])
            .map_err(|e| self.error(e))?;
        match self.channel.recv().map_err(|e| self.error(e))? {
            (Answer::Released { pods }, _) => Ok(pods),
            (Answer::Refused { reason }, _) => Err(Error::Refused {
                pid: self.pid,
                reason,
            }),
            (other, _) => Err(Error::Refused {
                pid: self.pid,
                reason: format!("unexpected answer to release: {other:?}"),
            }),
        }
    }

    /// Takes every enrolled pod's listeners; from here on the predecessor drains.
    pub fn take_pods(self) -> Result<Inherited, Error> {
        self.channel
            .send(&Ask::Pods, &[])
            .map_err(|e| self.error(e))?;
        let mut inherited = Inherited::default();
        loop {
            match self.channel.recv().map_err(|e| self.error(e))? {
                (
                    Answer::Pod {
                        key,
                        netns_cookie,
                        listeners,
                    },
                    fds,
                ) if listeners.len() == fds.len() => {
                    inherited.pods.insert(
                        key,
                        InheritedPod {
                            netns_cookie,
                            listeners: listeners.into_iter().zip(fds).collect(),
                        },
                    );
                }
                (Answer::Done { pods }, _) if pods == inherited.pods.len() => {
                    self.channel
                        .send(&Ask::Taken, &[])
                        .map_err(|e| self.error(e))?;
                    return Ok(inherited);
                }
                (other, _) => {
                    return Err(Error::Refused {
                        pid: self.pid,
                        reason: format!("unexpected answer while taking pods: {other:?}"),
                    });
                }
            }
        }
    }
}

/// Listening sockets taken from the predecessor, by pod, until enrollment claims them.
/// What is left unclaimed is closed when this is dropped.
#[derive(Default)]
pub struct Inherited {
    pods: HashMap<String, InheritedPod>,
}

struct InheritedPod {
    netns_cookie: u64,
    listeners: Vec<(SocketAddr, OwnedFd)>,
}

impl Inherited {
    pub fn pods(&self) -> usize {
        self.pods.len()
    }

    /// Listeners no enrollment has claimed (closed when this is dropped).
    pub fn unclaimed(&self) -> usize {
        self.pods.values().map(|pod| pod.listeners.len()).sum()
    }

    /// Pod `key`'s listener on `addr`, if the predecessor had it open in the namespace the
    /// pod has now (`netns_cookie`); checked on the socket itself, not only on its word.
    pub fn take(
        &mut self,
        key: &str,
        netns_cookie: u64,
        addr: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let pod = self.pods.get_mut(key)?;
        if pod.netns_cookie != netns_cookie {
            return None;
        }
        let at = pod.listeners.iter().position(|(a, _)| *a == addr)?;
        let (_, fd) = pod.listeners.swap_remove(at);
        let listener = std::net::TcpListener::from(fd);
        let actual_cookie = crate::netns::netns_cookie(&listener).ok();
        let actual_addr = listener.local_addr().ok();
        if actual_cookie != Some(netns_cookie) || actual_addr != Some(addr) {
            tracing::warn!(pod = key, %addr, ?actual_addr, "an inherited listener is not what it was said to be; opening a new one");
            return None;
        }
        Some(listener)
    }
}

/// What an agent offers its successor.
pub struct Offer {
    /// The node's endpoint listeners (a duplicate of each) and the tasks serving them; taken
    /// once.
    pub endpoints: Mutex<Vec<(Endpoint, OwnedFd, tokio::task::AbortHandle)>>,
    /// Asks the enrollment loop for the pods' listeners, or to release them.
    pub requests: mpsc::Sender<Request>,
    pub cgroup_id: u64,
}

/// One enrolled pod's listening sockets, duplicated: they outlive the agent's own copies.
pub struct PodListeners {
    pub key: String,
    pub netns_cookie: u64,
    pub listeners: Vec<(SocketAddr, OwnedFd)>,
}

/// What the enrollment loop is asked by another agent process.
pub enum Request {
    /// Step 3: it answers with every pod's listeners, then learns whether they reached the
    /// successor (only then does it stop accepting and drain).
    Pods {
        reply: oneshot::Sender<Vec<PodListeners>>,
        sent: oneshot::Receiver<bool>,
    },
    /// Uninstall: it releases every pod and removes the pins, answering how many pods it
    /// released (or why it could not), then drains.
    Release {
        done: oneshot::Sender<Result<usize, String>>,
    },
}

/// Duplicates a listening socket the agent holds (its copy stays open until it drops it).
pub fn duplicate(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: `fd` is a listener the caller owns and keeps open for this call.
    unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
}

/// Serves successors at `path` on a thread of its own, until one has taken the pods.
pub fn serve(path: &Path, offer: Arc<Offer>) -> Result<(), Error> {
    let server = wire::Server::bind(path).map_err(|source| Error::Socket {
        path: path.to_owned(),
        source,
    })?;
    std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || {
            loop {
                let channel = match server.accept() {
                    Ok(channel) => channel,
                    Err(error) => {
                        tracing::warn!(%error, "hand-over socket failed; no successor can take over without a gap");
                        return;
                    }
                };
                match converse(&channel, &offer) {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, "hand-over abandoned; keeping what is not handed over")
                    }
                }
            }
        })
        .map_err(|source| Error::Socket {
            path: path.to_owned(),
            source,
        })?;
    Ok(())
}

/// One successor's conversation; `Ok(true)` once the pods are handed over.
fn converse(channel: &wire::Channel, offer: &Offer) -> std::io::Result<bool> {
    loop {
        let ask = match channel.recv::<Ask>() {
            Ok((ask, _)) => ask,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        };
        match ask {
            Ask::Hello { protocol, build } if protocol == PROTOCOL => {
                tracing::info!(other = %build, "another agent process asks to take over or release");
                channel.send(
                    &Answer::Hello {
                        protocol: PROTOCOL,
                        build: self::build(),
                        pid: std::process::id(),
                        cgroup_id: offer.cgroup_id,
                    },
                    &[],
                )?;
            }
            Ask::Hello { protocol, .. } => {
                let reason = format!("hand-over protocol {protocol} is not {PROTOCOL}");
                channel.send(&Answer::Refused { reason }, &[])?;
                return Ok(false);
            }
            Ask::Endpoints => {
                let mut held = offer.endpoints.lock().unwrap_or_else(|p| p.into_inner());
                let names: Vec<Endpoint> = held.iter().map(|(e, _, _)| *e).collect();
                let fds: Vec<BorrowedFd<'_>> = held.iter().map(|(_, fd, _)| fd.as_fd()).collect();
                channel.send(&Answer::Endpoints { endpoints: names }, &fds)?;
                for (endpoint, _, task) in held.drain(..) {
                    task.abort();
                    tracing::info!(?endpoint, "endpoint handed over");
                }
            }
            Ask::Pods => return hand_over_pods(channel, offer),
            Ask::Release => return release(channel, offer),
            Ask::Taken => return Ok(false),
        }
    }
}

fn hand_over_pods(channel: &wire::Channel, offer: &Offer) -> std::io::Result<bool> {
    let (reply, listeners) = oneshot::channel();
    let (confirm, sent) = oneshot::channel();
    let gone = || std::io::Error::other("the enrollment loop has stopped");
    offer
        .requests
        .blocking_send(Request::Pods { reply, sent })
        .map_err(|_| gone())?;
    let pods = listeners.blocking_recv().map_err(|_| gone())?;
    let result = (|| {
        for pod in &pods {
            let addrs: Vec<SocketAddr> = pod.listeners.iter().map(|(a, _)| *a).collect();
            let fds: Vec<BorrowedFd<'_>> = pod.listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
            channel.send(
                &Answer::Pod {
                    key: pod.key.clone(),
                    netns_cookie: pod.netns_cookie,
                    listeners: addrs,
                },
                &fds,
            )?;
        }
        channel.send(&Answer::Done { pods: pods.len() }, &[])?;
        // Sent is not received: the successor could die with the sockets in its queue.
        match channel.recv::<Ask>()? {
            (Ask::Taken, _) => Ok(()),
            (other, _) => Err(std::io::Error::other(format!(
                "expected the successor to confirm, got {other:?}"
            ))),
        }
    })();
    let _ = confirm.send(result.is_ok());
    result.map(|()| true)
}

fn release(channel: &wire::Channel, offer: &Offer) -> std::io::Result<bool> {
    let (done, result) = oneshot::channel();
    let gone = || std::io::Error::other("the enrollment loop has stopped");
    offer
        .requests
        .blocking_send(Request::Release { done })
        .map_err(|_| gone())?;
    match result.blocking_recv().map_err(|_| gone())? {
        Ok(pods) => channel.send(&Answer::Released { pods }, &[])?,
        Err(reason) => channel.send(&Answer::Refused { reason }, &[])?,
    }
    Ok(true)
}
