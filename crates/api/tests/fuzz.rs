//! Fuzzing the request parsers every role runs on outside input: the multipart form, the
//! JSON body, and the `loras` field, each through to the checked request. Each input must
//! end in a request or an error (never a panic), quickly and in bounded memory; see
//! `tessera_testkit::fuzz` for the budget and the regression corpus.

use axum::http::{header, HeaderMap, HeaderValue};
use bytes::Bytes;
use tessera_api::form::Form;
use tessera_api::limits::Limits;
use tessera_api::loras::parse_loras;
use tessera_api::request::ImageToImage;
use tessera_testkit::fuzz::{CountingAlloc, Fuzz};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const MODEL: &str = "timbrooks/instruct-pix2pix";
const BOUNDARY: &str = "fuzzboundary";

fn small_image() -> Vec<u8> {
    std::fs::read(tessera_testkit::fixtures_dir().join("image_io/convert/rgb8_trns.png"))
        .expect("fixture image")
}

/// Typing and checking as the runner does after reading the form; whether it passed.
fn check(form: &Form) -> bool {
    ImageToImage::from_form(form).is_ok_and(|r| r.check(MODEL, &Limits::default()).is_ok())
}

fn multipart(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        if *name == "image" {
            body.extend_from_slice(
                b"Content-Disposition: form-data; name=\"image\"; filename=\"in.png\"\r\n\
                  Content-Type: image/png\r\n\r\n",
            );
        } else {
            body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

#[test]
fn fuzz_multipart_form() {
    let image = small_image();
    let seeds = vec![
        multipart(&[("prompt", b"a hat"), ("image", &image)]),
        multipart(&[
            ("prompt", b"a hat"),
            ("image", &image),
            ("model_id", MODEL.as_bytes()),
            ("loras", br#"{"nerijs/pixel-art-xl": 1.2}"#),
            ("strength", b"0.5"),
            ("guidance_scale", b"7.5"),
            ("image_guidance_scale", b"1.5"),
            ("negative_prompt", b"blurry"),
            ("safety_check", b"false"),
            ("seed", b"42"),
            ("num_inference_steps", b"20"),
            ("num_images_per_prompt", b"2"),
            ("output_format", b"webp"),
            ("output_quality", b"80"),
            ("previews", b"true"),
        ]),
    ];
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("multipart/form-data; boundary={BOUNDARY}")).unwrap(),
    );
    Fuzz::new("multipart_form", seeds)
        .dictionary(&[
            "\r\n",
            "--",
            BOUNDARY,
            "Content-Disposition: form-data; name=\"",
            "filename=\"",
            "Content-Type: ",
            "\"; ",
            "image",
            "prompt",
        ])
        .run(|input| {
            let body = Bytes::copy_from_slice(input);
            futures::executor::block_on(Form::read(&headers, body)).is_ok_and(|f| check(&f))
        });
}

#[test]
fn fuzz_json_request() {
    use base64::Engine as _;
    let image = base64::engine::general_purpose::STANDARD.encode(small_image());
    let seeds = vec![
        format!(r#"{{"prompt": "a hat", "image": "data:image/png;base64,{image}"}}"#),
        format!(
            r#"{{"prompt": "a hat", "image": "{image}", "model_id": "{MODEL}", "seed": 7,
                "loras": {{"nerijs/pixel-art-xl": 1.2}}, "strength": 0.8, "safety_check": false,
                "num_inference_steps": 4, "num_images_per_prompt": 3, "negative_prompt": null,
                "output_format": "jpeg", "output_quality": 1}}"#
        ),
    ];
    Fuzz::new(
        "json_request",
        seeds.into_iter().map(String::into_bytes).collect(),
    )
    .dictionary(&[
        "\"", "\\u0000", "\\ud800", "{", "}", "[", "]", ":", ",", "null", "true", "-1e400",
        "data:", ";base64,", "=",
    ])
    .run(|input| Form::from_json(input).is_ok_and(|f| check(&f)));
}

#[test]
fn fuzz_loras() {
    let seeds = [
        r#"{"nerijs/pixel-art-xl": 1.2}"#,
        r#"{"latent-consistency/lcm-lora-sdxl": 1.0, "nerijs/pixel-art-xl": "0.5", "a/b": 0}"#,
        "{}",
        "",
    ];
    Fuzz::new(
        "loras",
        seeds.iter().map(|s| s.as_bytes().to_vec()).collect(),
    )
    .dictionary(&[
        "\"", "\\\"", "{", "}", ":", ",", "1e999", "NaN", "true", "../", "\\u0000",
    ])
    .run(|input| parse_loras(&String::from_utf8_lossy(input)).is_ok());
}
