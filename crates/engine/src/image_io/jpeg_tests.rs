//! JPEG decoding against Pillow on the corpus of tests/fixtures/jpeg (made by its
//! make_corpus.py), and the ways a bad JPEG must fail: with an error saying so, never a
//! panic, an abort or a huge allocation.

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::Device;
use tessera_testkit::fixtures_dir;

use super::*;

fn corpus_dir() -> PathBuf {
    fixtures_dir().join("jpeg/corpus")
}

fn corpus_file(name: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(name)).unwrap()
}

/// Where `got` first differs from `want`, in words; `None` when they are equal.
fn first_difference(got: &RgbImage, want: &RgbImage) -> Option<String> {
    if (got.width, got.height) != (want.width, want.height) {
        return Some(format!(
            "decoded {}x{}, Pillow {}x{}",
            got.width, got.height, want.width, want.height
        ));
    }
    let at = got
        .data
        .chunks_exact(3)
        .zip(want.data.chunks_exact(3))
        .position(|(a, b)| a != b)?;
    let differing = got
        .data
        .iter()
        .zip(&want.data)
        .filter(|(a, b)| a != b)
        .count();
    let (x, y) = (at as u32 % got.width, at as u32 / got.width);
    Some(format!(
        "first differing pixel ({x}, {y}): {:?}, Pillow {:?}; {differing} of {} bytes differ",
        &got.data[at * 3..at * 3 + 3],
        &want.data[at * 3..at * 3 + 3],
        want.data.len()
    ))
}

fn image_of(t: &candle_core::Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    let data = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    RgbImage::new(w as u32, h as u32, data).unwrap()
}

/// Every file against Pillow; damaged files, when libjpeg-turbo's SIMD code is not built in,
/// against libjpeg-turbo's C path instead (see the `jpeg` module for why they differ).
#[test]
fn every_corpus_jpeg_decodes_as_pillow_bit_for_bit() {
    let path = fixtures_dir().join("jpeg/expected.safetensors");
    let expected = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let files: BTreeSet<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let listed: BTreeSet<String> = expected
        .keys()
        .filter(|k| !k.starts_with("c-path/"))
        .cloned()
        .collect();
    assert_eq!(files, listed, "corpus files and expected images differ");
    assert!(files.len() >= 40, "only {} corpus files", files.len());
    let simd = jpeg::simd_idct();
    eprintln!("libjpeg-turbo SIMD: {simd}");
    let mut failures = Vec::new();
    for name in &files {
        let c_path = expected.get(&format!("c-path/{name}"));
        let want = match c_path {
            Some(c) if !simd => image_of(c),
            _ => image_of(&expected[name]),
        };
        if let Some(c) = c_path {
            assert_ne!(image_of(c), image_of(&expected[name]), "{name}: no damage");
        }
        match read(&corpus_dir().join(name)) {
            Ok(got) => {
                failures.extend(first_difference(&got, &want).map(|d| format!("{name}: {d}")))
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} files differ from Pillow:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

fn error_message(bytes: &[u8]) -> String {
    match decode(bytes) {
        Err(Error::InvalidInput(msg)) => msg,
        Err(other) => panic!("expected InvalidInput, got {other:?}"),
        Ok(img) => panic!("expected an error, decoded {}x{}", img.width, img.height),
    }
}

/// The offset of the first marker segment `code` (its 0xFF byte), before the first scan.
fn segment(bytes: &[u8], code: u8) -> usize {
    let mut pos = 2;
    loop {
        assert_eq!(bytes[pos], 0xFF, "lost the marker chain at {pos}");
        if bytes[pos + 1] == code {
            return pos;
        }
        assert_ne!(bytes[pos + 1], 0xDA, "no marker {code:#x} before the scan");
        pos += 2 + usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
    }
}

#[test]
fn a_truncated_jpeg_is_refused_at_every_cut() {
    let bytes = corpus_file("odd_422_progressive.jpg");
    for cut in [4, 100, bytes.len() / 3, bytes.len() / 2, bytes.len() - 2] {
        assert_eq!(
            error_message(&bytes[..cut]),
            "the JPEG image is truncated",
            "cut at {cut}"
        );
    }
}

#[test]
fn corrupt_headers_are_errors_naming_what_libjpeg_found() {
    let good = corpus_file("wide_420_q90.jpg");
    // A Huffman table whose code counts add up to more than 256 codes.
    let mut huffman = good.clone();
    let dht = segment(&good, 0xC4);
    huffman[dht + 5..dht + 21].fill(0xF0);
    // A frame of 12-bit samples, which Pillow's 8-bit libjpeg refuses as well.
    let mut precision = good.clone();
    let sof = segment(&good, 0xC0);
    precision[sof + 4] = 12;
    // A frame declaring no components.
    let mut components = good.clone();
    components[sof + 9] = 0;
    // A quantisation table with an impossible index (libjpeg: "Bogus DQT index").
    let mut quant = good.clone();
    quant[segment(&good, 0xDB) + 4] = 0x07;
    for (what, bytes, says) in [
        ("huffman", huffman, "Huffman table"),
        ("precision", precision, "precision 12"),
        ("components", components, "Empty JPEG image"),
        ("quant", quant, "DQT index"),
    ] {
        let msg = error_message(&bytes);
        assert!(
            msg.starts_with("the JPEG image is corrupt: ") && msg.contains(says),
            "{what}: {msg}"
        );
    }
}

#[test]
fn huge_declared_dimensions_are_refused_before_decoding() {
    // 60000x50000 pixels (9 GB of RGB) declared by a 4 kB file.
    let mut bytes = corpus_file("wide_420_q90.jpg");
    let sof = segment(&bytes, 0xC0);
    bytes[sof + 5..sof + 7].copy_from_slice(&50000u16.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    let started = std::time::Instant::now();
    assert_eq!(
        error_message(&bytes),
        "image is 60000x50000; the largest accepted is 8192x8192"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn a_jpeg_with_thousands_of_scans_is_refused() {
    // The last scan of a progressive file repeated: libjpeg would decode every copy.
    let bytes = corpus_file("square_444_progressive.jpg");
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    let end = bytes.len() - 2;
    let mut crafted = bytes[..end].to_vec();
    for _ in 0..jpeg::MAX_SCANS {
        crafted.extend_from_slice(&bytes[last_scan..end]);
    }
    crafted.extend_from_slice(&[0xFF, 0xD9]);
    let msg = error_message(&crafted);
    assert!(
        msg.starts_with("the JPEG image has ") && msg.ends_with("scans; at most 1000 are accepted"),
        "{msg}"
    );
    // The file as it is decodes.
    assert!(decode(&bytes).is_ok());
}

#[test]
fn random_damage_never_panics() {
    // Bytes of every corpus file overwritten at pseudo-random places (a fixed xorshift
    // stream): each decode either succeeds or says what is wrong.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let (mut decoded, mut refused) = (0, 0);
    for name in &names {
        let good = corpus_file(name);
        for _ in 0..12 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            match decode(&bytes) {
                Ok(img) => {
                    assert_eq!(img.data.len(), img.width as usize * img.height as usize * 3);
                    decoded += 1;
                }
                Err(Error::InvalidInput(_)) => refused += 1,
                Err(other) => panic!("{name}: expected InvalidInput, got {other:?}"),
            }
        }
    }
    // Both outcomes happen: most damage lands in the scans, some in the headers.
    assert!(
        decoded > 0 && refused > 0,
        "{decoded} decoded, {refused} refused"
    );
}

#[test]
fn cmyk_conversion_is_pillows_formula() {
    // Pillow: Image.new("CMYK", (1, 1), (c, m, y, k)).convert("RGB") for these values; the
    // decoder sees Adobe's inverted samples, 255 - v.
    for (cmyk, rgb) in [
        ([0u8, 0, 0, 0], [255u8, 255, 255]),
        ([255, 255, 255, 255], [0, 0, 0]),
        ([10, 128, 200, 64], [184, 95, 41]),
        ([255, 0, 1, 254], [0, 1, 1]),
    ] {
        let stored = cmyk.map(|v| 255 - v);
        assert_eq!(jpeg::adobe_cmyk_to_rgb(&stored), rgb, "{cmyk:?}");
    }
}
