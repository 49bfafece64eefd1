//! The ledger binary: parse the configuration, then serve (its identity from the Workload API).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ledger::Config::parse();
    contract::logs::init(config.log_format);
    ledger::serve(config, contract::shutdown::signal()).await
}
