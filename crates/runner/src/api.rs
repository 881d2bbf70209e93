//! The wire types of ai-runner's image-to-image API, named as in its OpenAPI document (which
//! go-livepeer's generated client is built from), and that document itself, generated from
//! these types and the route handlers.

#![allow(non_camel_case_types)] // The schema names are ai-runner's, not Rust's.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::schema::{AnyOfBuilder, Array, Object, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Response model for image generation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageResponse {
    /// The generated images.
    pub images: Vec<Media>,
}

/// A media object containing information about the generated media.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Media {
    /// The URL where the media can be accessed.
    pub url: String,
    /// The seed used to generate the media.
    pub seed: u64,
    /// Whether the media was flagged as NSFW.
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

/// The `POST /image-to-image` form, for the document only: the handler reads the multipart
/// body itself (see `form`), to answer in FastAPI's shapes.
#[allow(dead_code)] // Never built: only its schema is used.
#[derive(ToSchema)]
pub struct Body_genImageToImage {
    /// Text prompt(s) to guide image generation.
    pub prompt: String,
    /// Uploaded image to modify with the pipeline.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
    /// Hugging Face model ID used for image generation.
    #[schema(default = "", required = false)]
    pub model_id: String,
    /// A LoRA (Low-Rank Adaptation) model and its corresponding weight for image generation.
    /// Example: { "latent-consistency/lcm-lora-sdxl": 1.0, "nerijs/pixel-art-xl": 1.2}.
    #[schema(default = "", required = false)]
    pub loras: String,
    /// Degree of transformation applied to the reference image (0 to 1).
    #[schema(default = 0.8, required = false)]
    pub strength: f64,
    /// Encourages model to generate images closely linked to the text prompt (higher values
    /// may reduce image quality).
    #[schema(default = 7.5, required = false)]
    pub guidance_scale: f64,
    /// Degree to which the generated image is pushed towards the initial image.
    #[schema(default = 1.5, required = false)]
    pub image_guidance_scale: f64,
    /// Text prompt(s) to guide what to exclude from image generation. Ignored if
    /// guidance_scale < 1.
    #[schema(default = "", required = false)]
    pub negative_prompt: String,
    /// Perform a safety check to estimate if generated images could be offensive or harmful.
    #[schema(default = true, required = false)]
    pub safety_check: bool,
    /// Seed for random number generation.
    #[schema(required = false)]
    pub seed: u64,
    /// Number of denoising steps. More steps usually lead to higher quality images but
    /// slower inference. Modulated by strength.
    #[schema(default = 100, required = false)]
    pub num_inference_steps: u32,
    /// Number of images to generate per prompt.
    #[schema(default = 1, required = false)]
    pub num_images_per_prompt: u32,
}

/// The OpenAPI document of the routes in `routes`.
#[derive(OpenApi)]
#[openapi(
    info(title = "tessera runner", description = "An application to run AI pipelines"),
    paths(
        crate::routes::image_to_image,
        crate::routes::health,
        crate::routes::hardware_info,
        crate::routes::hardware_stats,
        crate::routes::version,
    ),
    components(schemas(Body_genImageToImage, HTTPValidationError, ValidationError)),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

/// ai-runner's `HTTPBearer` security scheme, which `genImageToImage` requires.
struct BearerScheme;

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
