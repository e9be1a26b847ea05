use clap::Parser as _;
use mesh_node::{app, config::Config};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("AMBIT_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    app::prepare(&config)?;
    // One worker: a current-thread runtime, whose tasks wake each other without crossing
    // threads (measured faster than a one-worker multi-thread runtime on the HBONE path).
    let mut builder = match config.worker_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(app::run(config))?;
    Ok(())
}
