//! `maof`: the local dev server (the whole pipeline in one process), the
//! AWS bootstrap, token minting, Lambda events and the benchmark.

mod bench;
mod dev;
mod event;
mod token;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "maof", version, about = "Multi-Agent Orchestration Framework")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run intake, route, agent-call and aggregate in one process.
    Dev(dev::DevArgs),
    /// Print a signed token (HS256 with MAOF_JWT_SECRET).
    Token(token::TokenArgs),
    /// Create the tables and queues on the configured AWS endpoint.
    Bootstrap(dev::BootstrapArgs),
    /// Measure throughput and latency of the pipeline.
    Bench(bench::BenchArgs),
    /// Print a ready-to-invoke Lambda event (for `cargo lambda invoke`).
    Event(event::EventArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    maof::telemetry::init();
    match Cli::parse().command {
        Command::Dev(args) => dev::run(args).await,
        Command::Token(args) => token::run(args),
        Command::Bootstrap(args) => {
            // Bootstrapping calls no provider; the services it returns go unused.
            dev::bootstrap(
                args,
                maof::setup::outbound(maof::providers::OutboundPolicy::strict())?,
            )
            .await
            .map(|_| ())
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Event(args) => event::run(args),
    }
}
