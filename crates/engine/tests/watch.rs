//! The editor's step watcher on the tiny instruct-pix2pix fixture: every step is reported
//! with latents a preview can be made of, and answering `Break` stops the denoising loop
//! at once, in the middle of an image, keeping the images finished before.

use std::ops::ControlFlow;
use std::sync::Arc;

use candle_core::{DType, Device};
use tessera_engine::editor::{EditRequest, Editor, EditorConfig};
use tessera_engine::hub::ModelStore;
use tessera_engine::image_io::{self, RgbImage};
use tessera_engine::pipelines::EditParams;
use tessera_engine::safety::{SharedSafetyChecker, DEFAULT_MODEL_ID};
use tessera_testkit::parity_dir;

fn editor() -> Editor {
    let store = ModelStore::new(std::env::temp_dir());
    Editor::load(&EditorConfig {
        model_id: parity_dir()
            .join("models/tiny-instruct-pix2pix")
            .to_string_lossy()
            .into_owned(),
        safety: Arc::new(SharedSafetyChecker::new(
            store.clone(),
            DEFAULT_MODEL_ID,
            Device::Cpu,
        )),
        store,
        device: Device::Cpu,
        dtype: DType::F32,
    })
    .unwrap()
}

fn input() -> RgbImage {
    image_io::read(&parity_dir().join("inputs/square.png")).unwrap()
}

fn request(steps: usize, images: usize) -> EditRequest {
    EditRequest {
        params: EditParams {
            prompt: "make it blue".into(),
            num_inference_steps: steps,
            ..EditParams::default()
        },
        loras: Vec::new(),
        seed: 11,
        num_images: images,
        safety_check: false,
    }
}

#[test]
fn every_step_is_reported_with_a_latent_preview() {
    let mut editor = editor();
    let image = input();
    let mut seen = Vec::new();
    let out = editor
        .edit_watched(&image, &request(3, 2), &mut |step| {
            let preview = step.preview().unwrap();
            // One RGB pixel per latent pixel: 1/8 of the image's sides.
            assert_eq!(
                (preview.width, preview.height),
                (image.width / 8, image.height / 8)
            );
            assert_eq!(
                preview.data.len(),
                (preview.width * preview.height * 3) as usize
            );
            seen.push((step.image, step.images, step.step, step.steps));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(
        seen,
        [
            (0, 2, 1, 3),
            (0, 2, 2, 3),
            (0, 2, 3, 3),
            (1, 2, 1, 3),
            (1, 2, 2, 3),
            (1, 2, 3, 3)
        ]
    );
    // The watched edit makes what the plain one makes.
    let plain = editor
        .edit(&image, &request(3, 2), &mut |_, _| {}, &|| true)
        .unwrap();
    assert_eq!(plain[1].image.data, out[1].image.data);
}

#[test]
fn break_stops_the_loop_before_the_next_step_and_keeps_finished_images() {
    let mut editor = editor();
    let image = input();
    let mut steps = Vec::new();
    let out = editor
        .edit_watched(&image, &request(4, 3), &mut |step| {
            steps.push((step.image, step.step));
            if (step.image, step.step) == (1, 2) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(steps, [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (1, 2)]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seed, 11);

    // `edit`'s keep_going is asked after every step too.
    let calls = std::cell::Cell::new(0);
    let mut counted = Vec::new();
    let out = editor
        .edit(
            &image,
            &request(4, 1),
            &mut |done, total| counted.push((done, total)),
            &|| {
                calls.set(calls.get() + 1);
                calls.get() <= 2
            },
        )
        .unwrap();
    // Asked before the edit and after step 1: going on; after step 2: stop.
    assert_eq!(counted, [(1, 4), (2, 4)]);
    assert!(out.is_empty());
}
