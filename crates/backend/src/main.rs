//! The backend binary: parse the configuration, start the SVID watcher and the API.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    backend::init_tracing();
    let config = backend::Config::parse();
    backend::serve(config, backend::shutdown_signal()).await
}
