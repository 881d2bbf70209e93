//! `tessera`: the command line. One binary, one subcommand per role.

mod args;
mod bench;
mod edit;
mod gateway;
mod jobs;
mod listen;
mod orchestrator;
mod random_model;
mod runner;
mod safety_check;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Image-to-image diffusion, equal to diffusers, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process: gateway, orchestrator and the warm model, with local
    /// result storage and a SQLite ledger.
    Serve(serve::ServeArgs),
    /// One warm model behind ai-runner's HTTP API (a drop-in ai-runner container).
    Runner(runner::RunnerArgs),
    /// Serve gateways' jobs with the models of an aiModels.json list.
    Orchestrator(orchestrator::OrchestratorArgs),
    /// The public API: route jobs to orchestrators by price, store results, keep a ledger.
    Gateway(gateway::GatewayArgs),
    /// List a gateway ledger's recent jobs and totals per orchestrator.
    Jobs(jobs::JobsArgs),
    /// Edit one local image with a diffusion model (no server).
    Edit(Box<edit::EditArgs>),
    /// Time the engine's components on random-weight real-size architectures.
    Bench(bench::BenchArgs),
    /// Write a random-weight model folder with real configs (for benchmarks and diffusers).
    RandomModel(random_model::RandomModelArgs),
    /// Run the NSFW safety checker on local images.
    SafetyCheck(safety_check::SafetyCheckArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A server logs what it does (listening, model loaded, requests); one-shot commands keep
    // stderr for their progress bar and errors. RUST_LOG overrides both.
    let default_level = if matches!(
        cli.command,
        Command::Serve(_) | Command::Runner(_) | Command::Orchestrator(_) | Command::Gateway(_)
    ) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Runner(a) => runner::run(a),
        Command::Orchestrator(a) => orchestrator::run(a),
        Command::Gateway(a) => gateway::run(a),
        Command::Jobs(a) => jobs::run(a),
        Command::Edit(a) => edit::run(*a),
        Command::Bench(a) => bench::run(a),
        Command::RandomModel(a) => random_model::run(a),
        Command::SafetyCheck(a) => safety_check::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
