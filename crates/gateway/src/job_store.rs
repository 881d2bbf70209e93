//! Async jobs in SQLite, beside the ledger (the same file, table `async_jobs`): each job's
//! document as `GET /jobs/<id>` answers it, written at every change of state (queued,
//! running, each finished image, the end, the webhook's delivery). The live progress of a
//! running job is kept in memory only; a gateway that restarts marks the jobs it was
//! running as failed, saying so, so that none is silently lost.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};
use tessera_api::jobs::{JobDocument, JobError, JobStatus};

#[derive(Clone)]
pub struct JobStore {
    db: Arc<Mutex<Connection>>,
}

impl JobStore {
    /// Opens (creating if needed) the jobs table in the SQLite file at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = crate::ledger::open_database(path)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS async_jobs (
                id TEXT PRIMARY KEY,
                created_at REAL NOT NULL,
                status TEXT NOT NULL,
                document TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS async_jobs_status ON async_jobs (status);",
        )
        .with_context(|| format!("preparing the jobs table in {}", path.display()))?;
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the job's document, replacing the one stored, except that a finished job's
    /// document is never replaced by an unfinished one (a write that was on its way when
    /// the job ended must not bring it back to life).
    pub fn put(&self, doc: &JobDocument) -> anyhow::Result<()> {
        let text = serde_json::to_string(doc).context("serialising a job")?;
        self.db()
            .execute(
                "INSERT INTO async_jobs (id, created_at, status, document)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE
                 SET status = excluded.status, document = excluded.document
                 WHERE async_jobs.status IN ('queued', 'running')
                    OR excluded.status NOT IN ('queued', 'running')",
                params![doc.id, doc.created_at, doc.status.as_str(), text],
            )
            .context("writing a job")?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> anyhow::Result<Option<JobDocument>> {
        let text: Option<String> = self
            .db()
            .query_row("SELECT document FROM async_jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .context("reading a job")?;
        text.map(|t| serde_json::from_str(&t).with_context(|| format!("job {id} is unreadable")))
            .transpose()
    }

    /// Marks every job still queued or running as failed with `why` and `finished_at`
    /// (what a gateway that starts finds of the jobs it was running), and returns them.
    pub fn fail_unfinished(&self, why: &str, finished_at: f64) -> anyhow::Result<Vec<JobDocument>> {
        let texts: Vec<String> = {
            let db = self.db();
            let mut q = db
                .prepare("SELECT document FROM async_jobs WHERE status IN ('queued', 'running')")?;
            let rows = q.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>().context("reading jobs")?
        };
        let mut failed = Vec::with_capacity(texts.len());
        for text in texts {
            let mut doc: JobDocument = serde_json::from_str(&text).context("reading a job")?;
            doc.status = JobStatus::Failed;
            doc.finished_at = Some(finished_at);
            doc.error = Some(JobError {
                status: 503,
                msg: why.to_owned(),
            });
            self.put(&doc)?;
            failed.push(doc);
        }
        Ok(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_api::jobs::JobUrls;

    fn doc(id: &str, status: JobStatus) -> JobDocument {
        JobDocument {
            id: id.into(),
            status,
            created_at: 1.0,
            finished_at: None,
            progress: None,
            images: Vec::new(),
            error: None,
            urls: JobUrls::of("", id),
            previews: false,
            webhook: None,
            model_id: "a/b".into(),
            orchestrator: None,
            attempts: 0,
            input_pixels: 4,
            price_per_pixel: None,
            currency: None,
            fee: None,
        }
    }

    #[test]
    fn finished_jobs_stay_finished_and_unfinished_ones_fail_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let store = JobStore::open(&path).unwrap();
        store.put(&doc("a", JobStatus::Queued)).unwrap();
        store.put(&doc("a", JobStatus::Succeeded)).unwrap();
        // A late write of the running state does not undo the end.
        store.put(&doc("a", JobStatus::Running)).unwrap();
        assert_eq!(
            store.get("a").unwrap().unwrap().status,
            JobStatus::Succeeded
        );
        store.put(&doc("b", JobStatus::Running)).unwrap();
        assert_eq!(store.get("c").unwrap(), None);

        let reopened = JobStore::open(&path).unwrap();
        let failed = reopened.fail_unfinished("restarted", 9.0).unwrap();
        assert_eq!(failed.len(), 1);
        let b = reopened.get("b").unwrap().unwrap();
        assert_eq!((b.status, b.finished_at), (JobStatus::Failed, Some(9.0)));
        assert_eq!(b.error.unwrap().msg, "restarted");
        assert_eq!(
            reopened.get("a").unwrap().unwrap().status,
            JobStatus::Succeeded
        );
    }
}
