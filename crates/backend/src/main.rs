//! The backend binary: parse the configuration, start the SVID watcher and the API.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = backend::Config::parse();
    contract::logs::init(config.log_format);
    backend::serve(config, contract::shutdown::signal()).await
}
