//! Request bodies: JSON parsing with our error format, and the digest idempotency keys compare.
//!
//! Invariant: every malformed, mistyped or oversized body is a 4xx `ErrorBody` saying what was
//! wrong; nothing reaches a handler unparsed.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// A parsed JSON body and the SHA-256 (hex) of its bytes.
#[derive(Debug)]
pub struct ApiJson<T> {
    pub value: T,
    pub digest: String,
}

/// Parses a JSON object body with a clear message on failure. Every body is an object, so a
/// bare array, number or `null` is refused before any field is read. The body is parsed once,
/// straight into `T` (not through a `serde_json::Value` tree: a commit carries kilobytes of
/// profile JSON, and building the tree and then taking it apart doubled the server's work).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let not_json = |error: serde_json::Error| {
        let what = match error.classify() {
            serde_json::error::Category::Eof => "the JSON body ended early",
            _ => "the body is not valid JSON",
        };
        ApiError::bad_request(format!("{what}: {error}"))
    };
    let starts_as_object = bytes.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{');
    if !starts_as_object {
        // Not an object: say whether it is JSON at all.
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(error) => not_json(error),
            Ok(_) => ApiError::bad_request("the body must be a JSON object"),
        });
    }
    serde_json::from_slice(bytes).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => {
            ApiError::bad_request(format!("the JSON does not have the expected shape: {error}"))
        }
        _ => not_json(error),
    })
}

pub fn digest_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim_start().starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is over this route's size limit",
                )
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?;
        let value = parse_json(&bytes)?;
        Ok(ApiJson { value, digest: digest_hex(&bytes) })
    }
}
