//! The controller's readiness (`GET /healthz/ready` on :15021, what the Deployment's probe
//! asks): ready once its certificate and configuration port is bound and, where it serves
//! configuration, a whole configuration has been published, so that a node agent that
//! connects never starts from a partial one. Until then it answers 503 with what it waits for.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};

/// What the controller still waits for; `None` once it is ready.
#[derive(Clone)]
pub struct Readiness {
    waiting: Arc<Mutex<Option<String>>>,
}

impl Readiness {
    pub fn new(waiting: &str) -> Self {
        Readiness {
            waiting: Arc::new(Mutex::new(Some(waiting.to_owned()))),
        }
    }

    pub fn waiting_for(&self, what: impl Into<String>) {
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner()) = Some(what.into());
    }

    pub fn ready(&self) {
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// `Err(what it waits for)` until ready.
    pub fn check(&self) -> Result<(), String> {
        match &*self.waiting.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(what) => Err(what.clone()),
        }
    }

    /// Binds now (a port conflict fails start-up) and serves in the background.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<()> {
        let readiness = self.clone();
        mesh_core::endpoint::serve(addr, move |req| {
            let (status, body) = match (req.uri().path(), readiness.check()) {
                ("/healthz/ready", Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
                ("/healthz/ready", Err(what)) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("waiting: {what}\n"),
                ),
                _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
            };
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .expect("static response")
        })
        .await
    }
}
