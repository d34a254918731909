//! Problem details (RFC 9457): the one error shape every route answers with.
//! Each error enum of a lower layer is mapped here, once; server-side
//! failures are logged with their cause and answered with a generic detail.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::RequestError;
use crate::domain::rate::BucketState;
use crate::ports::StoreError;
use crate::stages::agents::AgentWriteError;
use crate::stages::intake::{CancelError, SubmitError};
use crate::stages::limits::LimitError;

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds
/// until the bucket is full again) for a bucket's state.
pub(crate) fn rate_limit_headers(state: &BucketState) -> [(header::HeaderName, HeaderValue); 3] {
    let reset_secs = u64::try_from(state.reset_us)
        .unwrap_or(0)
        .div_ceil(1_000_000);
    [
        (
            header::HeaderName::from_static("ratelimit-limit"),
            HeaderValue::from(state.limit),
        ),
        (
            header::HeaderName::from_static("ratelimit-remaining"),
            HeaderValue::from(state.remaining),
        ),
        (
            header::HeaderName::from_static("ratelimit-reset"),
            HeaderValue::from(reset_secs),
        ),
    ]
}

const TYPE_BASE: &str = "https://maof.dev/problems/";
const CONTENT_TYPE: &str = "application/problem+json";

/// An `application/problem+json` error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type", serialize_with = "type_uri")]
    #[schema(value_type = String, example = "https://maof.dev/problems/invalid-request")]
    slug: &'static str,
    /// The HTTP reason phrase of `status`.
    pub title: &'static str,
    pub status: u16,
    /// What went wrong with this request, in words fit for the client.
    pub detail: String,
    /// The request field the problem is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A stable, machine-readable reason, when there is one. A 401 always
    /// has one: `token_missing`, `token_malformed`, `token_algorithm`,
    /// `token_key_unknown`, `token_signature`, `token_expired`,
    /// `token_not_yet_valid`, `token_lifetime_too_long`, `token_issuer`,
    /// `token_audience` or `token_claims`; a 403 for a role has
    /// `role_missing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "token_expired")]
    pub code: Option<&'static str>,
    /// Headers that go with the problem (`WWW-Authenticate` with a 401,
    /// `Retry-After` and `RateLimit-*` with a 429); boxed, as most problems
    /// have none and a `Problem` travels in every handler's `Err`.
    #[serde(skip)]
    headers: Option<Box<[(header::HeaderName, HeaderValue)]>>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            slug,
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            code: None,
            headers: None,
        }
    }

    pub(crate) fn with_headers(
        mut self,
        headers: impl IntoIterator<Item = (header::HeaderName, HeaderValue)>,
    ) -> Self {
        let mut all = self.headers.take().map(Vec::from).unwrap_or_default();
        all.extend(headers);
        self.headers = Some(all.into_boxed_slice());
        self
    }

    pub fn too_many_requests(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail)
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub(crate) fn with_challenge(self, challenge: &'static str) -> Self {
        self.with_headers([(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )])
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// Also the answer for another tenant's resource and for an id that
    /// cannot exist, so that a response never reveals what exists.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no such {what}"),
        )
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", detail)
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the request body must be JSON (Content-Type: application/json)",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "this method is not allowed on this path",
        )
    }

    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "no such route")
    }

    /// A failure of ours the client cannot fix. The cause goes to the log,
    /// never into the response.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred",
        )
    }

    /// A backend (store, queue) that failed and may work on a retry.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "backend unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service is temporarily unavailable; retry later",
        )
    }

    /// A store failure where no store outcome has a meaning for the client.
    pub fn server(e: StoreError) -> Self {
        match e {
            StoreError::Backend(_) => Self::unavailable(&e),
            _ => Self::internal(&e),
        }
    }
}

/// The `type` member: the slug under the problems' base URI. Kept as a
/// slug so that a `Problem` stays small enough to return by value.
fn type_uri<S: serde::Serializer>(slug: &&'static str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{TYPE_BASE}{slug}"))
}

impl IntoResponse for Problem {
    fn into_response(mut self) -> Response {
        let status = self.status();
        let extra = self.headers.take();
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        for (name, value) in extra.map(Vec::from).unwrap_or_default() {
            headers.insert(name, value);
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}

impl From<RequestError> for Problem {
    fn from(e: RequestError) -> Self {
        let problem = if e.is_too_large() {
            Problem::too_large(e.to_string())
        } else {
            Problem::unprocessable(e.to_string())
        };
        problem.with_field(e.field())
    }
}

impl From<SubmitError> for Problem {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(e) => e.into(),
            SubmitError::KeyMismatch => {
                Problem::unprocessable(e.to_string()).with_field("idempotency_key")
            }
            SubmitError::NotOffered(detail) => Problem::unprocessable(detail),
            SubmitError::ContentBlocked { field, .. } => Problem::unprocessable(e.to_string())
                .with_code("content_blocked")
                .with_field(field),
            SubmitError::Limited(LimitError::Limited {
                retry_after, state, ..
            }) => {
                let retry = HeaderValue::from(retry_after.as_secs());
                Problem::too_many_requests(e.to_string())
                    .with_headers([(header::RETRY_AFTER, retry)])
                    .with_headers(rate_limit_headers(&state))
            }
            SubmitError::Limited(LimitError::TooLarge { .. }) => {
                Problem::unprocessable(e.to_string()).with_field("content")
            }
            SubmitError::Limited(LimitError::Store(e)) => Problem::server(e),
            SubmitError::Store(e) => Problem::server(e),
            SubmitError::Queue(_) => Problem::unavailable(&e),
        }
    }
}

impl From<CancelError> for Problem {
    fn from(e: CancelError) -> Self {
        match e {
            CancelError::NotFound => Problem::not_found("task"),
            CancelError::AlreadyFinished(_) => Problem::conflict(e.to_string()),
            CancelError::NotOwn => Problem::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
                .with_code("not_own_task"),
            CancelError::Store(e) => Problem::server(e),
        }
    }
}

/// Registry outcomes for a write: each has a meaning for the client.
pub(crate) fn registry_write(e: StoreError) -> Problem {
    match e {
        StoreError::NotFound => Problem::not_found("agent"),
        StoreError::AlreadyExists => {
            Problem::conflict("the agent already exists (If-None-Match: * was sent)")
        }
        StoreError::VersionConflict { current: Some(v) } => Problem::conflict(format!(
            "the agent changed since it was read: it is now at version {v}"
        )),
        StoreError::VersionConflict { current: None } => {
            Problem::conflict("the agent does not exist at the version in If-Match")
        }
        e => Problem::server(e),
    }
}

impl From<AgentWriteError> for Problem {
    fn from(e: AgentWriteError) -> Self {
        match e {
            AgentWriteError::Invalid(e) => {
                Problem::unprocessable(e.to_string()).with_field(e.field())
            }
            AgentWriteError::SecretScope(_) => {
                Problem::unprocessable(e.to_string()).with_field("secret")
            }
            AgentWriteError::PlatformId(_) => Problem::conflict(e.to_string()),
            AgentWriteError::TooMany => Problem::unprocessable(e.to_string()).with_field("id"),
            AgentWriteError::Store(e) => registry_write(e),
        }
    }
}

impl From<BytesRejection> for Problem {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large(format!(
                "the request body is larger than {} bytes",
                super::MAX_BODY_BYTES
            ))
        } else {
            Problem::bad_request(e.body_text())
        }
    }
}

impl From<QueryRejection> for Problem {
    fn from(e: QueryRejection) -> Self {
        Problem::bad_request(e.body_text())
    }
}

/// A path segment that does not decode names nothing that exists.
pub(crate) fn path_not_found(what: &'static str) -> impl Fn(PathRejection) -> Problem {
    move |_| Problem::not_found(what)
}
