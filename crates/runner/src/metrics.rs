//! Prometheus metrics of one runner: requests by status, queue depth, inference time,
//! images made and clients that gave up. Each runner has a recorder of its own rather than the process-wide one, so
//! that several runners in a process (`tessera serve`, tests) keep separate counts.

use std::sync::Arc;

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

const REQUESTS: &str = "tessera_runner_requests_total";
const QUEUE_DEPTH: &str = "tessera_runner_queue_depth";
const INFERENCE_SECONDS: &str = "tessera_runner_inference_seconds";
const IMAGES: &str = "tessera_runner_images_generated_total";
const CLIENTS_GONE: &str = "tessera_runner_clients_gone_total";

/// Bucket bounds of the inference time histogram: from a turbo model on a GPU (well under a
/// second) to a 100-step edit on a CPU (minutes).
const SECONDS_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(INFERENCE_SECONDS.into()), SECONDS_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Self {
            recorder: Arc::new(recorder),
            handle,
        };
        // Present from the start, so that a scrape before the first request sees them.
        metrics.set_queue_depth(0);
        metrics.images_generated(0);
        metrics
    }

    /// One answered `/image-to-image` request, by HTTP status code.
    pub fn request(&self, status: u16) {
        let key = Key::from_parts(REQUESTS, vec![Label::new("status", status.to_string())]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.recorder
            .register_gauge(&Key::from_name(QUEUE_DEPTH), &METADATA)
            .set(depth as f64);
    }

    /// How long the model worked on one request (all its images).
    pub fn inference_seconds(&self, secs: f64) {
        self.recorder
            .register_histogram(&Key::from_name(INFERENCE_SECONDS), &METADATA)
            .record(secs);
    }

    pub fn images_generated(&self, count: u64) {
        self.recorder
            .register_counter(&Key::from_name(IMAGES), &METADATA)
            .increment(count);
    }

    /// A client that disconnected before its images were ready.
    pub fn client_gone(&self) {
        self.recorder
            .register_counter(&Key::from_name(CLIENTS_GONE), &METADATA)
            .increment(1);
    }

    /// The Prometheus text exposition of everything recorded so far.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
