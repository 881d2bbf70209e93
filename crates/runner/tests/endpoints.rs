//! The runner's other endpoints: `/version`, `/hardware/*`, `/metrics` and the OpenAPI
//! document, which must describe the API as ai-runner's does for the clients generated
//! from it (go-livepeer's among them).

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tessera_runner::RunnerConfig;

#[tokio::test(flavor = "multi_thread")]
async fn version_and_hardware_name_the_pipeline_and_model() {
    let config = RunnerConfig {
        version: "1.2.3".into(),
        ..config("org/model", None)
    };
    let base = fake_server(config, echo).await;
    for path in ["/version", "/version/"] {
        assert_eq!(
            get_json(&base, path).await,
            json!({"pipeline": "image-to-image", "model_id": "org/model", "version": "1.2.3"})
        );
    }
    let has_nvidia_smi = std::process::Command::new("nvidia-smi").output().is_ok();
    for (path, key) in [
        ("/hardware/info", "gpu_info"),
        ("/hardware/info/", "gpu_info"),
        ("/hardware/stats", "gpu_stats"),
    ] {
        let body = get_json(&base, path).await;
        assert_eq!(body["pipeline"], "image-to-image", "{path}");
        assert_eq!(body["model_id"], "org/model", "{path}");
        let gpus = body[key]
            .as_object()
            .unwrap_or_else(|| panic!("{path}: {body}"));
        if !has_nvidia_smi {
            assert!(gpus.is_empty(), "{path}: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_images_and_time() {
    let base = fake_server(config("m", Some("t")), echo).await;
    // With a token, the metrics want it too.
    let refused = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let page = get_text_as(&base, "/metrics", Some("t")).await;
    assert_eq!(metric(&page, "tessera_runner_queue_depth"), Some(0.0));
    assert_eq!(
        metric(&page, "tessera_runner_images_generated_total"),
        Some(0.0)
    );
    for _ in 0..2 {
        let a = post(&base, "/image-to-image", valid_form(&[]), Some("t")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    let a = post(&base, "/image-to-image", valid_form(&[]), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let page = get_text_as(&base, "/metrics", Some("t")).await;
    assert_eq!(
        metric(&page, r#"tessera_runner_requests_total{status="200"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(&page, r#"tessera_runner_requests_total{status="401"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, "tessera_runner_images_generated_total"),
        Some(4.0)
    );
    assert_eq!(
        metric(&page, "tessera_runner_inference_seconds_count"),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &page,
            r#"tessera_runner_inference_seconds_bucket{le="+Inf"}"#
        ),
        Some(2.0)
    );
}

/// Resolves a `$ref` in the document.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

/// A schema's property names and types (`$ref` targets for references), in order.
fn properties(doc: &Value, name: &str) -> Vec<(String, String)> {
    let s = schema(doc, name);
    s["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has no properties: {s}"))
        .iter()
        .map(|(k, v)| {
            let t = v["type"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| v["$ref"].as_str().map(str::to_owned))
                .unwrap_or_else(|| v.to_string());
            (k.clone(), t)
        })
        .collect()
}

fn props(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

fn required(doc: &Value, name: &str) -> Vec<String> {
    let mut r: Vec<String> = schema(doc, name)["required"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    r.sort();
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_ai_runners() {
    let base = fake_server(config("m", None), echo).await;
    let doc = get_json(&base, "/openapi.json").await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    // Operations, as ai-runner names them (go-livepeer's client calls genImageToImage).
    let op = &doc["paths"]["/image-to-image"]["post"];
    assert_eq!(op["operationId"], "genImageToImage");
    assert_eq!(op["tags"], json!(["generate"]));
    assert_eq!(op["security"], json!([{"HTTPBearer": []}]));
    assert_eq!(
        op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"],
        "#/components/schemas/Body_genImageToImage"
    );
    // The same request as JSON (what the Live Runner SDK sends), `image` as text.
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Body_genImageToImage_json"
    );
    assert_eq!(
        schema(&doc, "Body_genImageToImage_json")["properties"]["image"]["type"],
        "string"
    );
    assert!(
        schema(&doc, "Body_genImageToImage_json")["properties"]["image"]
            .get("format")
            .is_none()
    );
    for (status, target) in [
        ("200", "ImageResponse"),
        ("400", "HTTPError"),
        ("401", "HTTPError"),
        ("500", "HTTPError"),
        ("422", "HTTPValidationError"),
    ] {
        assert_eq!(
            op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{target}"),
            "{status}"
        );
    }
    for (path, id, target) in [
        ("/health", "health", "HealthCheck"),
        ("/hardware/info", "hardware_info", "HardwareInformation"),
        ("/hardware/stats", "hardware_stats", "HardwareStats"),
        ("/version", "version", "Version"),
    ] {
        let op = &doc["paths"][path]["get"];
        assert_eq!(op["operationId"], id, "{path}");
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{target}"),
            "{path}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["HTTPBearer"],
        json!({"type": "http", "scheme": "bearer"})
    );

    // The form, field by field: types, defaults, what is required.
    assert_eq!(
        sorted(properties(&doc, "Body_genImageToImage")),
        props(&[
            ("prompt", "string"),
            ("image", "string"),
            ("model_id", "string"),
            ("loras", "string"),
            ("strength", "number"),
            ("guidance_scale", "number"),
            ("image_guidance_scale", "number"),
            ("negative_prompt", "string"),
            ("safety_check", "boolean"),
            ("seed", "integer"),
            ("num_inference_steps", "integer"),
            ("num_images_per_prompt", "integer"),
            // tessera's own, all optional: the results' format and the previews of an
            // event stream.
            ("output_format", "string"),
            ("output_quality", "integer"),
            ("previews", "boolean"),
        ])
    );
    assert_eq!(required(&doc, "Body_genImageToImage"), ["image", "prompt"]);
    let body = &schema(&doc, "Body_genImageToImage")["properties"];
    assert_eq!(body["image"]["format"], "binary");
    for (field, default) in [
        ("model_id", json!("")),
        ("loras", json!("")),
        ("strength", json!(0.8)),
        ("guidance_scale", json!(7.5)),
        ("image_guidance_scale", json!(1.5)),
        ("negative_prompt", json!("")),
        ("safety_check", json!(true)),
        ("num_inference_steps", json!(100)),
        ("num_images_per_prompt", json!(1)),
    ] {
        assert_eq!(body[field]["default"], default, "{field}");
    }
    assert_eq!(body["seed"].get("default"), None);
    assert_eq!(
        body["prompt"]["description"],
        "Text prompt(s) to guide image generation."
    );

    // The response and error models.
    let refs = |name: &str| format!("#/components/schemas/{name}");
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("ImageResponse", vec![("images", "array".into())]),
        (
            "Media",
            vec![
                ("url", "string".into()),
                ("seed", "integer".into()),
                ("nsfw", "boolean".into()),
            ],
        ),
        ("HTTPError", vec![("detail", refs("APIError"))]),
        ("APIError", vec![("msg", "string".into())]),
        ("HTTPValidationError", vec![("detail", "array".into())]),
        (
            "ValidationError",
            vec![
                ("loc", "array".into()),
                ("msg", "string".into()),
                ("type", "string".into()),
            ],
        ),
        ("HealthCheck", vec![("status", "string".into())]),
        (
            "Version",
            vec![
                ("pipeline", "string".into()),
                ("model_id", "string".into()),
                ("version", "string".into()),
            ],
        ),
        (
            "HardwareInformation",
            vec![
                ("pipeline", "string".into()),
                ("model_id", "string".into()),
                ("gpu_info", "object".into()),
            ],
        ),
        (
            "HardwareStats",
            vec![
                ("pipeline", "string".into()),
                ("model_id", "string".into()),
                ("gpu_stats", "object".into()),
            ],
        ),
        (
            "GPUComputeInfo",
            vec![
                ("id", "string".into()),
                ("name", "string".into()),
                ("memory_total", "integer".into()),
                ("memory_free", "integer".into()),
                ("major", "integer".into()),
                ("minor", "integer".into()),
            ],
        ),
        (
            "GPUUtilizationInfo",
            vec![
                ("id", "string".into()),
                ("name", "string".into()),
                ("memory_total", "integer".into()),
                ("memory_free", "integer".into()),
                ("utilization_compute", "integer".into()),
                ("utilization_memory", "integer".into()),
            ],
        ),
    ];
    for (name, fields) in cases {
        let want: Vec<(&str, &str)> = fields.iter().map(|(a, b)| (*a, b.as_str())).collect();
        assert_eq!(sorted(properties(&doc, name)), props(&want), "{name}");
        let mut all: Vec<&str> = fields.iter().map(|(a, _)| *a).collect();
        all.sort();
        assert_eq!(required(&doc, name), all, "{name}: all fields are required");
    }
    assert_eq!(
        schema(&doc, "Media")["properties"]["url"]["description"],
        "The URL where the media can be accessed."
    );
    assert_eq!(
        schema(&doc, "HealthCheck")["properties"]["status"]["enum"],
        json!(["LOADING", "OK", "ERROR", "IDLE"])
    );
    assert_eq!(
        schema(&doc, "ImageResponse")["properties"]["images"]["items"]["$ref"],
        refs("Media")
    );
    assert_eq!(
        schema(&doc, "HardwareInformation")["properties"]["gpu_info"]["additionalProperties"]
            ["$ref"],
        refs("GPUComputeInfo")
    );
    assert_eq!(
        schema(&doc, "ValidationError")["properties"]["loc"]["items"],
        json!({"anyOf": [{"type": "string"}, {"type": "integer"}]})
    );
}
