//! The frontend binary: parse the configuration and serve the UI.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    frontend::init_tracing();
    let config = frontend::Config::parse();
    frontend::serve(config, frontend::shutdown_signal()).await
}
