use clap::Parser as _;
use mesh_node::{app, config::Config};

/// mimalloc, as the waypoint: glibc's allocator kept the memory of a load long after it ended
/// (RSS stayed at about 2.4x its idle size), mimalloc gives freed pages back to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
