use clap::Parser as _;
use mesh_node::{app, config::Config};

fn main() -> anyhow::Result<()> {
    mesh_core::process::init_logging();
    let config = Config::parse();
    if config.uninstall {
        app::uninstall(&config)?;
        return Ok(());
    }
    app::prepare(&config)?;
    let runtime = mesh_core::process::runtime(config.worker_threads)?;
    runtime.block_on(app::run(config))?;
    Ok(())
}
