//! A CA root rotation with an overlap, under traffic: the new root is first trusted beside the
//! old one, then it signs, then the old one is dropped, each step by editing the CA directory
//! of a running controller, as an operator would (docs/security.md). Agents take each step up
//! at their next renewal (short lifetimes here). Throughout, new HBONE connections keep being
//! made and one long-lived connection keeps echoing: none may fail. Needs root; run with
//! `cargo xtask test`.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use mesh_controller::ca::CertificateAuthority;
use mesh_core::tls::key_ids;
use mesh_tests::{
    Agent, AgentOptions, Testbed, Topology,
    traffic::{echo_round_trip, echo_server, read_greeting},
};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};

const PORT: u16 = 8080;
/// Workload certificate lifetimes: renewed every 8 s on one node and every 5 s on the other,
/// so each step reaches every agent soon, and never both at once (an unsafe step would show).
const LIFETIME: u64 = 16;
const SERVER_LIFETIME: u64 = 10;

/// Writes a CA file the way a careful operator does: whole, then renamed into place.
fn replace(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&staged, path)?;
    Ok(())
}

fn key_id(pem: &str) -> Result<String> {
    let cert = CertificateDer::from_pem_slice(pem.as_bytes())?;
    key_ids(&cert)
        .subject
        .context("the root has no subject key id")
}

/// Waits until every agent's every certificate satisfies `done` (given its `/certs` entry).
fn wait_certs(
    agents: &[&Agent],
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<()> {
    let all_done = || -> Result<bool> {
        let mut all = true;
        for agent in agents {
            let certs: serde_json::Value = serde_json::from_str(&agent.get(15000, "/certs")?.1)?;
            let certs = certs.as_array().cloned().unwrap_or_default();
            all &= !certs.is_empty() && certs.iter().all(&done);
        }
        Ok(all)
    };
    mesh_tests::sys::wait_until(
        &format!("agents: {what}"),
        Duration::from_secs(4 * LIFETIME),
        Duration::from_millis(250),
        all_done,
    )
}

#[test]
fn a_root_rotates_with_an_overlap_under_traffic() -> Result<()> {
    let tb = Testbed::new(Topology::default())?;
    let controller = tb.start_controller()?;
    let (client, server) = (tb.pod("n0-p0"), tb.pod("n1-p0"));
    for pod in [client, server] {
        tb.set_pod_mode(&pod.name, Some("ambient"))?;
    }
    let options = AgentOptions {
        ca_root: Some(controller.root.clone()),
        cert_lifetime: Some(LIFETIME),
        ..AgentOptions::default()
    };
    let clients = tb.start_agent("n0", &options)?;
    let servers = tb.start_agent(
        "n1",
        &AgentOptions {
            cert_lifetime: Some(SERVER_LIFETIME),
            ..options.clone()
        },
    )?;
    clients.wait_enrolled(&client.key(), true)?;
    servers.wait_enrolled(&server.key(), true)?;
    let _echo = echo_server(server.listen(PORT)?)?;

    let ca_dir = controller
        .root
        .parent()
        .context("root file has a directory")?;
    let (cert_file, key_file) = (ca_dir.join("root-cert.pem"), ca_dir.join("root-key.pem"));
    let old_root = std::fs::read_to_string(&cert_file)?;
    let new = CertificateAuthority::generate("cluster.local")?;
    let (old_id, new_id) = (key_id(&old_root)?, key_id(new.bundle_pem())?);
    let agents = [&clients, &servers];
    wait_certs(&agents, "a certificate from the first root", |c| {
        c["signed_by"] == old_id.as_str()
    })?;

    // Traffic for the whole rotation: new connections in a loop, and one that stays open.
    let stop = Arc::new(AtomicBool::new(false));
    let (made, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut long_lived = client.connect(server.addr(PORT))?;
    read_greeting(&mut long_lived)?;
    let traffic = {
        let (stop, made, failed) = (stop.clone(), made.clone(), failed.clone());
        let (client, target) = (client.clone(), server.addr(PORT));
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let attempt = client
                    .connect(target)
                    .map_err(anyhow::Error::from)
                    .and_then(|mut stream| {
                        read_greeting(&mut stream)?;
                        echo_round_trip(&mut stream, &[7u8; 1024])
                    });
                match attempt {
                    Ok(()) => made.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        errors.push(format!("{error:#}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(20));
            }
            errors
        })
    };
    let mut echo_long_lived = |step: &str| {
        echo_round_trip(&mut long_lived, step.as_bytes())
            .with_context(|| format!("the long-lived connection, after {step}"))
    };

    // 1. The new root is trusted beside the old one, which still signs.
    replace(
        &cert_file,
        &format!("{old_root}{}", new.bundle_pem()),
        0o644,
    )?;
    wait_certs(&agents, "both roots trusted", |c| {
        c["roots"] == serde_json::json!([old_id, new_id])
    })?;
    echo_long_lived("step 1")?;

    // 2. The new root signs; the old one is still trusted, for certificates it signed.
    replace(&key_file, &new.key_pem(), 0o600)?;
    replace(
        &cert_file,
        &format!("{}{old_root}", new.bundle_pem()),
        0o644,
    )?;
    wait_certs(&agents, "certificates from the new root", |c| {
        c["signed_by"] == new_id.as_str()
    })?;
    echo_long_lived("step 2")?;

    // 3. The old root is dropped.
    replace(&cert_file, new.bundle_pem(), 0o644)?;
    wait_certs(&agents, "only the new root trusted", |c| {
        c["roots"] == serde_json::json!([new_id])
    })?;
    echo_long_lived("step 3")?;

    stop.store(true, Ordering::Relaxed);
    let errors = traffic.join().expect("traffic thread");
    let (made, failed) = (made.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("during the rotation: {made} connections made, {failed} failed");
    assert_eq!(failed, 0, "failed connections: {errors:?}");
    assert!(made > 20, "too little traffic to judge: {made} connections");
    Ok(())
}
