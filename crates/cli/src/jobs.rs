//! `tessera jobs`: the gateway ledger's recent jobs and its totals per orchestrator.

use std::path::PathBuf;

use tessera_gateway::{GatewayConfig, Ledger};

#[derive(clap::Args)]
pub struct JobsArgs {
    /// The ledger file [default: the gateway's default, tessera-data/ledger.sqlite].
    #[arg(long, env = "TESSERA_LEDGER")]
    ledger: Option<PathBuf>,
    /// How many recent jobs to list.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Print JSON (`{"jobs": [...], "totals": [...]}`) instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(a: JobsArgs) -> anyhow::Result<()> {
    let path = a.ledger.unwrap_or_else(|| GatewayConfig::default().ledger);
    if !path.exists() {
        anyhow::bail!("no ledger at {}", path.display());
    }
    let ledger = Ledger::open(&path)?;
    let jobs = ledger.recent(a.limit)?;
    let totals = ledger.totals()?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"jobs": jobs, "totals": totals}))?
        );
        return Ok(());
    }
    println!(
        "{:<32}  {:<8}  {:<28}  {:<28}  {:>12}  {:>6}  {:>14}  {:>9}",
        "request", "status", "model", "orchestrator", "pixels", "images", "fee", "ms"
    );
    for j in &jobs {
        let fee = match (j.fee, &j.currency) {
            (Some(fee), Some(c)) => format!("{fee} {c}"),
            _ => "-".into(),
        };
        println!(
            "{:<32}  {:<8}  {:<28}  {:<28}  {:>12}  {:>6}  {:>14}  {:>9}",
            j.request_id,
            j.status,
            j.model_id,
            j.orchestrator.as_deref().unwrap_or("-"),
            j.input_pixels,
            j.outputs,
            fee,
            j.latency_ms
        );
        if let Some(e) = &j.error {
            println!("    error: {e}");
        }
    }
    println!();
    println!(
        "{:<40}  {:>6}  {:>6}  {:>16}",
        "orchestrator", "jobs", "ok", "fees"
    );
    for t in &totals {
        println!(
            "{:<40}  {:>6}  {:>6}  {:>16}",
            t.orchestrator,
            t.jobs,
            t.succeeded,
            format!("{} {}", t.fees, t.currency.as_deref().unwrap_or("")),
        );
    }
    Ok(())
}
