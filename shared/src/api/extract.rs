//! Reading request bodies and headers into domain input, with every failure
//! a problem response (axum's own rejections are plain text).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::problem::Problem;

/// Parses a JSON object body. Syntax errors, another JSON type, unknown and
/// missing fields are 400 with serde's message, which names the field; a
/// body over the limit is 413.
pub(crate) fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Problem> {
    if !is_json(headers) {
        return Err(Problem::unsupported_media_type());
    }
    let body = body?;
    // Every body is an object: serde would also read a struct from an
    // array of its fields (`[null, null]`), which no client means.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::bad_request("the body must be a JSON object"));
    }
    serde_json::from_slice(&body).map_err(|e| Problem::bad_request(e.to_string()))
}

/// A missing Content-Type is taken as JSON (curl without -H); another one is refused.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.rsplit_once('+').is_some_and(|(ty, suffix)| {
            ty.starts_with("application/") && suffix.eq_ignore_ascii_case("json")
        })
}

/// A header as text, if present; a value that is not visible ASCII is 400.
pub(crate) fn header_text<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, Problem> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                Problem::bad_request(format!("the {name} header must be ASCII")).with_field(name)
            })
        })
        .transpose()
}
