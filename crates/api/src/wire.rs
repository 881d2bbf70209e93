//! The wire types of ai-runner's image-to-image API, named as in its OpenAPI document (which
//! go-livepeer's generated client is built from). The runner's document is generated from
//! these types, the request ([`crate::request::ImageToImage`]) and its route handlers.

#![allow(non_camel_case_types)] // The schema names are ai-runner's, not Rust's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{AnyOfBuilder, Array, Object, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, ToSchema};

/// Response model for image generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageResponse {
    /// The generated images.
    pub images: Vec<Media>,
}

/// A media object containing information about the generated media.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Media {
    /// The URL where the media can be accessed.
    pub url: String,
    /// The seed used to generate the media.
    pub seed: u64,
    /// Whether the media was flagged as NSFW.
    // Read leniently (a runner that leaves it out flagged nothing), documented as required,
    // as ai-runner always sends it.
    #[serde(default)]
    #[schema(required = true)]
    pub nsfw: bool,
}

/// What `GET /health` reports. `IDLE` belongs to ai-runner's schema (its on-demand
/// pipelines); this runner, which loads its model at start, says `OK` once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Health {
    Loading,
    Ok,
    Error,
    Idle,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthCheck {
    /// The health status of the pipeline
    #[schema(schema_with = health_schema)]
    pub status: Health,
}

/// `Health` as ai-runner's schema has it: a string enum, inline.
fn health_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["LOADING", "OK", "ERROR", "IDLE"]))
        .description(Some("The health status of the pipeline"))
        .build()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    pub pipeline: String,
    pub model_id: String,
    /// The version of the Runner
    pub version: String,
}

/// Model for detailed GPU compute information.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GPUComputeInfo {
    pub id: String,
    pub name: String,
    pub memory_total: u64,
    pub memory_free: u64,
    pub major: u32,
    pub minor: u32,
}

/// Model for GPU utilization statistics.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GPUUtilizationInfo {
    pub id: String,
    pub name: String,
    pub memory_total: u64,
    pub memory_free: u64,
    pub utilization_compute: u32,
    pub utilization_memory: u32,
}

/// Response model for GPU information.
#[derive(Debug, Serialize, ToSchema)]
pub struct HardwareInformation {
    pub pipeline: String,
    pub model_id: String,
    /// By device index.
    pub gpu_info: BTreeMap<u32, GPUComputeInfo>,
}

/// Response model for real-time GPU statistics.
#[derive(Debug, Serialize, ToSchema)]
pub struct HardwareStats {
    pub pipeline: String,
    pub model_id: String,
    /// By device index.
    pub gpu_stats: BTreeMap<u32, GPUUtilizationInfo>,
}

/// API error response model.
#[derive(Debug, Serialize, ToSchema)]
pub struct APIError {
    /// The error message.
    pub msg: String,
}

/// HTTP error response model.
#[derive(Debug, Serialize, ToSchema)]
pub struct HTTPError {
    /// Detailed error information.
    pub detail: APIError,
}

/// One entry of a FastAPI validation error (see `error::FieldError`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationError {
    /// Where the problem is: `["body", field]` here; FastAPI's schema allows list indices.
    #[schema(schema_with = location_schema)]
    pub loc: Vec<String>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The rejected text, as pydantic echoes it (absent for a missing field).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub input: Option<String>,
}

/// FastAPI's `loc`: an array of strings or integers.
fn location_schema() -> Array {
    let item = AnyOfBuilder::new()
        .item(Object::with_type(Type::String))
        .item(Object::with_type(Type::Integer));
    Array::new(item)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HTTPValidationError {
    pub detail: Vec<ValidationError>,
}

/// ai-runner's `HTTPBearer` security scheme, which `genImageToImage` requires.
pub struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "HTTPBearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}
