//! What every HTTP provider client shares: sending with the agent's timeout,
//! classifying transport failures, reading the waits providers ask for
//! (`retry-after`, `retry-after-ms`, reset headers in their several formats),
//! and keeping keys and long bodies out of errors and logs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};

use super::outbound::{OutboundClient, OutboundError, SendError};
use crate::domain::{Agent, ErrorClass};
use crate::ports::{ChatRequest, ProviderError, Role};

/// Longest provider error message passed on to the task's owner.
pub(super) const MAX_MESSAGE_CHARS: usize = 300;
/// Longest error body written to the operator log.
pub(super) const MAX_LOGGED_BODY_CHARS: usize = 4_096;

/// An answer read to its end: status, headers and the whole body.
#[derive(Debug)]
pub(super) struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// Sends `builder` through `http` (so the outbound policy is checked, see
/// [`OutboundClient::send`]) with a total timeout of `timeout_ms` and reads
/// the whole body, at most the agent's `max_response_bytes`; a failure before
/// the body is in is a classified transport error.
pub(super) async fn send(
    agent: &Agent,
    http: &OutboundClient,
    builder: reqwest::RequestBuilder,
    timeout_ms: u64,
) -> Result<RawResponse, ProviderError> {
    let mut response = http
        .send(builder.timeout(Duration::from_millis(timeout_ms)))
        .await
        .map_err(|e| send_error(agent, e, timeout_ms))?;
    let status = response.status();
    let headers = response.headers().clone();
    let cap = agent.spec.constraints.max_response_bytes();
    let too_large = |bytes: u64| {
        ProviderError::new(
            ErrorClass::ResponseTooLarge,
            format!(
                "the provider's response is larger than this agent's cap of {cap} bytes ({bytes} bytes or more)"
            ),
        )
    };
    if let Some(length) = response.content_length().filter(|n| *n > cap) {
        return Err(too_large(length));
    }
    // Read chunk by chunk, so that a response without a length (or with a
    // false one) is cut off at the cap rather than held whole in memory.
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(agent, e, timeout_ms))?
    {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(too_large((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// A header's value, trimmed; `None` when absent, empty or not ASCII.
pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The standard waits: `retry-after-ms` (milliseconds), else `retry-after`
/// (seconds or an HTTP-date).
pub(super) fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    header(headers, "retry-after-ms")
        .and_then(parse_millis)
        .or_else(|| header(headers, "retry-after").and_then(parse_retry_after))
}

pub(super) fn parse_millis(value: &str) -> Option<Duration> {
    let millis: f64 = value.parse().ok()?;
    // try_from rejects negative, NaN and overflowing values instead of panicking.
    Duration::try_from_secs_f64(millis / 1_000.0).ok()
}

/// Seconds (integer or float), or an HTTP-date.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(until(at.with_timezone(&Utc)))
}

/// An RFC 3339 instant (Anthropic's `anthropic-ratelimit-*-reset`), as the
/// wait from now until then.
pub(super) fn parse_reset_timestamp(value: &str) -> Option<Duration> {
    let at = DateTime::parse_from_rfc3339(value).ok()?;
    Some(until(at.with_timezone(&Utc)))
}

/// The wait until `at`; an instant already past means "now".
fn until(at: DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

/// Go-style durations as OpenAI writes them: `1s`, `6m0s`, `20ms`, `1.5s`,
/// `1h2m3s`. Also reads protobuf's JSON durations (`2s`, `0.5s`), which
/// Google's `RetryInfo.retryDelay` uses.
pub(super) fn parse_reset_duration(value: &str) -> Option<Duration> {
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = value.trim();
    let mut seconds = 0.0_f64;
    let mut parts = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !is_number(c)).unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(is_number).unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3_600.0,
            "m" => 60.0,
            // A bare number is read as seconds.
            "s" | "" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        seconds += number * scale;
        parts += 1;
    }
    if parts == 0 {
        return None;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

/// At most `max` chars, cut on a char boundary.
pub(super) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `prefix: message` with the provider's own words shortened, or just
/// `prefix` when the provider said nothing.
pub(super) fn quoted(prefix: &str, message: Option<&str>) -> String {
    match message.map(str::trim) {
        Some(message) if !message.is_empty() => {
            format!("{prefix}: {}", truncate(message, MAX_MESSAGE_CHARS))
        }
        _ => prefix.to_owned(),
    }
}

/// The error body for operators: shortened, and with the key blanked should a
/// server echo it back.
pub(super) fn loggable_body(body: &[u8], key: Option<&SecretString>) -> String {
    let text = String::from_utf8_lossy(body);
    // Blank the key before shortening, so no partial key survives the cut.
    let text = match key.map(|k| k.expose_secret()) {
        Some(secret) if !secret.is_empty() && text.contains(secret) => {
            text.replace(secret, "[redacted]")
        }
        _ => text.into_owned(),
    };
    truncate(&text, MAX_LOGGED_BODY_CHARS)
}

/// The operator's record of an error answer: the provider's whole message
/// (key blanked), which the task's owner never sees.
pub(super) fn log_error_response(
    agent: &Agent,
    key: Option<&SecretString>,
    error: &ProviderError,
    body: &[u8],
) {
    tracing::warn!(
        agent_id = %agent.id,
        provider = ?agent.spec.provider,
        model = %agent.spec.model,
        status = error.status,
        class = ?error.class,
        retry_after_ms = error.retry_after.map(|d| d.as_millis() as u64),
        body = %loggable_body(body, key),
        "provider returned an error"
    );
}

/// An error answer, classified and logged for the operator.
pub(super) fn error_answer(
    agent: &Agent,
    key: Option<&SecretString>,
    raw: &RawResponse,
    class: ErrorClass,
    message: String,
    retry_after: Option<Duration>,
) -> ProviderError {
    let error = ProviderError {
        class,
        message,
        retry_after,
        status: Some(raw.status.as_u16()),
    };
    log_error_response(agent, key, &error, &raw.body);
    error
}

/// A success status whose body does not say what it should.
pub(super) fn malformed(
    agent: &Agent,
    status: StatusCode,
    body: &[u8],
    reason: &dyn std::fmt::Display,
) -> ProviderError {
    tracing::warn!(
        agent_id = %agent.id,
        provider = ?agent.spec.provider,
        model = %agent.spec.model,
        status = status.as_u16(),
        body_bytes = body.len(),
        %reason,
        "provider answered with a body that does not parse"
    );
    ProviderError {
        status: Some(status.as_u16()),
        ..ProviderError::new(ErrorClass::Server, "malformed response from provider")
    }
}

/// A send that failed: refused by the outbound policy (not retried: the
/// agent's address will not change by itself), or a transport error.
/// The agent's `base_url` names a destination the outbound policy refuses:
/// a bad request, not retried (the address will not change by itself).
pub(super) fn refused_base_url(agent: &Agent, refused: &OutboundError) -> ProviderError {
    tracing::warn!(agent_id = %agent.id, error = %refused, "provider call refused by the outbound policy");
    ProviderError::new(
        ErrorClass::BadRequest,
        format!("the agent's base_url is refused: {refused}"),
    )
}

fn send_error(agent: &Agent, error: SendError, timeout_ms: u64) -> ProviderError {
    match error {
        SendError::Refused(refused) => refused_base_url(agent, &refused),
        // The client follows no redirect, so this is not reached.
        SendError::TooManyRedirects => {
            ProviderError::new(ErrorClass::BadRequest, "the provider redirected too often")
        }
        SendError::Http(error) => transport_error(agent, error, timeout_ms),
    }
}

fn transport_error(agent: &Agent, error: reqwest::Error, timeout_ms: u64) -> ProviderError {
    // The URL may carry credentials in its user-info: keep it out of the log.
    let error = error.without_url();
    let (class, message) = if error.is_timeout() {
        (
            ErrorClass::Timeout,
            format!("no answer from provider within {timeout_ms} ms"),
        )
    } else if error.is_builder() {
        (
            ErrorClass::BadRequest,
            "the agent's base_url is not a valid URL".to_owned(),
        )
    } else if error.is_connect() {
        (
            ErrorClass::Network,
            "could not connect to provider".to_owned(),
        )
    } else {
        (
            ErrorClass::Network,
            "connection to provider failed".to_owned(),
        )
    };
    tracing::warn!(agent_id = %agent.id, class = ?class, error = ?error, "provider call failed");
    ProviderError::new(class, message)
}

/// `{root}{path}` where root is the agent's `base_url` or the provider's
/// default, without a doubled slash.
pub(super) fn endpoint(base_url: Option<&str>, default_root: &str, path: &str) -> String {
    let root = base_url.unwrap_or(default_root);
    format!("{}{path}", root.trim_end_matches('/'))
}

/// The request's subject for single-input tasks (classification, image,
/// transcription): the last user message, which agent-call fills with the
/// task's content.
pub(super) fn last_user_content(request: &ChatRequest) -> &str {
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str())
}

/// The request's limit, else the agent's.
pub(super) fn max_tokens(agent: &Agent, request: &ChatRequest) -> Option<u32> {
    request.max_tokens.or(agent.spec.constraints.max_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Message;

    #[test]
    fn standard_retry_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after_header(&headers), None);
        headers.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after_header(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(
            retry_after_header(&headers),
            Some(Duration::from_millis(250))
        );
        headers.insert("retry-after-ms", "soon".parse().unwrap());
        assert_eq!(retry_after_header(&headers), Some(Duration::from_secs(3)));
    }

    #[test]
    fn rfc3339_reset_timestamps() {
        let at = (Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
        let wait = parse_reset_timestamp(&at).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert_eq!(
            parse_reset_timestamp("2020-01-01T00:00:00Z"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_reset_timestamp("in a while"), None);
    }

    #[test]
    fn protobuf_durations() {
        assert_eq!(parse_reset_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_reset_duration("0.5s"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_reset_duration("1.250s"),
            Some(Duration::from_millis(1250))
        );
        assert_eq!(parse_reset_duration("-1s"), None);
    }

    #[test]
    fn endpoints_and_quotes() {
        assert_eq!(
            endpoint(Some("http://x/"), "https://d", "/v1/a"),
            "http://x/v1/a"
        );
        assert_eq!(endpoint(None, "https://d", "/v1/a"), "https://d/v1/a");
        assert_eq!(quoted("bad", Some("  ")), "bad");
        assert_eq!(quoted("bad", Some(" why ")), "bad: why");
        assert_eq!(quoted("bad", None), "bad");
    }

    #[test]
    fn the_subject_is_the_last_user_message() {
        let message = |role, content: &str| Message {
            role,
            content: content.into(),
        };
        let mut request = ChatRequest {
            task_type: super::super::TASK_IMAGE,
            system: None,
            messages: vec![
                message(Role::User, "first"),
                message(Role::User, "second"),
                message(Role::Assistant, "answer"),
            ],
            max_tokens: None,
            temperature: None,
            stop: Vec::new(),
        };
        assert_eq!(last_user_content(&request), "second");
        request.messages.clear();
        assert_eq!(last_user_content(&request), "");
    }
}
