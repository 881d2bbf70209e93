//! The network commands as a user runs them: `tessera serve` on the fixture model answering
//! a job with stored results, `tessera jobs` reading its ledger, and `tessera orchestrator`
//! refusing a model list it cannot serve.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::blocking::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;

use tessera_testkit::parity_dir as fixtures;
use tessera_testkit::{free_port, Server};

fn tessera() -> Command {
    tessera_testkit::tessera(env!("CARGO_BIN_EXE_tessera"))
}

fn serve(model_dir: &Path, data_dir: &Path, port: u16) -> Server {
    let child = tessera()
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--model-id", "tessera/tiny-pix2pix", "--api-key", "k1,k2"])
        .arg("--model-dir")
        .arg(model_dir)
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server(child)
}

#[test]
fn serve_answers_with_stored_results_and_jobs_lists_them() {
    let models = tempfile::tempdir().unwrap();
    tessera_engine::hub::link_as_hub_cache(
        &fixtures().join("models/tiny-instruct-pix2pix"),
        models.path(),
        "tessera/tiny-pix2pix",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(models.path(), data.path(), port);
    server.wait_healthy(&base);

    let form = Form::new()
        .text("prompt", "make it blue")
        .part(
            "image",
            Part::bytes(std::fs::read(fixtures().join("inputs/square.png")).unwrap())
                .file_name("in.png"),
        )
        .text("num_inference_steps", "2")
        .text("num_images_per_prompt", "2")
        .text("safety_check", "false");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let res = client
        .post(format!("{base}/image-to-image"))
        .bearer_auth("k2")
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = res.json().unwrap();
    let urls: Vec<&str> = body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [format!("/stream/{id}/0.png"), format!("/stream/{id}/1.png")]
    );
    for url in urls {
        let res = client.get(format!("{base}{url}")).send().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "image/png");
        let png = res.bytes().unwrap();
        assert!(image::load_from_memory(&png).is_ok());
    }
    let res = client
        .post(format!("{base}/image-to-image"))
        .multipart(Form::new().text("prompt", "x"))
        .send()
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    drop(server);

    let ledger = data.path().join("ledger.sqlite");
    let out = tessera()
        .args(["jobs", "--json", "--ledger"])
        .arg(&ledger)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    let job = &listed["jobs"][0];
    assert_eq!(job["request_id"], id.as_str());
    assert_eq!(
        (job["status"].as_str(), job["outputs"].as_u64()),
        (Some("ok"), Some(2))
    );
    assert_eq!(job["model_id"], "tessera/tiny-pix2pix");
    assert_eq!(listed["totals"][0]["jobs"], 1);
    let table = tessera()
        .args(["jobs", "--ledger"])
        .arg(&ledger)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains(&id));
}

#[test]
fn orchestrator_refuses_a_model_listed_warm_and_cold() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("aiModels.json");
    std::fs::write(
        &models,
        r#"[{"pipeline": "image-to-image", "model_id": "a/b", "warm": true, "price_per_unit": 1},
            {"pipeline": "image-to-image", "model_id": "a/b", "price_per_unit": 1}]"#,
    )
    .unwrap();
    let out = tessera()
        .args(["orchestrator", "--port", "0", "--models"])
        .arg(&models)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model a/b is listed both warm and cold"),
        "{err}"
    );
}
