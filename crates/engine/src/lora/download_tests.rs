//! LoRA resolution against a fake hub on a loopback port: the repository is listed, one
//! file is picked from the listing and only that file is downloaded; a file larger than the
//! limit is refused from the listing's size, before any download.

use std::collections::BTreeMap;

use super::cache::resolve_lora;
use crate::error::Error;
use crate::hub::fake_hub::{FakeHub, FAKE_SHA};
use crate::hub::{ModelStore, RepoFile};

/// A LoRA repository as trainers leave it: the weights, training leftovers, a checkpoint
/// folder holding another copy, a sample image and a pickle.
fn trained_lora() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("README.md", "readme"),
        ("pytorch_lora_weights.safetensors", "the weights"),
        ("optimizer.safetensors", "optimizer state"),
        ("scheduler.safetensors", "scheduler state"),
        (
            "checkpoint-500/pytorch_lora_weights.safetensors",
            "older weights",
        ),
        ("image_0.png", "a sample"),
        ("pytorch_lora_weights.bin", "a pickle"),
    ])
}

fn online(dir: &std::path::Path, hub: &FakeHub) -> ModelStore {
    ModelStore::new(dir)
        .with_downloads(true)
        .with_endpoint(&hub.endpoint)
}

fn message<T: std::fmt::Debug>(r: crate::error::Result<T>) -> String {
    match r {
        Err(Error::InvalidInput(m)) => m,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn a_lora_repository_downloads_only_the_file_it_picks() {
    let hub = FakeHub::start("org/style", trained_lora());
    let dir = tempfile::tempdir().unwrap();
    let path = resolve_lora(&online(dir.path(), &hub), "org/style").unwrap();
    assert_eq!(
        path,
        dir.path()
            .join("models--org--style/snapshots")
            .join(FAKE_SHA)
            .join("pytorch_lora_weights.safetensors")
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "the weights");
    // The listing, with sizes, then the one file (hf-hub asks for it twice: its metadata,
    // then its bytes); nothing else.
    let requests = hub.requests();
    assert_eq!(
        requests[0],
        "/api/models/org/style/revision/main?blobs=true"
    );
    let fetched = hub.fetched();
    assert_eq!(fetched.len(), 2, "{requests:?}");
    assert!(
        fetched
            .iter()
            .all(|p| p == "/org/style/resolve/main/pytorch_lora_weights.safetensors"),
        "{requests:?}"
    );
    let snapshot = path.parent().unwrap();
    let held: Vec<String> = std::fs::read_dir(snapshot)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(held, ["pytorch_lora_weights.safetensors"]);

    // Found in the directory the next time, without a word to the hub.
    let asked = hub.requests().len();
    let offline = ModelStore::new(dir.path()).with_downloads(false);
    assert_eq!(resolve_lora(&offline, "org/style").unwrap(), path);
    assert_eq!(
        resolve_lora(&online(dir.path(), &hub), "org/style").unwrap(),
        path
    );
    assert_eq!(hub.requests().len(), asked);
}

#[test]
fn an_oversized_lora_is_refused_before_any_download() {
    // The listing claims 3 GiB, past the default 2048 MiB.
    let hub = FakeHub::start_with_sizes(
        "org/huge",
        trained_lora(),
        BTreeMap::from([("pytorch_lora_weights.safetensors", 3 << 30)]),
    );
    let dir = tempfile::tempdir().unwrap();
    let m = message(resolve_lora(&online(dir.path(), &hub), "org/huge"));
    assert_eq!(
        m,
        "Unable to load LoRas for adapter 'org/huge': pytorch_lora_weights.safetensors is \
         3072.0 MiB (3221225472 bytes), larger than the 2048 MiB LoRAs may have (--max-lora-mib)"
    );
    assert_eq!(
        hub.requests(),
        ["/api/models/org/huge/revision/main?blobs=true"]
    );
    assert!(!dir.path().join("models--org--huge").exists());

    // A higher limit lets it through.
    let store = online(dir.path(), &hub).with_max_lora_mib(4096);
    let path = resolve_lora(&store, "org/huge").unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), "the weights");
}

#[test]
fn the_limit_applies_to_local_loras_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("style.safetensors");
    std::fs::write(&file, vec![0u8; 3 << 20]).unwrap();
    let id = file.display().to_string();
    let store = ModelStore::new(dir.path())
        .with_downloads(false)
        .with_max_lora_mib(2);
    let m = message(resolve_lora(&store, &id));
    assert_eq!(
        m,
        format!(
            "Unable to load LoRas for adapter '{id}': {id} is 3.0 MiB (3145728 bytes), larger \
             than the 2 MiB LoRAs may have (--max-lora-mib)"
        )
    );
    let store = store.with_max_lora_mib(3);
    assert_eq!(resolve_lora(&store, &id).unwrap(), file);
}

#[test]
fn a_listing_without_sizes_is_refused_rather_than_fetched_blind() {
    let files = [RepoFile {
        name: "pytorch_lora_weights.safetensors".into(),
        size: None,
    }];
    let m = message(super::cache::choose_weights("org/x", &files, 1 << 30));
    assert!(
        m.starts_with(
            "Unable to load LoRas for adapter 'org/x': the hub's listing does not give the size"
        ),
        "{m}"
    );
}
