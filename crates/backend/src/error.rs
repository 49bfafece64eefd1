//! The backend's one error type: a status code and a short JSON body `{error, reason}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use contract::{Cause, ErrorBody};

use crate::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
}

pub type Result<T, E = AppError> = std::result::Result<T, E>;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, cause) = match &self {
            AppError::Db(e) => (StatusCode::SERVICE_UNAVAILABLE, e.cause()),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, Cause::NotFound),
            AppError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, Cause::MethodNotAllowed),
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: cause,
            reason: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}
