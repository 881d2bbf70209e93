//! Checks against Pillow and diffusers: the reference data is written by
//! tests/fixtures/image_io/make_fixtures.py, and the pipeline fixtures' final images.

use std::collections::HashMap;
use std::path::PathBuf;
use tessera_testkit::fixtures_dir;

use candle_core::{DType, Device, Tensor};

use super::*;

fn parity_input(name: &str) -> PathBuf {
    fixtures_dir().join(format!("diffusers-parity/inputs/{name}.png"))
}

fn load(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures_dir().join("image_io").join(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An HxWx3 uint8 reference tensor as an image.
fn image_of(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    let data = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    RgbImage::new(w as u32, h as u32, data).unwrap()
}

/// Panics with the number of differing bytes and the largest difference.
fn assert_same_pixels(got: &RgbImage, want: &RgbImage, what: &str) {
    assert_eq!(
        (got.width, got.height),
        (want.width, want.height),
        "{what}: size"
    );
    let diffs: Vec<u8> = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| a.abs_diff(*b))
        .filter(|&d| d > 0)
        .collect();
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} bytes differ, by up to {}",
        diffs.len(),
        want.data.len(),
        diffs.iter().max().unwrap()
    );
}

fn invalid_input_message(result: Result<RgbImage>) -> String {
    match result {
        Err(Error::InvalidInput(msg)) => msg,
        Err(other) => panic!("expected InvalidInput, got {other:?}"),
        Ok(img) => panic!("expected an error, decoded {}x{}", img.width, img.height),
    }
}

fn source_image(name: &str, refs: &HashMap<String, Tensor>) -> RgbImage {
    match refs.get(&format!("src/{name}")) {
        Some(t) => image_of(t),
        None => read(&parity_input(name)).unwrap(),
    }
}

#[test]
fn resize_matches_pillow_bit_for_bit() {
    let refs = load("resize.safetensors");
    let mut checked = [0usize; 2];
    for (key, want) in &refs {
        let parts: Vec<&str> = key.split('/').collect();
        let filter = match parts[0] {
            "lanczos" => Filter::Lanczos,
            "bicubic" => Filter::Bicubic,
            _ => continue,
        };
        let (w, h) = parts[2].split_once('x').unwrap();
        let src = source_image(parts[1], &refs);
        let got = resize(&src, w.parse().unwrap(), h.parse().unwrap(), filter);
        assert_same_pixels(&got, &image_of(want), key);
        checked[filter as usize] += 1;
    }
    assert!(
        checked.iter().all(|&n| n >= 40),
        "fixtures missing: {checked:?}"
    );
}

#[test]
fn resize_to_the_same_size_is_a_copy_as_in_pillow() {
    let img = read(&parity_input("odd")).unwrap();
    assert_eq!(resize_lanczos(&img, img.width, img.height), img);
    assert_eq!(resize(&img, 83, 70, Filter::Bicubic), img);
}

#[test]
fn preprocess_matches_diffusers() {
    let refs = load("preprocess.safetensors");
    assert_eq!(refs.len(), 6);
    for (key, want) in &refs {
        let (name, scale) = key.split_once('/').unwrap();
        let img = read(&parity_input(name)).unwrap();
        let got = preprocess(&img, scale.parse().unwrap(), &Device::Cpu).unwrap();
        assert_eq!(got.dims(), want.dims(), "{key}");
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 1e-7, "{key}: max difference {diff}");
    }
}

#[test]
fn preprocess_size_rounds_down_to_the_scale_factor() {
    assert_eq!(preprocess_size(83, 70, 8).unwrap(), (80, 64));
    assert_eq!(preprocess_size(83, 70, 16).unwrap(), (80, 64));
    assert_eq!(preprocess_size(96, 64, 8).unwrap(), (96, 64));
}

#[test]
fn an_image_smaller_than_one_latent_pixel_is_refused() {
    let img = RgbImage::new(2, 2, vec![128; 12]).unwrap();
    match preprocess(&img, 8, &Device::Cpu) {
        Err(Error::InvalidInput(msg)) => {
            assert_eq!(msg, "image 2x2 is smaller than one latent pixel (8 px)")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let tall = RgbImage::new(7, 40, vec![0; 7 * 40 * 3]).unwrap();
    assert!(matches!(
        preprocess(&tall, 8, &Device::Cpu),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn decode_converts_to_rgb_as_pillow() {
    let refs = load("convert.safetensors");
    assert!(refs.len() >= 24, "fixtures missing: {}", refs.len());
    for (file, want) in &refs {
        let got = read(&fixtures_dir().join("image_io/convert").join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_same_pixels(&got, &image_of(want), file);
    }
}

#[test]
fn a_truncated_png_is_invalid_input_saying_so() {
    let bytes = std::fs::read(parity_input("square")).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 20, 40] {
        let msg = invalid_input_message(decode(&bytes[..cut]));
        assert!(msg.contains("PNG") && msg.contains("truncated"), "{msg}");
    }
}

#[test]
fn a_truncated_jpeg_is_refused_as_pillow_refuses_it() {
    // libjpeg and zune-jpeg both fill a cut-off scan with grey; Pillow raises instead (checked
    // with Pillow 13 for these cuts).
    let bytes = std::fs::read(fixtures_dir().join("image_io/convert/photo_420.jpg")).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 5, 300] {
        let msg = invalid_input_message(decode(&bytes[..cut]));
        assert_eq!(msg, "the JPEG image is truncated");
    }
    let mut padded = bytes.clone();
    padded.extend_from_slice(b"trailing bytes after the end marker");
    assert!(decode(&padded).is_ok());
}

#[test]
fn random_bytes_are_invalid_input_saying_not_an_image() {
    // A fixed xorshift stream: arbitrary bytes without a format signature.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let msg = invalid_input_message(decode(&bytes));
    assert!(msg.starts_with("not an image"), "{msg}");
    assert!(invalid_input_message(decode(&[])).starts_with("not an image"));
}

#[test]
fn read_names_the_file_in_decode_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.png");
    std::fs::write(&path, b"hello, not a picture").unwrap();
    let msg = match read(&path) {
        Err(Error::InvalidInput(msg)) => msg,
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    assert!(
        msg.contains("notes.png") && msg.contains("not an image"),
        "{msg}"
    );
    assert!(matches!(
        read(&dir.path().join("missing.png")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn png_round_trips() {
    let img = read(&parity_input("wide")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    write_png(&img, &path).unwrap();
    assert_eq!(read(&path).unwrap(), img);
    assert_eq!(decode(&encode_png(&img).unwrap()).unwrap(), img);
    let bad = RgbImage {
        width: 3,
        height: 3,
        data: vec![0; 5],
    };
    assert!(matches!(encode_png(&bad), Err(Error::InvalidInput(_))));
}

#[test]
fn to_unit_nhwc_denormalises_clamps_and_moves_channels_last() {
    // One 2x3 image in planar RGB with values inside and outside [-1, 1].
    let values: Vec<f32> = vec![
        -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, // red
        2.0, 0.25, -0.25, 0.75, -0.75, 1.25, // green
        0.0, 0.0, 1.0, 1.0, -1.0, -1.0, // blue
    ];
    let x = Tensor::from_vec(values, (1, 3, 2, 3), &Device::Cpu).unwrap();
    let y = to_unit_nhwc(&x).unwrap();
    assert_eq!(y.dims(), &[1, 2, 3, 3]);
    let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    #[rustfmt::skip]
    let want = [
        0.0, 1.0, 0.5,    0.0, 0.625, 0.5,    0.25, 0.375, 1.0,
        0.5, 0.875, 1.0,  0.75, 0.125, 0.0,   1.0, 1.0, 0.0,
    ];
    assert_eq!(got, want);
    let half = to_unit_nhwc(&x.to_dtype(DType::F16).unwrap()).unwrap();
    assert_eq!(half.dtype(), DType::F32);
}

#[test]
fn to_rgb8_matches_the_pipeline_fixtures_pngs() {
    let cases = fixtures_dir().join("diffusers-parity/cases");
    let mut checked = 0;
    for entry in std::fs::read_dir(&cases).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(case) = name.strip_suffix(".expected.safetensors") else {
            continue;
        };
        let images = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let got = to_rgb8(&images["images"]).unwrap();
        let want = read(&cases.join(format!("{case}.expected.png"))).unwrap();
        assert_same_pixels(&got[0], &want, case);
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} pipeline cases found");
}

#[test]
fn to_rgb8_rounds_half_to_even_like_numpy() {
    // f32 values whose product with 255 is exactly k + 0.5 (found with numpy), and what
    // `np.round(x * 255).astype(uint8)` gives for them: 126, 2, 0, 254.
    let ties = [1056833022u32, 1008771233, 989888641, 1065254526].map(f32::from_bits);
    let x = Tensor::from_vec(
        vec![ties[0], ties[1], ties[2], ties[3], 1.0, 0.0],
        (2, 1, 1, 3),
        &Device::Cpu,
    )
    .unwrap();
    let imgs = to_rgb8(&x).unwrap();
    assert_eq!(imgs.len(), 2);
    assert_eq!(imgs[0].data, [126, 2, 0]);
    assert_eq!(imgs[1].data, [254, 255, 0]);
}

#[test]
fn oversized_image_is_refused_from_its_header() {
    // A valid PNG header claiming 50000x50000 (tests/fixtures/image_io/huge_header.png):
    // decoding it would need 7.5 GB; it must fail at once with the sizes in the message.
    let bytes = std::fs::read(fixtures_dir().join("image_io/huge_header.png")).unwrap();
    let started = std::time::Instant::now();
    let err = decode(&bytes).unwrap_err().to_string();
    assert!(
        err.contains("50000x50000") && err.contains("8192x8192"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}
