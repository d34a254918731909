//! A deterministic in-process provider for demos, tests and benchmarks.
//!
//! The answer is a pure function of the agent's model and the request's text,
//! so runs are reproducible; `agent.spec.mock` adds latency and injected faults
//! to exercise retries, fallbacks and circuit breakers without a network, and
//! scripts tiers of models for `maof bench --cost`: `untagged` agents agree
//! on every answer, except a `wrong_share` of requests (by digest) answered
//! wrongly without a sign; `max_words` cuts the answer to a longer request in
//! half, with finish reason `length` (what `tiered` routing escalates on).
//! `answers` scripts answers by pattern (the first whose text the request's
//! last message contains, ignoring case), each with its own latency and
//! finish, so mock agents agree or disagree on purpose (`consensus`,
//! `vote`, `merge` without keys).

use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::domain::{Agent, ErrorClass, MockFault, Usage};
use crate::ports::{ChatRequest, ChatResponse, ProviderClient, ProviderError, Role};

/// Answers `[{model}] {n} words; digest {hash:016x}` where `n` counts the
/// words of the system prompt and messages and `hash` is their FNV-1a digest.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockProvider;

/// `retry_after` of an injected rate limit when the agent sets none.
const DEFAULT_RETRY_AFTER_MS: u64 = 1_000;

#[async_trait]
impl ProviderClient for MockProvider {
    async fn complete(
        &self,
        agent: &Agent,
        _key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let last = request.messages.last().map(|m| m.content.as_str());
        let scripted = agent
            .spec
            .mock
            .as_ref()
            .and_then(|o| last.and_then(|text| o.scripted(text)));
        if let Some(options) = &agent.spec.mock {
            let latency_ms = scripted
                .and_then(|s| s.latency_ms)
                .unwrap_or(options.latency_ms);
            if latency_ms > 0 {
                tokio::time::sleep(Duration::from_millis(latency_ms)).await;
            }
            if should_fail(options.failure_rate) {
                let fault = options.fault.unwrap_or(MockFault::ServerError);
                return Err(match fault {
                    MockFault::RateLimit => ProviderError {
                        class: ErrorClass::RateLimited,
                        message: "mock rate limit".into(),
                        retry_after: Some(Duration::from_millis(
                            options.retry_after_ms.unwrap_or(DEFAULT_RETRY_AFTER_MS),
                        )),
                        status: Some(429),
                    },
                    MockFault::ServerError => ProviderError {
                        status: Some(500),
                        ..ProviderError::new(ErrorClass::Server, "mock server error")
                    },
                    MockFault::Timeout => {
                        // A real hung provider costs the caller its whole timeout.
                        let timeout_ms = agent.spec.constraints.timeout_ms();
                        tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
                        ProviderError::new(
                            ErrorClass::Timeout,
                            format!("no answer from provider within {timeout_ms} ms"),
                        )
                    }
                    // What a real client reports for a 200 whose body does not parse.
                    MockFault::Malformed => ProviderError {
                        status: Some(200),
                        ..ProviderError::new(ErrorClass::Server, "malformed response")
                    },
                });
            }
        }

        let tally = Tally::of(request);
        let options = agent.spec.mock.clone().unwrap_or_default();
        let tagged = !options.untagged || tally.is_in_share(options.wrong_share);
        let mut output = match (request.messages.last(), scripted) {
            (_, Some(script)) => script.answer.clone(),
            (Some(last), None) if options.echo => last.content.clone(),
            _ if tagged => format!(
                "[{}] {} words; digest {:016x}",
                agent.spec.model, tally.words, tally.hash
            ),
            _ => format!("{} words; digest {:016x}", tally.words, tally.hash),
        };
        if let Some(bytes) = options.output_bytes {
            // Base64-like padding, to the size asked for.
            let pad = (bytes as usize).saturating_sub(output.len() + 1);
            output.push(' ');
            output.extend(std::iter::repeat_n('A', pad));
        }
        let mut finish_reason = if scripted.is_some_and(|s| s.truncated) {
            "length"
        } else {
            "stop"
        };
        // Scripted: a request longer than it handles gets half an answer.
        if options.max_words.is_some_and(|most| tally.words > most) {
            output.truncate(output.floor_char_boundary(output.len() / 2));
            finish_reason = "length";
        }
        // Like a real model, it stops at `max_tokens` (four characters each).
        if let Some(cap) = request.max_tokens {
            let most = output.floor_char_boundary(cap as usize * 4);
            if most < output.len() {
                output.truncate(most);
                finish_reason = "length";
            }
        }
        Ok(ChatResponse {
            usage: Usage {
                input_tokens: tally.chars.div_ceil(4).max(1),
                // The output is ASCII: bytes are chars.
                output_tokens: (output.len() as u64).div_ceil(4),
                ..Usage::default()
            },
            output,
            finish_reason: Some(finish_reason.into()),
            request_id: Some(format!("mock-{:016x}", tally.hash)),
        })
    }
}

/// `rand::random` is in [0, 1): a rate of 1.0 always fails, 0.0 (or NaN) never.
fn should_fail(failure_rate: f64) -> bool {
    failure_rate > 0.0 && (failure_rate >= 1.0 || rand::random::<f64>() < failure_rate)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

// Bytes that never occur in UTF-8 mark where each part starts, so that
// ("ab", "c") and ("a", "bc"), or a system prompt and the same user text,
// digest differently.
const TAG_SYSTEM: u8 = 0xF8;
const TAG_USER: u8 = 0xF9;
const TAG_ASSISTANT: u8 = 0xFA;

/// One pass over the request's text: a stable digest (std's hasher is
/// randomly seeded per process), its length in chars and its word count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    hash: u64,
    chars: u64,
    words: u64,
}

impl Tally {
    fn of(request: &ChatRequest) -> Tally {
        let mut tally = Tally {
            hash: FNV_OFFSET,
            chars: 0,
            words: 0,
        };
        if let Some(system) = &request.system {
            tally.feed(TAG_SYSTEM, system);
        }
        for message in &request.messages {
            let tag = match message.role {
                Role::User => TAG_USER,
                Role::Assistant => TAG_ASSISTANT,
            };
            tally.feed(tag, &message.content);
        }
        tally
    }

    fn feed(&mut self, tag: u8, text: &str) {
        self.mix(tag);
        let mut in_word = false;
        for &byte in text.as_bytes() {
            self.mix(byte);
            // Count chars, not bytes: UTF-8 continuation bytes are 0b10xx_xxxx.
            if byte & 0xC0 != 0x80 {
                self.chars += 1;
            }
            let space = byte.is_ascii_whitespace();
            if !space && !in_word {
                self.words += 1;
            }
            in_word = !space;
        }
    }

    /// Whether the request is among a `share` (0 to 1) of all requests,
    /// chosen by its digest.
    fn is_in_share(&self, share: f64) -> bool {
        share > 0.0 && ((self.hash % 1_000) as f64) < share * 1_000.0
    }

    fn mix(&mut self, byte: u8) {
        self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::domain::{AgentId, AgentSpec, TaskType};
    use crate::ports::Message;

    fn agent(mock: serde_json::Value) -> Agent {
        let spec: AgentSpec = serde_json::from_value(json!({
            "name": "Mock", "provider": "mock", "model": "mock-1",
            "capabilities": ["text"],
            "constraints": {"timeout_ms": 50},
            "mock": mock,
        }))
        .unwrap();
        Agent {
            id: AgentId::parse("mock-1").unwrap(),
            owner: crate::domain::Owner::Platform,
            spec,
            version: 1,
        }
    }

    fn request(system: Option<&str>, user: &str) -> ChatRequest {
        ChatRequest {
            task_type: TaskType::from_static("text"),
            system: system.map(Into::into),
            messages: vec![Message {
                role: Role::User,
                content: user.into(),
            }],
            max_tokens: None,
            temperature: None,
            stop: Vec::new(),
        }
    }

    async fn call(agent: &Agent, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        MockProvider.complete(agent, None, request).await
    }

    #[tokio::test]
    async fn same_input_gives_same_output() {
        let agent = agent(json!({}));
        let req = request(Some("Be brief."), "Analyze this text for sentiment: great!");
        let first = call(&agent, &req).await.unwrap();
        let second = call(&agent, &req).await.unwrap();
        assert_eq!(first, second);
        assert!(
            first.output.starts_with("[mock-1] 8 words; digest "),
            "{}",
            first.output
        );
        assert_eq!(first.finish_reason.as_deref(), Some("stop"));
        let digest = first.output.rsplit(' ').next().unwrap();
        assert_eq!(digest.len(), 16);
        assert_eq!(first.request_id, Some(format!("mock-{digest}")));
    }

    #[tokio::test]
    async fn different_input_gives_different_output() {
        let agent = agent(json!({}));
        let base = call(&agent, &request(None, "hello world")).await.unwrap();
        for other in [
            request(None, "hello world!"),
            request(Some("hello world"), ""),
            request(Some("hello"), " world"),
        ] {
            let answer = call(&agent, &other).await.unwrap();
            assert_ne!(answer.output, base.output);
            assert_ne!(answer.request_id, base.request_id);
        }
        // The role is part of the input too.
        let mut as_assistant = request(None, "hello world");
        as_assistant.messages[0].role = Role::Assistant;
        let answer = call(&agent, &as_assistant).await.unwrap();
        assert_ne!(answer.output, base.output);
    }

    #[tokio::test]
    async fn scripted_answers_match_by_pattern_with_their_latency_and_finish() {
        let agent = agent(json!({"latency_ms": 1, "answers": [
            {"pattern": "capital of FRANCE", "answer": "Paris", "latency_ms": 30},
            {"pattern": "capital", "answer": "It is Lyo", "truncated": true},
        ]}));
        let started = Instant::now();
        let paris = call(&agent, &request(None, "What is the Capital of France?"))
            .await
            .unwrap();
        assert_eq!(paris.output, "Paris");
        assert_eq!(paris.finish_reason.as_deref(), Some("stop"));
        assert!(
            started.elapsed() >= Duration::from_millis(30),
            "its own latency"
        );
        let cut = call(&agent, &request(None, "capital of Spain"))
            .await
            .unwrap();
        assert_eq!(cut.output, "It is Lyo");
        assert_eq!(cut.finish_reason.as_deref(), Some("length"));
        let other = call(&agent, &request(None, "hello")).await.unwrap();
        assert!(
            other.output.starts_with("[mock-1] 1 words"),
            "{}",
            other.output
        );
    }

    #[test]
    fn digest_is_stable_fnv1a() {
        // The published FNV-1a 64 test vector for "a".
        let mut raw = Tally {
            hash: FNV_OFFSET,
            chars: 0,
            words: 0,
        };
        raw.mix(b'a');
        assert_eq!(raw.hash, 0xaf63_dc4c_8601_ec8c);
        // A request's digest is FNV-1a over its tagged parts: pinned so it never
        // changes between builds or processes.
        let mut expected = FNV_OFFSET;
        for byte in [TAG_SYSTEM, b's', TAG_USER, b'a'] {
            expected = (expected ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
        let tally = Tally::of(&request(Some("s"), "a"));
        assert_eq!(tally.hash, expected);
        assert_eq!((tally.chars, tally.words), (2, 2));
    }

    #[tokio::test]
    async fn usage_counts_chars_not_bytes() {
        let agent = agent(json!({}));
        // 10 chars (19 bytes) of system + 1 of user: ceil(11 / 4) = 3 tokens.
        let answer = call(&agent, &request(Some("éééééééé é"), "x"))
            .await
            .unwrap();
        assert_eq!(answer.usage.input_tokens, 3);
        assert_eq!(
            answer.usage.output_tokens,
            (answer.output.len() as u64).div_ceil(4)
        );
        assert_eq!(answer.usage.cached_input_tokens, 0);
        // Empty input still costs a token.
        let answer = call(&agent, &request(None, "")).await.unwrap();
        assert_eq!(answer.usage.input_tokens, 1);
        assert!(answer.output.starts_with("[mock-1] 0 words"));
    }

    #[tokio::test]
    async fn an_answer_stops_at_max_tokens_as_a_models_does() {
        let agent = agent(json!({"output_bytes": 4000}));
        let mut capped = request(None, "hi");
        capped.max_tokens = Some(50);
        let answer = call(&agent, &capped).await.unwrap();
        assert_eq!(answer.output.len(), 200);
        assert_eq!(answer.usage.output_tokens, 50);
        assert_eq!(answer.finish_reason.as_deref(), Some("length"));
        capped.max_tokens = Some(5000);
        let whole = call(&agent, &capped).await.unwrap();
        assert_eq!(whole.output.len(), 4000);
        assert_eq!(whole.finish_reason.as_deref(), Some("stop"));
    }

    #[tokio::test]
    async fn scripted_tiers_agree_cut_long_requests_and_err_by_digest() {
        let small = agent(json!({"untagged": true, "max_words": 3}));
        let mut large = agent(json!({"untagged": true}));
        large.spec.model = "mock-2".into();
        // Untagged agents agree, whatever their model.
        let short = request(None, "one two three");
        let a = call(&small, &short).await.unwrap();
        let b = call(&large, &short).await.unwrap();
        assert_eq!(a.output, b.output);
        assert_eq!(
            a.output,
            format!("3 words; digest {:016x}", Tally::of(&short).hash)
        );
        assert_eq!(a.finish_reason.as_deref(), Some("stop"));
        // Over max_words: half the answer, cut off.
        let long = request(None, "one two three four");
        let cut = call(&small, &long).await.unwrap();
        let whole = call(&large, &long).await.unwrap();
        assert_eq!(cut.finish_reason.as_deref(), Some("length"));
        assert_eq!(cut.output, whole.output[..whole.output.len() / 2]);
        assert_eq!(whole.finish_reason.as_deref(), Some("stop"));
        // A wrong share: the same requests every time, about that many.
        let mut wrong = agent(json!({"untagged": true, "wrong_share": 0.25}));
        wrong.spec.model = "mock-3".into();
        let mut differ = 0;
        for i in 0..400 {
            let r = request(None, &format!("question {i}"));
            let (w, right) = (
                call(&wrong, &r).await.unwrap(),
                call(&large, &r).await.unwrap(),
            );
            if w.output != right.output {
                assert!(w.output.starts_with("[mock-3] "), "{}", w.output);
                assert_eq!(call(&wrong, &r).await.unwrap().output, w.output);
                differ += 1;
            }
        }
        assert!((70..=130).contains(&differ), "{differ} of 400");
    }

    #[tokio::test]
    async fn an_echoing_mock_answers_with_the_users_text() {
        let agent = agent(json!({"echo": true}));
        let answer = call(&agent, &request(Some("sys"), "reach me at a@b.co"))
            .await
            .unwrap();
        assert_eq!(answer.output, "reach me at a@b.co");
    }

    #[tokio::test]
    async fn failure_rate_one_fails_with_each_fault() {
        let req = request(None, "hi");

        let err = call(&agent(json!({"failure_rate": 1.0})), &req)
            .await
            .unwrap_err();
        assert_eq!((err.class, err.status), (ErrorClass::Server, Some(500)));

        let err = call(
            &agent(json!({"failure_rate": 1.0, "fault": "server_error"})),
            &req,
        )
        .await
        .unwrap_err();
        assert_eq!((err.class, err.status), (ErrorClass::Server, Some(500)));

        let err = call(
            &agent(json!({"failure_rate": 1.0, "fault": "rate_limit"})),
            &req,
        )
        .await
        .unwrap_err();
        assert_eq!(
            (err.class, err.status),
            (ErrorClass::RateLimited, Some(429))
        );
        assert_eq!(err.retry_after, Some(Duration::from_millis(1_000)));

        let with_wait = json!({"failure_rate": 1.0, "fault": "rate_limit", "retry_after_ms": 250});
        let err = call(&agent(with_wait), &req).await.unwrap_err();
        assert_eq!(err.retry_after, Some(Duration::from_millis(250)));

        let started = Instant::now();
        let err = call(
            &agent(json!({"failure_rate": 1.0, "fault": "timeout"})),
            &req,
        )
        .await
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::Timeout);
        assert!(started.elapsed() >= Duration::from_millis(50));

        let err = call(
            &agent(json!({"failure_rate": 1.0, "fault": "malformed"})),
            &req,
        )
        .await
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::Server);
        assert_eq!(err.message, "malformed response");
    }

    #[tokio::test]
    async fn failure_rate_zero_never_fails_and_half_fails_sometimes() {
        let req = request(None, "hi");
        let never = agent(json!({"failure_rate": 0.0, "fault": "rate_limit"}));
        for _ in 0..1_000 {
            assert!(call(&never, &req).await.is_ok());
        }
        let half = agent(json!({"failure_rate": 0.5}));
        let mut failures = 0;
        for _ in 0..2_000 {
            failures += usize::from(call(&half, &req).await.is_err());
        }
        // Binomial(2000, 0.5): outside [800, 1200] has probability below 1e-18.
        assert!((800..=1_200).contains(&failures), "{failures} failures");
    }

    #[tokio::test]
    async fn latency_is_honoured() {
        let slow = agent(json!({"latency_ms": 40}));
        let req = request(None, "hi");
        let started = Instant::now();
        let answer = call(&slow, &req).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(40));
        // Latency changes timing, never the answer.
        assert_eq!(answer, call(&agent(json!({})), &req).await.unwrap());
    }
}
