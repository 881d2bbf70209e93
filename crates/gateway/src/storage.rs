//! Where the gateway keeps results: an object store (a local folder by default, any
//! S3-compatible bucket by config), one object per image, `<request-id>/<index>.<ext>`
//! (`png`, `jpg` or `webp`, as the request's `output_format` asked), kept for a retention
//! period and then swept away.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use serde::Deserialize;

/// Where results go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StorageConfig {
    /// A folder on this machine, created when missing.
    Local { path: PathBuf },
    /// An S3-compatible bucket. Fields left out come from the usual `AWS_*` variables.
    S3 {
        bucket: String,
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        access_key_id: Option<String>,
        #[serde(default)]
        secret_access_key: Option<String>,
        /// Plain-HTTP endpoints (a local MinIO) must be allowed explicitly.
        #[serde(default)]
        allow_http: bool,
    },
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self::Local {
            path: PathBuf::from("tessera-data/results"),
        }
    }
}

/// The result store.
#[derive(Clone)]
pub struct ResultStore {
    store: Arc<dyn ObjectStore>,
    retention: Duration,
}

impl ResultStore {
    pub fn open(config: &StorageConfig, retention: Duration) -> anyhow::Result<Self> {
        let store: Arc<dyn ObjectStore> = match config {
            StorageConfig::Local { path } => {
                std::fs::create_dir_all(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                Arc::new(
                    LocalFileSystem::new_with_prefix(path)
                        .with_context(|| format!("opening {}", path.display()))?,
                )
            }
            StorageConfig::S3 {
                bucket,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                allow_http,
            } => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(*allow_http);
                if let Some(v) = endpoint {
                    b = b.with_endpoint(v);
                }
                if let Some(v) = region {
                    b = b.with_region(v);
                }
                if let Some(v) = access_key_id {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = secret_access_key {
                    b = b.with_secret_access_key(v);
                }
                Arc::new(b.build().with_context(|| format!("S3 bucket {bucket}"))?)
            }
        };
        Ok(Self { store, retention })
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    fn key(request_id: &str, file: &str) -> Path {
        Path::from_iter([request_id, file])
    }

    /// Stores one image as `file` (`<index>.<ext>`) of the request.
    pub async fn put(&self, request_id: &str, file: &str, image: Bytes) -> anyhow::Result<()> {
        self.store
            .put(&Self::key(request_id, file), image.into())
            .await
            .with_context(|| format!("storing {request_id}/{file}"))?;
        Ok(())
    }

    /// Removes whatever of the request's images were stored (after one of them could not
    /// be): nobody was given their URLs. Best effort; the sweep gets what this misses.
    pub async fn remove_request(&self, request_id: &str) {
        let prefix = Path::from(request_id);
        let stored: Vec<Path> = match self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
        {
            Ok(paths) => paths,
            Err(e) => {
                tracing::warn!(request_id, error = %e, "cannot list a failed request's results");
                return;
            }
        };
        for path in stored {
            if let Err(e) = self.store.delete(&path).await {
                tracing::warn!(%path, error = %e, "cannot remove a failed request's result");
            }
        }
    }

    /// One stored image, `None` when there is none (never stored, or swept).
    pub async fn get(&self, request_id: &str, file: &str) -> anyhow::Result<Option<Bytes>> {
        match self.store.get(&Self::key(request_id, file)).await {
            Ok(found) => Ok(Some(found.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every object older than the retention period; returns how many went.
    pub async fn sweep(&self) -> anyhow::Result<usize> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let cutoff = now - self.retention.as_secs_f64();
        let old: Vec<Path> = self
            .store
            .list(None)
            .try_filter_map(|meta| async move {
                let modified = meta.last_modified.timestamp_millis() as f64 / 1000.0;
                Ok((modified < cutoff).then_some(meta.location))
            })
            .try_collect()
            .await
            .context("listing stored results")?;
        for path in &old {
            self.store
                .delete(path)
                .await
                .with_context(|| format!("deleting {path}"))?;
        }
        Ok(old.len())
    }
}

/// Whether `e` says the storage is out of space or over its quota (ENOSPC, EDQUOT; an S3
/// bucket says so with its own errors, which are not recognised here).
pub fn is_storage_full(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_from_other_failures_through_the_context() {
        let full = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::StorageFull))
            .context("storing r/0.png");
        let quota = anyhow::Error::new(std::io::Error::from_raw_os_error(122));
        let denied = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(is_storage_full(&full));
        assert!(is_storage_full(&quota), "EDQUOT");
        assert!(!is_storage_full(&denied));
    }

    #[tokio::test]
    async fn images_are_kept_apart_and_swept_after_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::Local {
            path: dir.path().join("results"),
        };
        let kept = ResultStore::open(&config, Duration::from_secs(3600)).unwrap();
        for i in 0..20 {
            kept.put("req", &format!("{i}.png"), Bytes::from(vec![i as u8]))
                .await
                .unwrap();
        }
        // No cap on how many are kept: all twenty are there.
        for i in 0..20 {
            let got = kept.get("req", &format!("{i}.png")).await.unwrap();
            assert_eq!(got.as_deref(), Some(&[i as u8][..]));
        }
        assert_eq!(kept.get("req", "20.png").await.unwrap(), None);
        assert_eq!(kept.sweep().await.unwrap(), 0);
        let expiring = ResultStore::open(&config, Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(expiring.sweep().await.unwrap(), 20);
        assert_eq!(kept.get("req", "0.png").await.unwrap(), None);
    }
}
