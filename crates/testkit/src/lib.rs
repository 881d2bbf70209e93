//! What tessera's tests share, in every crate: where the reference fixtures are, how to run
//! the `tessera` binary, how to build requests and read answers, and how far apart two
//! tensors or images are. A dev-dependency only: nothing here ships, so its helpers may
//! panic — a test wants to fail loudly where a fixture is missing.

pub mod fuzz;

use std::io::Cursor;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use base64::Engine as _;
use candle_core::Tensor;
use serde_json::Value;

/// The repository's `tests/fixtures` folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// `tests/fixtures/diffusers-parity`: the tiny models and what diffusers computes with them.
pub fn parity_dir() -> PathBuf {
    fixtures_dir().join("diffusers-parity")
}

/// The names of the diffusers parity cases (`cases/NAME.json`), sorted.
pub fn parity_case_names() -> Vec<String> {
    let cases = parity_dir().join("cases");
    let entries = std::fs::read_dir(&cases).unwrap_or_else(|e| panic!("{}: {e}", cases.display()));
    let mut names: Vec<String> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Largest absolute element-wise difference (computed in f32). Panics, naming both shapes,
/// when the shapes differ.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "comparing tensors of different shapes");
    let f32 = |t: &Tensor| t.to_dtype(candle_core::DType::F32).expect("f32 conversion");
    (f32(a) - f32(b))
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("difference of two tensors on one device")
}

/// Largest difference between two 8-bit images of the same size, in levels.
pub fn max_level_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "comparing images of different sizes"
    );
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// The `tessera` binary (`env!("CARGO_BIN_EXE_tessera")` in the CLI's tests) with none of
/// the service's settings inherited from the shell that runs the tests, and no downloads.
pub fn tessera(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    for var in [
        "MODEL_DIR",
        "MODEL_ID",
        "PORT",
        "TESSERA_API_KEYS",
        "AUTH_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HF_HUB_OFFLINE", "1");
    cmd
}

/// A server process, killed when the test ends, however it ends.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Waits until `GET {base}/health` answers 200; panics if the process exits first or
    /// nothing answers within two minutes.
    pub fn wait_healthy(&mut self, base: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(res) = reqwest::blocking::get(format!("{base}/health")) {
                if res.status() == reqwest::StatusCode::OK {
                    return;
                }
            }
            if let Some(status) = self.0.try_wait().unwrap() {
                panic!("the server exited: {status}");
            }
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `width`×`height` PNG of a gradient.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 40) as u8, (y * 40) as u8, 128])
    });
    encode_png(&img)
}

pub fn encode_png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// An image-to-image form: `image` as a PNG file part, then the text fields.
pub fn form(image: Vec<u8>, fields: &[(&str, &str)]) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(image)
        .file_name("input.png")
        .mime_str("image/png")
        .unwrap();
    fields.iter().fold(
        reqwest::multipart::Form::new().part("image", part),
        |f, (k, v)| f.text(k.to_string(), v.to_string()),
    )
}

/// `detail.msg` of an error answer in ai-runner's shape; panics when it has none.
pub fn msg(body: &Value) -> &str {
    body["detail"]["msg"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail.msg in {body}"))
}

/// `GET url` (with a bearer `key`), its status and JSON body.
pub async fn get_json(url: &str, key: Option<&str>) -> (reqwest::StatusCode, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    (status, body)
}

/// The image of a `data:image/png;base64,...` URL.
pub fn decode_data_url(url: &str) -> image::RgbImage {
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("not a PNG data URL: {}", &url[..url.len().min(40)]));
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    image::load_from_memory(&png).expect("a PNG").into_rgb8()
}
