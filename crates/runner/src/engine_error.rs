//! An engine failure in the client's terms, with ai-runner's words. The one place the
//! engine's errors meet the wire's.

use axum::http::StatusCode;
use tessera_api::ApiError;

/// The client's own fault (a bad parameter, a LoRA that does not exist) is a 400 with the
/// engine's message; running out of device memory gets ai-runner's advice; anything else is
/// logged and becomes ai-runner's generic 500.
pub fn engine_error(e: tessera_engine::Error) -> ApiError {
    use tessera_engine::Error;
    match e {
        Error::InvalidInput(_) | Error::InvalidModelId { .. } | Error::ModelNotFound { .. } => {
            ApiError::bad_request(e.to_string())
        }
        other => {
            let text = other.to_string();
            tracing::error!(error = %text, "image-to-image pipeline error");
            if is_out_of_memory(&text) {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Out of memory error. Try reducing input image resolution.",
                )
            } else {
                ApiError::pipeline()
            }
        }
    }
}

/// How CUDA (through candle) and the allocator word running out of memory.
fn is_out_of_memory(text: &str) -> bool {
    text.to_ascii_lowercase().contains("out of memory") || text.contains("CUDA_ERROR_OUT_OF_MEMORY")
}
