//! `tessera`: the command line. One binary, one subcommand per role.

mod bench;
mod edit;
mod random_model;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tessera", version, about = "Image-to-image diffusion, equal to diffusers, in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Edit one local image with a diffusion model (no server).
    Edit(edit::EditArgs),
    /// Time the engine's components on random-weight real-size architectures.
    Bench(bench::BenchArgs),
    /// Write a random-weight model folder with real configs (for benchmarks and diffusers).
    RandomModel(random_model::RandomModelArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Edit(a) => edit::run(a),
        Command::Bench(a) => bench::run(a),
        Command::RandomModel(a) => random_model::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
