//! `cargo xtask demo`: runs the mesh on this machine and shows what it does.
//!
//! Two nodes and four pods made of network namespaces; namespace `shop` joins the mesh,
//! `legacy` stays out. Traffic from each shows who carried it.

use std::time::Duration;

use anyhow::{Context as _, Result};
use mesh_tests::{
    Agent, AgentOptions, Testbed, Topology,
    traffic::{echo_round_trip, echo_server, read_greeting},
};

const PORT: u16 = 8080;

fn main() -> Result<()> {
    mesh_tests::sys::require_root()?;
    println!("Ambit demo: eBPF capture of pod traffic, no sidecar, no iptables\n");

    section(1, "building 2 nodes x 2 pods from network namespaces");
    let topology = Topology {
        nodes: 2,
        pods_per_node: 2,
        namespaces: vec!["shop".into(), "legacy".into()],
    };
    let tb = Testbed::new(topology)?;
    for pod in tb.pods() {
        println!(
            "    pod {:<14} node {}  ip {:<12} netns {}",
            pod.key(),
            pod.node,
            pod.ip,
            pod.netns
        );
    }

    section(
        2,
        "starting the controller's CA and a node agent (mesh-node) on each node",
    );
    let controller = tb.start_controller()?;
    let options = AgentOptions {
        ca_root: Some(controller.root.clone()),
        ..AgentOptions::default()
    };
    let agents = ["n0", "n1"]
        .into_iter()
        .map(|node| tb.start_agent(node, &options))
        .collect::<Result<Vec<Agent>>>()?;
    println!(
        "    CA at {} (root {})",
        mesh_tests::controller::CA_ADDR,
        controller.root.display()
    );
    println!(
        "    both agents ready (eBPF programs attached, pinned under {})",
        tb.bpf_base.display()
    );

    section(
        3,
        "labelling namespace shop: ambit.io/dataplane-mode=ambient",
    );
    tb.set_namespace_ambient("shop", true)?;
    agents[0].wait_enrolled("shop/n0-p0", true)?;
    agents[1].wait_enrolled("shop/n1-p0", true)?;
    println!("    enrolled at run time, no pod restarted: shop/n0-p0 (on n0), shop/n1-p0 (on n1)");

    section(4, "sending traffic");
    let _servers = tb
        .pods()
        .filter(|p| p.node == "n1")
        .map(|p| echo_server(p.listen(PORT)?))
        .collect::<Result<Vec<_>>>()?;
    for (client, server) in [("n0-p0", "n1-p0"), ("n0-p1", "n1-p1")] {
        let (client, server) = (tb.pod(client), tb.pod(server));
        let mut stream = client
            .connect(server.addr(PORT))
            .with_context(|| format!("{} -> {}", client.key(), server.key()))?;
        let seen = read_greeting(&mut stream)?;
        echo_round_trip(&mut stream, &vec![42u8; 256 * 1024])?;
        let connections = agents[0].connections()?;
        let carried = connections.as_array().and_then(|c| {
            c.iter()
                .find(|c| c["destination"] == server.addr(PORT).to_string())
                .cloned()
        });
        println!(
            "    {} -> {} ({}): 256 KiB echoed intact",
            client.key(),
            server.key(),
            server.addr(PORT)
        );
        if let Some(connection) = carried {
            println!(
                "      captured: agent n0 carried it over HBONE (mutual TLS) to {}, which proved it is {}",
                server.name,
                connection["peer_identity"].as_str().unwrap_or("?")
            );
            println!(
                "      the app on {} saw the connection come from {seen} (delivered by agent n1)",
                server.name
            );
        } else {
            println!(
                "      not captured: the app on {} saw the client itself at {seen}; no agent involved",
                server.name
            );
        }
    }
    std::thread::sleep(Duration::from_millis(200));

    section(
        5,
        "applying PeerAuthentication STRICT to namespace shop (kubectl apply, local mode)",
    );
    tb.write_policy(
        "strict",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: strict, namespace: shop }\nspec: { mtls: { mode: STRICT } }\n",
    )?;
    agents[1].wait_policies(1)?;
    let target = tb.pod("n1-p0").addr(PORT);
    let mut plain = tb.pod("n0-p1").connect(target)?;
    match read_greeting(&mut plain) {
        Ok(_) => {
            println!("    legacy/n0-p1 -> shop/n1-p0 in plaintext: still accepted (unexpected)")
        }
        Err(_) => {
            println!("    legacy/n0-p1 -> shop/n1-p0 in plaintext: refused by agent n1 (STRICT)")
        }
    }
    let mut tls = tb.pod("n0-p0").connect(target)?;
    read_greeting(&mut tls)?;
    echo_round_trip(&mut tls, b"mutual TLS passes STRICT")?;
    println!("    shop/n0-p0 -> shop/n1-p0 over HBONE: accepted");

    section(6, "agent counters (Prometheus, :15020/metrics)");
    for agent in &agents {
        for line in agent.metrics()?.lines().filter(|l| {
            l.starts_with("istio_tcp_connections_opened")
                || l.starts_with("istio_tcp_connections_failed")
                || l.starts_with("ambit_enrolled")
        }) {
            println!("    [{}] {line}", agent.node);
        }
    }

    section(7, "the enrollment map as bpftool shows it");
    for (agent, pod) in agents.iter().zip(["n0-p0", "n1-p0"]) {
        let path = agent.bpf_dir.join("enrolled_pods");
        println!("    $ bpftool map dump pinned {}", path.display());
        let out = mesh_tests::sys::run(
            "bpftool",
            &["map", "dump", "pinned", &path.display().to_string()],
        )?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("    {line}");
        }
        let pod = tb.pod(pod);
        println!(
            "    (key: the network-namespace cookie of {}, {}; ip4: {} as the kernel stores it, {})",
            pod.key(),
            pod.netns_cookie()?,
            pod.ip,
            u32::from_ne_bytes(pod.ip.octets())
        );
    }

    section(8, "cleaning up (namespaces, cgroups, pinned programs)");
    drop(agents);
    drop(controller);
    drop(tb);
    println!("    done");
    Ok(())
}

fn section(n: u32, title: &str) {
    println!("\n[{n}] {title}");
}
