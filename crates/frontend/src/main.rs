//! The frontend binary: parse the configuration and serve the UI.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = frontend::Config::parse();
    contract::logs::init(config.log_format);
    frontend::serve(config, contract::shutdown::signal()).await
}
