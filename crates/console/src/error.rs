//! The one error shape of the API (API.md): `{"error": {"code", "message", "problems"?}}` with
//! the right status, and the extractors that turn bad input into it.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// One problem with a field of the request, as a JSON pointer and a sentence.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldProblem {
    pub path: String,
    pub message: String,
}

impl FieldProblem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldProblem {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The error body: `{"error": ErrorDetail}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`invalid_policy`, `not_found`, …).
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
    /// Every problem with the input, when there are several to show.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<FieldProblem>,
}

/// An API error: a status, a code and a message, with the problems of invalid input.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<FieldProblem>,
    /// Seconds, for `Retry-After` on 429 and 503.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 422 with one problem at `path`.
    pub fn invalid(code: &'static str, path: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut error = Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message.clone());
        error.problems.push(FieldProblem::new(path, message));
        error
    }

    /// 422 with every problem; the message counts them.
    pub fn invalid_all(code: &'static str, what: &str, problems: Vec<FieldProblem>) -> Self {
        let n = problems.len();
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            format!("{what} has {n} problem{}", if n == 1 { "" } else { "s" }),
        );
        error.problems = problems;
        error
    }

    pub fn too_many(message: impl Into<String>, retry_after: u64) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", message);
        error.retry_after = Some(retry_after.max(1));
        error
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side; it has been logged",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                problems: self.problems,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<portcullis_store::Error> for ApiError {
    fn from(error: portcullis_store::Error) -> Self {
        use portcullis_store::Error as E;
        match error {
            E::NotFound => ApiError::not_found("resource"),
            E::Conflict { constraint } => ApiError::conflict(
                "conflict",
                format!("this conflicts with an existing record ({constraint})"),
            ),
            E::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                let mut error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; try again shortly",
                );
                error.retry_after = Some(5);
                error
            }
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::internal()
            }
        }
    }
}

/// `axum::Json` whose rejections have the API's shape: 400 for malformed JSON, 415 without a
/// JSON content type, 413 over the body limit, 422 for a body of the wrong shape (wrong types,
/// unknown or missing fields), with serde's sentence.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::invalid(
            "invalid_body",
            "",
            format!(
                "the body does not have the expected shape: {}",
                serde_cause(&e.body_text())
            ),
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "malformed_json",
            format!(
                "the body is not valid JSON: {}",
                serde_cause(&e.body_text())
            ),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the body is larger than the 1 MiB limit",
        ),
        other => ApiError::bad_request("bad_request", other.body_text()),
    }
}

/// axum's text is "Failed to deserialize the JSON body into the target type: {serde}"; keep
/// serde's part, which names the field and the line.
fn serde_cause(text: &str) -> String {
    text.split_once(": ")
        .map(|(_, cause)| cause.to_owned())
        .unwrap_or_else(|| text.to_owned())
}

/// `axum::extract::Path` whose rejection is a 404: an id that does not parse names nothing.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => {
                Err(ApiError::not_found("resource"))
            }
            Err(other) => {
                tracing::error!(error = %other.body_text(), "path extraction failed");
                Err(ApiError::internal())
            }
        }
    }
}

/// `axum::extract::Query` whose rejection is a 400 in the API's shape.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e: QueryRejection| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// A JSON body that may be left out (an empty body): `None` then. A body that is there must be
/// valid, with the same answers as [`Json`].
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "the body is larger than the 1 MiB limit",
                    )
                } else {
                    ApiError::bad_request("bad_request", e.body_text())
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        serde_json::from_slice(&bytes)
            .map(|v| OptionalJson(Some(v)))
            .map_err(|e| {
                if e.is_data() {
                    ApiError::invalid(
                        "invalid_body",
                        "",
                        format!("the body does not have the expected shape: {e}"),
                    )
                } else {
                    ApiError::bad_request(
                        "malformed_json",
                        format!("the body is not valid JSON: {e}"),
                    )
                }
            })
    }
}
