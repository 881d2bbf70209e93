//! tessera's network roles (issue 8): the orchestrator, the gateway, result storage and the
//! job ledger. Not written yet.
