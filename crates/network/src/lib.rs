//! tessera's network roles (issue 8). An orchestrator ([`orchestrator`]) serves jobs with
//! the models of an `aiModels.json` list, in-process or in external ai-runner-compatible
//! runners, and advertises them with their prices. A gateway ([`gateway`]) is the public
//! API: it prices each job by its input pixels, picks orchestrators within its maximum
//! price (warm first, then fast, then cheap), retries elsewhere on failure, stores the
//! results ([`storage`]) and records every job ([`ledger`]). All speak the runner's
//! multipart form and JSON answers, so clients of ai-runner work against either.

pub mod capabilities;
pub mod error;
pub mod form;
pub mod gateway;
pub mod ledger;
pub mod models;
pub mod orchestrator;
pub mod price;
pub mod storage;

pub use capabilities::{Capabilities, OfferedModel};
pub use gateway::{Gateway, GatewayConfig};
pub use ledger::{JobRecord, Ledger, OrchestratorTotals};
pub use models::{load_models, parse_models, ModelEntry};
pub use orchestrator::{Orchestrator, OrchestratorConfig};
pub use price::{Currency, PixelPrice};
pub use storage::{ResultStore, StorageConfig};
