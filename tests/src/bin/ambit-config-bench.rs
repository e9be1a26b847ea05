//! `cargo xtask bench` (control plane): 10,000 pods and 1,000 services through validation,
//! compilation and the configuration stream. Measures the first push to a node, the time one
//! change takes to reach 100 subscribers (p50/p99), and memory. Controller and subscribers run
//! in this process over loopback gRPC (plaintext: TLS cost is per connection, not per change).
//! Then the same cluster with real processes in the test bed (root): the controller in local
//! mode and two node agents taking their pods from its stream over TLS, for their memory.

use std::{sync::Arc, time::Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodIP, PodSpec, PodStatus, Service, ServiceSpec};
use kube::api::ObjectMeta;
use mesh_controller::{
    compile::compile,
    config::{ConfigSet, Resource, validate::validate},
    distribution::{Distributor, service::ConfigStreamService},
};
use mesh_core::{
    config_client::{ConfigView, follow},
    config_pb::{
        Role, config_service_client::ConfigServiceClient,
        config_service_server::ConfigServiceServer,
    },
};
use tokio::sync::mpsc;

const PODS: usize = 10_000;
const SERVICES: usize = 1_000;
const NAMESPACES: usize = 100;
const NODES: usize = 100;
const SUBSCRIBERS: usize = 100;
const CHANGES: usize = 20;

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        / 1024.0
}

fn meta(name: String, namespace: Option<String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        ..ObjectMeta::default()
    }
}

/// The synthetic cluster; `generation` changes one pod's label so each change is one delta.
fn cluster(generation: usize) -> ConfigSet {
    let mut set = ConfigSet::default();
    for n in 0..NAMESPACES {
        let mut m = meta(format!("ns-{n}"), None);
        m.labels = Some([("ambit.io/dataplane-mode".to_owned(), "ambient".to_owned())].into());
        set.insert(Resource::Namespace(Box::new(Namespace {
            metadata: m,
            ..Namespace::default()
        })));
    }
    for p in 0..PODS {
        let ns = format!("ns-{}", p % NAMESPACES);
        let mut m = meta(format!("pod-{p}"), Some(ns));
        let version = if p == 0 { generation } else { 0 };
        m.labels = Some(
            [
                ("app".to_owned(), format!("app-{}", p % SERVICES)),
                ("version".to_owned(), format!("v{version}")),
            ]
            .into(),
        );
        let ip = format!("10.{}.{}.{}", p / 65536, (p / 256) % 256, p % 256);
        set.insert(Resource::Pod(Box::new(Pod {
            metadata: m,
            spec: Some(PodSpec {
                node_name: Some(format!("node-{}", p % NODES)),
                service_account_name: Some(format!("sa-{}", p % SERVICES)),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ips: Some(vec![PodIP { ip }]),
                ..PodStatus::default()
            }),
        })));
    }
    for s in 0..SERVICES {
        let ns = format!("ns-{}", s % NAMESPACES);
        set.insert(Resource::Service(Box::new(Service {
            metadata: meta(format!("app-{s}"), Some(ns)),
            spec: Some(ServiceSpec {
                cluster_ip: Some(format!("10.96.{}.{}", s / 256, s % 256)),
                selector: Some([("app".to_owned(), format!("app-{s}"))].into()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        })));
    }
    set
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(in_process())?;
    real_processes()
}

/// The cluster in the test bed's files: pods on 100 other nodes in the pods file, Services in
/// the controller's directory; two real agents (`--config-source controller`) receive it.
fn real_processes() -> Result<()> {
    use mesh_tests::{AgentOptions, Testbed, Topology, sys::rss_mb};
    let tb = Testbed::new(Topology::default())?;
    tb.update_pods_file(|file| {
        for n in 0..NAMESPACES {
            file.namespaces.push(mesh_core::pods::Namespace {
                name: format!("ns-{n}"),
                labels: [("ambit.io/dataplane-mode".to_owned(), "ambient".to_owned())].into(),
            });
        }
        for p in 0..PODS {
            let mut pod = mesh_tests::testbed::remote_pod(
                &format!("pod-{p}"),
                &format!("ns-{}", p % NAMESPACES),
                &format!("sa-{}", p % SERVICES),
                std::net::Ipv4Addr::new(100, 64 + (p / 65536) as u8, (p / 256) as u8, p as u8),
                &format!("app-{}", p % SERVICES),
            );
            pod.node = format!("node-{}", p % NODES);
            file.pods.push(pod);
        }
    })?;
    let mut services = String::new();
    for s in 0..SERVICES {
        services.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: app-{s}, namespace: ns-{}}}\n\
             spec: {{clusterIP: 10.96.{}.{}, selector: {{app: app-{s}}}, ports: [{{port: 80}}]}}\n---\n",
            s % NAMESPACES,
            s / 256,
            s % 256
        ));
    }
    tb.write_policy("services", &services)?;
    let started = Instant::now();
    let (controller, agents) = tb.start_mesh(AgentOptions {
        config_from_controller: true,
        worker_threads: Some(1),
        ..AgentOptions::default()
    })?;
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let dump = agents[0].config_dump()?;
        let pods = dump["pods"]["pods"].as_array().map_or(0, Vec::len);
        if pods >= PODS {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent has {pods} pods after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ready_s = started.elapsed().as_secs_f64();
    println!(
        "real processes (test bed, TLS): controller (local mode) and 2 node agents (--config-source controller)"
    );
    println!("  controller start to agent holding {PODS} pods  {ready_s:>7.2} s");
    println!(
        "  controller RSS                          {:>10.1} MB",
        rss_mb(controller.pid())?
    );
    let agent_pid = agents[0].pid().context("agent not running")?;
    println!(
        "  node agent RSS                          {:>10.1} MB",
        rss_mb(agent_pid)?
    );
    Ok(())
}

async fn in_process() -> Result<()> {
    let rss_start = rss_mb();
    let started = Instant::now();
    let set = cluster(0);
    let validation = validate(&set, "cluster.local");
    let resources = compile(&set, &validation, "cluster.local");
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let distributor = Arc::new(Distributor::default());
    distributor.publish(resources);
    drop((set, validation));
    let controller_mb = rss_mb() - rss_start;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = ConfigStreamService {
        distributor: distributor.clone(),
        authorizer: None,
        nodes_read_secrets: false,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                ConfigServiceServer::new(service)
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(256 << 20),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // Subscribers report (subscriber, version) when an update applied.
    let (applied_tx, mut applied) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let before_subscribers = rss_mb();
    let first_push = Instant::now();
    for i in 0..SUBSCRIBERS {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let tx = applied_tx.clone();
        tokio::spawn(async move {
            let mut client = ConfigServiceClient::new(channel).max_decoding_message_size(256 << 20);
            let mut view = ConfigView::default();
            let report = |view: &ConfigView, _: &_| {
                let _ = tx.send((i, view.version, Instant::now()));
            };
            if let Err(error) =
                follow(&mut client, Role::Node, None, &mut view, |_| Ok(()), report).await
            {
                eprintln!("subscriber {i}: {error}");
            }
        });
    }
    let mut first_ms = Vec::new();
    while first_ms.len() < SUBSCRIBERS {
        let (_, _, at) = applied.recv().await.expect("subscribers alive");
        first_ms.push((at - first_push).as_secs_f64() * 1e3);
    }
    let first_one_ms = first_ms.iter().cloned().fold(f64::INFINITY, f64::min);
    let all_first_ms = first_ms.iter().cloned().fold(0.0, f64::max);
    let with_subscribers_mb = rss_mb() - before_subscribers;

    let mut change_ms = Vec::new();
    for generation in 1..=CHANGES {
        let set = cluster(generation);
        let validation = validate(&set, "cluster.local");
        let resources = compile(&set, &validation, "cluster.local");
        let published = Instant::now();
        let version = distributor.publish(resources).expect("a change");
        let mut reached = 0;
        while reached < SUBSCRIBERS {
            let (_, v, at) = applied.recv().await.expect("subscribers alive");
            if v == version {
                change_ms.push((at - published).as_secs_f64() * 1e3);
                reached += 1;
            }
        }
    }
    change_ms.sort_by(f64::total_cmp);
    println!(
        "control plane: {PODS} pods, {SERVICES} services, {NAMESPACES} namespaces, {SUBSCRIBERS} node subscribers (loopback gRPC)"
    );
    println!("  validate + compile the cluster          {compile_ms:>10.1} ms");
    println!("  initial push, first node                {first_one_ms:>10.1} ms");
    println!("  initial push, all {SUBSCRIBERS} nodes               {all_first_ms:>10.1} ms");
    println!(
        "  one change to {SUBSCRIBERS} subscribers ({CHANGES} changes)  p50 {:.2} ms  p99 {:.2} ms",
        percentile(&change_ms, 0.5),
        percentile(&change_ms, 0.99)
    );
    println!("  controller memory for the config        {controller_mb:>10.1} MB");
    println!(
        "  per subscriber (stream + full view)     {:>10.2} MB",
        with_subscribers_mb / SUBSCRIBERS as f64
    );
    Ok(())
}
