//! OpenAI's media endpoints, at the same API root as Chat Completions:
//!
//! | task type | request | output |
//! |---|---|---|
//! | `image` | `POST {root}/images/generations` `{"model", "prompt", "n": 1}` | the image URLs, one a line; an image sent inline (`b64_json`) becomes a `data:image/png;base64,...` URL |
//! | `transcription` | `POST {root}/audio/transcriptions`, multipart `model` and `file` | the transcript (`text`) |
//!
//! The prompt, and the audio, is the task's content (the last user message);
//! the system prompt is not sent. The audio is either an `http(s)://` URL,
//! fetched with the process's client under its outbound policy (at most
//! [`MAX_REDIRECTS`](super::outbound::MAX_REDIRECTS) redirects, each checked;
//! a failed fetch is not described beyond "could not fetch the audio"), or a
//! `data:audio/...;base64,...` URL; at most [`MAX_AUDIO_BYTES`] (OpenAI's
//! upload limit) either way. The file's name carries the format OpenAI reads
//! it by (`audio.mp3`, `audio.wav`, ...), taken from the MIME type, else from
//! the URL's extension, else `mp3`.
//!
//! Usage is what the endpoints bill by: an image answer counts the images it
//! returned (and the tokens gpt-image models report); a transcription counts
//! tokens (gpt-4o-transcribe) or, where the answer gives a duration
//! (whisper-1), the audio's seconds rounded up. An agent's `per_image` and
//! `per_audio_minute` prices apply to those counts.
//!
//! Errors are OpenAI's, classified as for Chat Completions; `openai_compatible`
//! servers with these endpoints (Groq's and vLLM's transcriptions, Together's
//! images, LocalAI) work the same way.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{self, RawResponse};
use super::openai_compatible::{self, OpenAiCompatible};
use super::outbound::{OutboundClient, SendError};
use crate::domain::{Agent, ErrorClass, TaskType, Usage};
use crate::ports::{ChatRequest, ChatResponse, ProviderClient, ProviderError};

/// The task type answered by image generation.
pub const TASK_IMAGE: TaskType = TaskType::IMAGE;
/// The task type answered by audio transcription.
pub const TASK_TRANSCRIPTION: TaskType = TaskType::TRANSCRIPTION;
/// The largest audio file sent for transcription: OpenAI's limit, 25 MiB.
pub const MAX_AUDIO_BYTES: usize = 25 * 1024 * 1024;

/// A client for OpenAI's image and transcription endpoints over the
/// process's one [`OutboundClient`].
#[derive(Debug, Clone)]
pub struct OpenAiMedia {
    http: OutboundClient,
}

impl OpenAiMedia {
    pub fn new(http: OutboundClient) -> Self {
        OpenAiMedia { http }
    }

    /// Whether `task_type` is one this client answers.
    pub fn serves(task_type: &TaskType) -> bool {
        *task_type == TASK_IMAGE || *task_type == TASK_TRANSCRIPTION
    }

    /// `POST {root}/images/generations`: the image URLs, one a line.
    pub async fn generate_image(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let body = ImageRequest {
            model: &agent.spec.model,
            prompt: http::last_user_content(request),
            n: 1,
        };
        let builder = self
            .http
            .post(endpoint(agent, "/images/generations"))
            .header(ACCEPT, "application/json")
            .json(&body);
        let raw = send(
            agent,
            &self.http,
            key,
            builder,
            agent.spec.constraints.timeout_ms(),
        )
        .await?;
        parse_images(agent, &raw)
    }

    /// `POST {root}/audio/transcriptions`: the transcript.
    pub async fn transcribe(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let timeout_ms = agent.spec.constraints.timeout_ms();
        let started = Instant::now();
        let audio = self
            .audio(agent, http::last_user_content(request), timeout_ms)
            .await?;
        // One budget for the download and the transcription together.
        let spent = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let remaining = timeout_ms.saturating_sub(spent).max(1);

        let form = Multipart::new(&audio.bytes);
        let body = form.body(
            &[("model", &agent.spec.model)],
            &audio.file_name(),
            &audio.mime,
            &audio.bytes,
        );
        let builder = self
            .http
            .post(endpoint(agent, "/audio/transcriptions"))
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, form.content_type())
            .body(body);
        let raw = send(agent, &self.http, key, builder, remaining).await?;
        parse_transcription(agent, &raw)
    }

    /// The audio a transcription's content names: a data URL decoded, or an
    /// http(s) URL fetched, at most [`MAX_AUDIO_BYTES`].
    async fn audio(
        &self,
        agent: &Agent,
        content: &str,
        timeout_ms: u64,
    ) -> Result<Audio, ProviderError> {
        let content = content.trim();
        if let Some(data) = content.strip_prefix("data:") {
            return decode_data_url(data);
        }
        let url = reqwest::Url::parse(content)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                bad_audio(
                    "transcription content must be an http(s) URL or a data: URL of the audio",
                )
            })?;
        self.download(agent, url, timeout_ms).await
    }

    async fn download(
        &self,
        agent: &Agent,
        url: reqwest::Url,
        timeout_ms: u64,
    ) -> Result<Audio, ProviderError> {
        let extension = url_extension(&url);
        let mut response = self
            .http
            .get_following_redirects(url, Duration::from_millis(timeout_ms))
            .await
            .map_err(|e| download_error(agent, e, timeout_ms))?;
        let status = response.status();
        if !status.is_success() {
            // The status is the operator's to read: the URL is the caller's,
            // and what a server answers it is not to be relayed.
            tracing::warn!(agent_id = %agent.id, status = status.as_u16(), "audio download failed");
            let class = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                ErrorClass::Network
            } else {
                ErrorClass::BadRequest
            };
            return Err(ProviderError::new(class, "could not fetch the audio"));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_AUDIO_BYTES as u64)
        {
            return Err(too_large());
        }
        let mime = http::header(response.headers(), CONTENT_TYPE.as_str())
            .map(media_type)
            .unwrap_or_default();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| download_error(agent, e.into(), timeout_ms))?
        {
            if bytes.len() + chunk.len() > MAX_AUDIO_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Audio {
            bytes,
            mime,
            url_extension: extension,
        })
    }
}

#[async_trait]
impl ProviderClient for OpenAiMedia {
    async fn complete(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let task_type = &request.task_type;
        if *task_type == TASK_IMAGE {
            self.generate_image(agent, key, request).await
        } else if *task_type == TASK_TRANSCRIPTION {
            self.transcribe(agent, key, request).await
        } else {
            Err(ProviderError::new(
                ErrorClass::BadRequest,
                format!("task type `{task_type}` is not a media task"),
            ))
        }
    }
}

/// Provider `openai` (and `openai_compatible`): `image` and `transcription`
/// tasks go to the media endpoints, every other task type to Chat Completions.
#[derive(Debug, Clone)]
pub struct OpenAi {
    chat: OpenAiCompatible,
    media: OpenAiMedia,
}

impl OpenAi {
    pub fn new(http: OutboundClient) -> Self {
        OpenAi {
            chat: OpenAiCompatible::new(http.clone()),
            media: OpenAiMedia::new(http),
        }
    }
}

#[async_trait]
impl ProviderClient for OpenAi {
    async fn complete(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        if OpenAiMedia::serves(&request.task_type) {
            self.media.complete(agent, key, request).await
        } else {
            self.chat.complete(agent, key, request).await
        }
    }
}

/// `{root}{path}` at the agent's root, OpenAI's by default.
fn endpoint(agent: &Agent, path: &str) -> String {
    http::endpoint(
        agent.spec.base_url.as_deref(),
        OpenAiCompatible::DEFAULT_BASE_URL,
        path,
    )
}

/// Sends with the key as a bearer token; an error answer is classified as
/// OpenAI's.
async fn send(
    agent: &Agent,
    client: &OutboundClient,
    key: Option<&SecretString>,
    mut builder: reqwest::RequestBuilder,
    timeout_ms: u64,
) -> Result<RawResponse, ProviderError> {
    if let Some(key) = key {
        builder = builder.bearer_auth(key.expose_secret());
    }
    let raw = http::send(agent, client, builder, timeout_ms).await?;
    if raw.status.is_success() {
        Ok(raw)
    } else {
        Err(openai_compatible::error_response(agent, key, &raw))
    }
}

#[derive(Debug, Serialize)]
struct ImageRequest<'a> {
    model: &'a str,
    prompt: &'a str,
    n: u32,
}

#[derive(Debug, Deserialize)]
struct ImageResponse {
    data: Vec<ImageData>,
    /// `png`, `jpeg` or `webp` (gpt-image models); absent means PNG.
    #[serde(default)]
    output_format: Option<String>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Debug, Deserialize)]
struct ImageData {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    b64_json: Option<String>,
}

/// Token usage of gpt-image and gpt-4o-transcribe models.
#[derive(Debug, Default, Deserialize)]
struct TokenUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

impl From<TokenUsage> for Usage {
    fn from(u: TokenUsage) -> Usage {
        Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            ..Usage::default()
        }
    }
}

/// A transcription's usage: tokens (gpt-4o-transcribe, `"type": "tokens"`),
/// or the audio's length (whisper-1, `{"type": "duration", "seconds": 3.2}`).
#[derive(Debug, Deserialize)]
struct TranscriptionUsage {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    seconds: f64,
    #[serde(flatten)]
    tokens: TokenUsage,
}

impl From<TranscriptionUsage> for Usage {
    fn from(u: TranscriptionUsage) -> Usage {
        if u.kind.as_deref() == Some("duration") {
            Usage {
                // Whole seconds, rounded up; `as` saturates (a negative is 0).
                audio_seconds: u.seconds.ceil() as u64,
                ..Usage::default()
            }
        } else {
            Usage::from(u.tokens)
        }
    }
}

fn parse_images(agent: &Agent, raw: &RawResponse) -> Result<ChatResponse, ProviderError> {
    let malformed =
        |reason: &dyn std::fmt::Display| http::malformed(agent, raw.status, &raw.body, reason);
    let wire: ImageResponse = serde_json::from_slice(&raw.body).map_err(|e| malformed(&e))?;
    let format = wire.output_format.as_deref().unwrap_or("png");
    let urls: Vec<String> = wire
        .data
        .into_iter()
        .filter_map(|image| match (image.url, image.b64_json) {
            (Some(url), _) => Some(url),
            (None, Some(b64)) => Some(format!("data:image/{format};base64,{b64}")),
            (None, None) => None,
        })
        .collect();
    if urls.is_empty() {
        return Err(malformed(&"no image in the answer"));
    }
    let usage = Usage {
        images: urls.len() as u64,
        ..wire.usage.map(Usage::from).unwrap_or_default()
    };
    Ok(ChatResponse {
        output: urls.join("\n"),
        finish_reason: None,
        usage,
        request_id: raw.header("x-request-id").map(str::to_owned),
    })
}

#[derive(Debug, Deserialize)]
struct TranscriptionResponse {
    text: String,
    #[serde(default)]
    usage: Option<serde_json::Value>,
}

fn parse_transcription(agent: &Agent, raw: &RawResponse) -> Result<ChatResponse, ProviderError> {
    let wire: TranscriptionResponse = serde_json::from_slice(&raw.body)
        .map_err(|e| http::malformed(agent, raw.status, &raw.body, &e))?;
    // An unreadable usage does not cost the caller the transcript; the call
    // is counted as no usage, and the operator told.
    let usage = match wire.usage.map(serde_json::from_value::<TranscriptionUsage>) {
        None => Usage::default(),
        Some(Ok(usage)) => usage.into(),
        Some(Err(error)) => {
            tracing::warn!(agent_id = %agent.id, %error, "transcription usage unreadable; counted as none");
            Usage::default()
        }
    };
    Ok(ChatResponse {
        output: wire.text,
        finish_reason: None,
        usage,
        request_id: raw.header("x-request-id").map(str::to_owned),
    })
}

/// Audio to upload, and what is known of its format.
#[derive(Debug, PartialEq, Eq)]
struct Audio {
    bytes: Vec<u8>,
    /// The MIME type, lower case without parameters; empty when unknown.
    mime: String,
    /// The extension of the URL's path, when it had one.
    url_extension: Option<String>,
}

/// File extensions OpenAI's transcription endpoint accepts.
const AUDIO_EXTENSIONS: [&str; 10] = [
    "flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm",
];

impl Audio {
    /// `audio.{ext}`: by MIME type, else by the URL's extension, else mp3.
    fn file_name(&self) -> String {
        let by_mime = match self.mime.as_str() {
            "audio/mpeg" | "audio/mp3" | "audio/mpga" => Some("mp3"),
            "audio/mp4" | "audio/m4a" | "audio/x-m4a" | "audio/aac" => Some("m4a"),
            "video/mp4" => Some("mp4"),
            "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Some("wav"),
            "audio/webm" | "video/webm" => Some("webm"),
            "audio/ogg" | "audio/opus" | "application/ogg" => Some("ogg"),
            "audio/flac" | "audio/x-flac" => Some("flac"),
            _ => None,
        };
        let extension = by_mime
            .or_else(|| {
                self.url_extension
                    .as_deref()
                    .filter(|e| AUDIO_EXTENSIONS.contains(e))
            })
            .unwrap_or("mp3");
        format!("audio.{extension}")
    }
}

/// The part of a data URL after `data:`: `audio/mpeg;base64,AAAA...`.
fn decode_data_url(data: &str) -> Result<Audio, ProviderError> {
    let (meta, payload) = data
        .split_once(',')
        .ok_or_else(|| bad_audio("the audio data URL has no data"))?;
    let mut params = meta.split(';');
    let mime = params.next().map(media_type).unwrap_or_default();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(bad_audio(
            "the audio data URL must be base64 (data:audio/...;base64,...)",
        ));
    }
    // Refuse before decoding: base64 is 4 chars for 3 bytes.
    if payload.len() / 4 * 3 > MAX_AUDIO_BYTES + 3 {
        return Err(too_large());
    }
    let bytes = STANDARD
        .decode(payload.trim())
        .map_err(|_| bad_audio("the audio data URL is not valid base64"))?;
    if bytes.len() > MAX_AUDIO_BYTES {
        return Err(too_large());
    }
    Ok(Audio {
        bytes,
        mime,
        url_extension: None,
    })
}

/// `audio/MPEG; charset=x` -> `audio/mpeg`.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn url_extension(url: &reqwest::Url) -> Option<String> {
    let last = url.path_segments()?.next_back()?;
    let (_, extension) = last.rsplit_once('.')?;
    Some(extension.to_ascii_lowercase())
}

fn bad_audio(message: &str) -> ProviderError {
    ProviderError::new(ErrorClass::BadRequest, message)
}

fn too_large() -> ProviderError {
    bad_audio("the audio is larger than 25 MiB")
}

fn download_error(agent: &Agent, error: SendError, timeout_ms: u64) -> ProviderError {
    let error = match error {
        SendError::Refused(refused) => {
            tracing::warn!(agent_id = %agent.id, error = %refused, "audio download refused by the outbound policy");
            return bad_audio(&format!("the audio URL is refused: {refused}"));
        }
        SendError::TooManyRedirects => {
            tracing::warn!(agent_id = %agent.id, "audio download redirected too often");
            return bad_audio("could not fetch the audio (too many redirects)");
        }
        SendError::Http(error) => error.without_url(),
    };
    let class = if error.is_timeout() {
        ErrorClass::Timeout
    } else if error.is_builder() {
        ErrorClass::BadRequest
    } else {
        ErrorClass::Network
    };
    tracing::warn!(agent_id = %agent.id, class = ?class, error = ?error, "audio download failed");
    let message = match class {
        ErrorClass::Timeout => format!("the audio did not download within {timeout_ms} ms"),
        ErrorClass::BadRequest => "the audio URL is not valid".to_owned(),
        _ => "could not fetch the audio".to_owned(),
    };
    ProviderError::new(class, message)
}

/// A `multipart/form-data` body built by hand (reqwest's `multipart` feature
/// is not enabled): text fields and one file.
struct Multipart {
    boundary: String,
}

impl Multipart {
    /// A random boundary that does not occur in `file`.
    fn new(file: &[u8]) -> Multipart {
        loop {
            let boundary = format!("maof-{:032x}", rand::random::<u128>());
            if !contains(file, boundary.as_bytes()) {
                return Multipart { boundary };
            }
        }
    }

    fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The text `fields`, then the file as field `file`.
    fn body(&self, fields: &[(&str, &str)], file_name: &str, mime: &str, file: &[u8]) -> Vec<u8> {
        let boundary = &self.boundary;
        let mut body = Vec::with_capacity(file.len() + 512);
        for (name, value) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        let mime = if mime.is_empty() {
            "application/octet-stream"
        } else {
            mime
        };
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: {mime}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        body
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests;
