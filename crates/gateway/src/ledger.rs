//! The gateway's job ledger: one SQLite row per request, whatever became of it, so that
//! what was paid to whom, and what failed, can be looked up later.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

/// What became of a job.
pub mod status {
    /// Results stored and returned.
    pub const OK: &str = "ok";
    /// The request was refused as invalid (by the gateway or by a runner).
    pub const REJECTED: &str = "rejected";
    /// No orchestrator could do it (or, for an async job, the gateway stopped meanwhile).
    pub const FAILED: &str = "failed";
    /// An async job cancelled by its client: the images finished before are charged.
    pub const CANCELLED: &str = "cancelled";
}

/// One job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRecord {
    pub request_id: String,
    /// Seconds since the Unix epoch, when the request arrived.
    pub created_at: i64,
    pub model_id: String,
    /// The orchestrator that answered last (the one that did the job, when it was done).
    pub orchestrator: Option<String>,
    /// width × height × images of the input: what the fee is for.
    pub input_pixels: u64,
    pub outputs: u32,
    pub price_per_pixel: Option<f64>,
    pub currency: Option<String>,
    pub fee: Option<f64>,
    pub latency_ms: u64,
    pub attempts: u32,
    pub status: String,
    pub error: Option<String>,
}

/// Jobs and fees of one orchestrator and currency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrchestratorTotals {
    pub orchestrator: String,
    pub currency: Option<String>,
    pub jobs: u64,
    pub succeeded: u64,
    pub fees: f64,
}

/// The ledger; cheap to clone. Calls block on SQLite: async code runs them off its threads.
#[derive(Clone)]
pub struct Ledger {
    db: Arc<Mutex<Connection>>,
}

const COLUMNS: &str = "request_id, created_at, model_id, orchestrator, input_pixels, outputs, \
                       price_per_pixel, currency, fee, latency_ms, attempts, status, error";

/// Opens (creating it and its folder if needed) the gateway's SQLite file at `path`, shared
/// by the ledger and the async jobs (`job_store`).
pub(crate) fn open_database(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let db = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    // Several processes (a gateway and `tessera jobs`) may use the file at once.
    db.busy_timeout(std::time::Duration::from_secs(5))?;
    // A job the gateway has answered 200 or 202 for must still be there after any crash:
    // every commit is on disk before the answer goes out. WAL lets `tessera jobs` read while
    // the gateway writes; with synchronous=FULL each commit syncs the log, so neither a
    // killed process nor a power cut loses it (NORMAL would survive the first only).
    let mode: String = db
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .with_context(|| format!("{}: WAL journal", path.display()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Some file systems (network ones) cannot share WAL's memory map; the rollback
        // journal with synchronous=FULL is as durable, only readers then wait on writers.
        tracing::warn!(file = %path.display(), mode, "SQLite cannot use WAL here");
    }
    db.pragma_update(None, "synchronous", "FULL")?;
    Ok(db)
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = open_database(path)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                request_id TEXT PRIMARY KEY,
                created_at INTEGER NOT NULL,
                model_id TEXT NOT NULL,
                orchestrator TEXT,
                input_pixels INTEGER NOT NULL,
                outputs INTEGER NOT NULL,
                price_per_pixel REAL,
                currency TEXT,
                fee REAL,
                latency_ms INTEGER NOT NULL,
                attempts INTEGER NOT NULL,
                status TEXT NOT NULL,
                error TEXT
            );
            CREATE INDEX IF NOT EXISTS jobs_created_at ON jobs (created_at);",
        )
        .with_context(|| format!("preparing the ledger in {}", path.display()))?;
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A connection stays usable whatever a panicking holder was doing.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, job: &JobRecord) -> anyhow::Result<()> {
        self.db()
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO jobs ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    job.request_id,
                    job.created_at,
                    job.model_id,
                    job.orchestrator,
                    job.input_pixels as i64,
                    job.outputs,
                    job.price_per_pixel,
                    job.currency,
                    job.fee,
                    job.latency_ms as i64,
                    job.attempts,
                    job.status,
                    job.error,
                ],
            )
            .context("writing to the ledger")?;
        Ok(())
    }

    pub fn get(&self, request_id: &str) -> anyhow::Result<Option<JobRecord>> {
        self.db()
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE request_id = ?1"),
                [request_id],
                from_row,
            )
            .optional()
            .context("reading the ledger")
    }

    /// The latest `limit` jobs, newest first.
    pub fn recent(&self, limit: u32) -> anyhow::Result<Vec<JobRecord>> {
        let db = self.db();
        let mut q = db.prepare(&format!(
            "SELECT {COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?1"
        ))?;
        let rows = q.query_map([limit], from_row)?;
        rows.collect::<Result<_, _>>().context("reading the ledger")
    }

    /// Jobs, successes and fees per orchestrator and currency, over the whole ledger.
    pub fn totals(&self) -> anyhow::Result<Vec<OrchestratorTotals>> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT orchestrator, currency, COUNT(*), SUM(status = 'ok'),
                    COALESCE(SUM(CASE WHEN status IN ('ok', 'cancelled') THEN fee END), 0)
             FROM jobs WHERE orchestrator IS NOT NULL
             GROUP BY orchestrator, currency ORDER BY orchestrator, currency",
        )?;
        let rows = q.query_map([], |r| {
            Ok(OrchestratorTotals {
                orchestrator: r.get(0)?,
                currency: r.get(1)?,
                jobs: r.get::<_, i64>(2)? as u64,
                succeeded: r.get::<_, i64>(3)? as u64,
                fees: r.get(4)?,
            })
        })?;
        rows.collect::<Result<_, _>>().context("reading the ledger")
    }
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        request_id: r.get(0)?,
        created_at: r.get(1)?,
        model_id: r.get(2)?,
        orchestrator: r.get(3)?,
        input_pixels: r.get::<_, i64>(4)? as u64,
        outputs: r.get(5)?,
        price_per_pixel: r.get(6)?,
        currency: r.get(7)?,
        fee: r.get(8)?,
        latency_ms: r.get::<_, i64>(9)? as u64,
        attempts: r.get(10)?,
        status: r.get(11)?,
        error: r.get(12)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, at: i64, orch: &str, status: &str, fee: f64) -> JobRecord {
        JobRecord {
            request_id: id.into(),
            created_at: at,
            model_id: "a/b".into(),
            orchestrator: Some(orch.into()),
            input_pixels: 100,
            outputs: 1,
            price_per_pixel: Some(fee / 100.0),
            currency: Some("USD".into()),
            fee: Some(fee),
            latency_ms: 5,
            attempts: 1,
            status: status.into(),
            error: None,
        }
    }

    #[test]
    fn the_file_is_opened_in_wal_mode_and_syncs_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_database(&dir.path().join("ledger.sqlite")).unwrap();
        let mode: String = db
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let synchronous: i64 = db
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), synchronous), ("wal", 2), "2 is FULL");
    }

    #[test]
    fn jobs_are_kept_listed_and_totalled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ledger.sqlite");
        let ledger = Ledger::open(&path).unwrap();
        ledger
            .record(&job("1", 10, "http://a", status::OK, 2.0))
            .unwrap();
        ledger
            .record(&job("2", 20, "http://a", status::FAILED, 7.0))
            .unwrap();
        ledger
            .record(&job("3", 30, "http://b", status::OK, 3.0))
            .unwrap();
        // Another connection sees them: the file is the ledger.
        let reopened = Ledger::open(&path).unwrap();
        assert_eq!(
            reopened.get("2").unwrap(),
            Some(job("2", 20, "http://a", "failed", 7.0))
        );
        assert_eq!(reopened.get("4").unwrap(), None);
        let ids: Vec<_> = reopened
            .recent(2)
            .unwrap()
            .into_iter()
            .map(|j| j.request_id)
            .collect();
        assert_eq!(ids, ["3", "2"]);
        let totals = reopened.totals().unwrap();
        assert_eq!(totals.len(), 2);
        assert_eq!(
            (totals[0].jobs, totals[0].succeeded, totals[0].fees),
            (2, 1, 2.0)
        );
        assert_eq!(
            (totals[1].jobs, totals[1].succeeded, totals[1].fees),
            (1, 1, 3.0)
        );
    }
}
