//! Filtering an answer that arrives in chunks: what `push` and `finish`
//! return, put together, is what `Filters::apply` gives for the whole answer.
//!
//! With rules or PII kinds that block or redact, the filter holds back the
//! last `Filters::stream_hold` bytes (the longest match and one character of
//! look-ahead), since a match there may still grow; when a block rule has no
//! longest match it holds the whole answer until `finish`. With PII kinds
//! only in `log` mode, chunks go out as they come, and the findings come
//! with `finish`.
//!
//! A stream stops at the first block it is sure of (when it holds the whole
//! answer, it looks for blocks each time the answer has doubled). When the
//! answer holds several blocked matches, the one named is the first found in
//! reading order, which may differ from the one `apply` names (the first in
//! rule order).

use std::fmt;
use std::sync::Arc;

use super::{Blocked, Compiled, Counts, Finding};

/// Without a longest match, how much text to gather before the first look
/// for a block (then twice as much each time, for linear time).
const UNBOUNDED_STEP: usize = 4096;

/// The end of a stream: the text still to emit, and what the whole answer held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finished {
    pub text: String,
    pub findings: Vec<Finding>,
}

/// The filter of one streamed answer (see the module's doc).
pub struct StreamFilter {
    compiled: Arc<Compiled>,
    /// The filters apply to this direction: else chunks go out untouched.
    active: bool,
    /// Nothing can block or change text: chunks go out as they come.
    only_logs: bool,
    /// The last decided character (context for look-behind), then the text
    /// not yet decided.
    buffer: String,
    /// Where the undecided text starts in `buffer`.
    start: usize,
    /// Scan again once this many bytes are undecided: at least twice the
    /// hold, and twice what the last scan left, so scans cost linear time.
    scan_at: usize,
    counts: Counts,
    blocked: Option<Blocked>,
}

/// Without the held text, which may hold what the filters look for.
impl fmt::Debug for StreamFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamFilter")
            .field("compiled", &self.compiled)
            .field("active", &self.active)
            .field("only_logs", &self.only_logs)
            .field("held_bytes", &(self.buffer.len() - self.start))
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

impl StreamFilter {
    pub(super) fn new(compiled: Arc<Compiled>, active: bool) -> StreamFilter {
        let only_logs = compiled.only_logs();
        let scan_at = compiled.hold.unwrap_or(UNBOUNDED_STEP) * 2;
        StreamFilter {
            compiled,
            active,
            only_logs,
            buffer: String::new(),
            start: 0,
            scan_at,
            counts: Counts::default(),
            blocked: None,
        }
    }

    /// Takes the next chunk; returns the text that is safe to emit now, or
    /// the block (again on every later call).
    pub fn push(&mut self, chunk: &str) -> Result<String, Blocked> {
        if let Some(blocked) = &self.blocked {
            return Err(blocked.clone());
        }
        if !self.active {
            return Ok(chunk.to_owned());
        }
        self.buffer.push_str(chunk);
        let passed = if self.only_logs {
            chunk.to_owned()
        } else {
            String::new()
        };
        if self.buffer.len() - self.start < self.scan_at {
            return Ok(passed);
        }
        let decided = self.compiled.scan(&self.buffer, self.start, false);
        let (cut, text, counts) = match decided {
            Ok(decided) => (decided.cut, decided.text.into_owned(), decided.counts),
            Err(blocked) => {
                self.blocked = Some(blocked.clone());
                self.buffer = String::new();
                return Err(blocked);
            }
        };
        self.counts.merge(counts);
        self.keep_from(cut);
        Ok(if self.only_logs { passed } else { text })
    }

    /// Ends the stream: the rest of the text, and the findings of the whole
    /// answer.
    pub fn finish(mut self) -> Result<Finished, Blocked> {
        if let Some(blocked) = self.blocked {
            return Err(blocked);
        }
        if !self.active {
            return Ok(Finished::default());
        }
        let decided = self.compiled.scan(&self.buffer, self.start, true)?;
        self.counts.merge(decided.counts);
        Ok(Finished {
            text: if self.only_logs {
                String::new()
            } else {
                decided.text.into_owned()
            },
            findings: self.compiled.findings(self.counts),
        })
    }

    /// Drops the decided text before `cut`, but its last character.
    fn keep_from(&mut self, cut: usize) {
        let hold = self.compiled.hold.unwrap_or(UNBOUNDED_STEP);
        let context = self.buffer[..cut]
            .char_indices()
            .next_back()
            .map_or(cut, |(at, _)| at);
        self.buffer.drain(..context);
        self.start = cut - context;
        let undecided = self.buffer.len() - self.start;
        self.scan_at = (hold * 2).max(undecided.saturating_add(hold.max(undecided)));
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    /// splitmix64: a small deterministic generator for the property tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Pieces that are PII, nearly PII, or filler, glued with separators
    /// that sometimes keep them apart and sometimes do not.
    const PIECES: &[&str] = &[
        "jane.doe@example.com",
        "j+tag@mail.example.co.uk",
        "bob@",
        "example.com",
        "+1 555 123 4567",
        "+44 20 7946 0958",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "4111 1111 1111 1112",
        "3782 822463 10005",
        "DE44 5001 0517 5407 3249 31",
        "GB82WEST12345698765432",
        "DE45 5001 0517 5407 3249 31",
        "123-45-6789",
        "000-12-3456",
        "192.168.0.1",
        "256.1.1.1",
        "2001:db8::1",
        "::ffff:192.0.2.1",
        "std::vector",
        "1.2.3.4.5",
        "2024",
        "1234",
        "secret-4821",
        "password = hunter2",
        "hello",
        "电话",
        "naïve café",
        "🙂",
        "the quick brown fox",
        "x",
        "0",
    ];
    const GLUE: &[&str] = &[" ", " ", " ", "", "\n", ", ", ".", "-", ":", "@", "é"];

    fn text(rng: &mut Rng) -> String {
        let mut text = String::new();
        for _ in 0..rng.below(40) {
            text.push_str(rng.pick(PIECES));
            text.push_str(rng.pick(GLUE));
        }
        if rng.below(4) == 0 {
            // long filler, so that scans happen before the end
            for _ in 0..rng.below(300) {
                text.push_str(rng.pick(&["lorem ", "ipsum ", "dolor ", "sit ", "amet "]));
            }
            text.push_str(rng.pick(PIECES));
        }
        text
    }

    /// Random chunks on character boundaries: many tiny ones, some large.
    fn chunks<'t>(rng: &mut Rng, text: &'t str) -> Vec<&'t str> {
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let len = match rng.below(4) {
                0 => 1,
                1 => rng.below(8) + 1,
                2 => rng.below(64) + 1,
                _ => rng.below(2048) + 1,
            };
            let mut end = (at + len).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            chunks.push(&text[at..end]);
            if rng.below(10) == 0 {
                chunks.push("");
            }
            at = end;
        }
        chunks
    }

    /// Streams `chunks`: what came out, how much of the text it stood for
    /// before the end, and the end.
    fn stream(filters: &Filters, chunks: &[&str]) -> (String, usize, Result<Finished, Blocked>) {
        let mut stream = filters.stream(Direction::Output);
        let mut out = String::new();
        let mut pushed = 0;
        for chunk in chunks {
            let decided = pushed - (stream.buffer.len() - stream.start);
            match stream.push(chunk) {
                Ok(text) => out.push_str(&text),
                Err(blocked) => return (out, decided, Err(blocked)),
            }
            pushed += chunk.len();
        }
        let decided = pushed - (stream.buffer.len() - stream.start);
        (out, decided, stream.finish())
    }

    /// Each rule or PII kind that blocks `text`, with where it first matches.
    fn blocking_matches(filters: &Filters, text: &str) -> Vec<(String, usize)> {
        let mut found = Vec::new();
        for rule in filters.output.rule_sets.iter().flat_map(|set| &set.rules) {
            if let Some(m) = rule.regex.find(text) {
                found.push((rule.name.clone(), m.start()));
            }
        }
        for &(detector, mode) in &filters.output.pii {
            let mut at = 0;
            while let Some(candidate) = detector.find_at(text, at).filter(|_| mode == Mode::Block) {
                if let Some(span) = candidate.accepted {
                    found.push((detector.kind.rule_name().to_owned(), span.start));
                    break;
                }
                at = candidate.raw.end;
            }
        }
        found
    }

    fn settings(json: &str) -> Filters {
        Filters::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    const ALL_KINDS: &str = r#"["email", "phone", "card", "iban", "ssn", "ip"]"#;

    fn check_equivalence(filters: &Filters, seed: u64, texts: usize) {
        let mut rng = Rng(seed);
        for case in 0..texts {
            let text = text(&mut rng);
            let whole = filters.apply(Direction::Output, &text);
            for _ in 0..4 {
                let chunks = chunks(&mut rng, &text);
                let (out, decided, end) = stream(filters, &chunks);
                match (&whole, end) {
                    (
                        Verdict::Pass {
                            text: expected,
                            findings,
                        },
                        Ok(end),
                    ) => {
                        assert_eq!(
                            format!("{out}{}", end.text),
                            expected.as_ref(),
                            "case {case}: {text:?} in {chunks:?}"
                        );
                        assert_eq!(&end.findings, findings, "case {case}: {text:?}");
                    }
                    (Verdict::Blocked(_), Err(blocked)) => {
                        // named one that blocks, and let out no part of any
                        let found = blocking_matches(filters, &text);
                        assert!(
                            found.iter().any(|(name, _)| *name == blocked.rule),
                            "case {case}: {blocked:?} in {text:?}: {found:?}"
                        );
                        let first = found.iter().map(|&(_, at)| at).min();
                        assert!(first.is_some_and(|first| decided <= first), "case {case}");
                    }
                    (whole, end) => {
                        panic!("case {case}: {text:?} in {chunks:?}: {whole:?} but {end:?}")
                    }
                }
            }
        }
    }

    #[test]
    fn redacting_streams_equal_apply() {
        let filters = settings(&format!(
            r#"{{"pii": {{"mode": "redact", "kinds": {ALL_KINDS}}}}}"#
        ));
        check_equivalence(&filters, 1, 400);
    }

    /// A scan that ends exactly at each position in and around each piece
    /// (the first chunk is long enough to be scanned at once).
    #[test]
    fn a_scan_ending_anywhere_around_a_match_decides_like_apply() {
        let filters = settings(&format!(
            r#"{{"pii": {{"mode": "redact", "kinds": {ALL_KINDS}}},
                 "block": [{{"name": "secret", "pattern": "secret-[0-9]{{4}}\\b"}}]}}"#
        ));
        let filler = "lorem ipsum ".repeat(filters.stream_hold(Direction::Output).unwrap() / 6);
        for piece in PIECES {
            for after in ["", "0", "a", "_", "-1", " 1", ".5", ":1", "@x.io", "\n"] {
                let text = format!("{filler}{piece}{after} {filler}");
                let whole = filters.apply(Direction::Output, &text);
                let around = filler.len()..filler.len() + piece.len() + after.len() + 2;
                for split in around.filter(|&at| text.is_char_boundary(at)) {
                    let (out, _, end) = stream(&filters, &[&text[..split], &text[split..]]);
                    match (&whole, end) {
                        (Verdict::Pass { text: expected, .. }, Ok(end)) => {
                            assert_eq!(
                                format!("{out}{}", end.text),
                                expected.as_ref(),
                                "{piece}{after} at {split}"
                            )
                        }
                        (Verdict::Blocked(expected), Err(blocked)) => {
                            assert_eq!(expected, &blocked)
                        }
                        (whole, end) => panic!("{piece}{after} at {split}: {whole:?} but {end:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn logging_streams_equal_apply_and_pass_chunks_through() {
        let filters = settings(&format!(
            r#"{{"pii": {{"mode": "log", "kinds": {ALL_KINDS}}}}}"#
        ));
        check_equivalence(&filters, 2, 200);
        let mut stream = filters.stream(Direction::Output);
        assert_eq!(stream.push("mail jane@exa").unwrap(), "mail jane@exa");
        assert_eq!(stream.push("mple.com now").unwrap(), "mple.com now");
        let end = stream.finish().unwrap();
        assert_eq!(end.text, "");
        assert_eq!(
            end.findings,
            [Finding {
                what: "pii:email".into(),
                count: 1,
                mode: Mode::Log
            }]
        );
    }

    #[test]
    fn mixed_modes_and_bounded_block_rules_stream_like_apply() {
        let platform: FilterSettings = serde_json::from_str(
            r#"{"pii": {"mode": "log", "kinds": ["ip", "phone"]},
                "block": [{"name": "secret", "pattern": "secret-[0-9]{4}\\b"}]}"#,
        )
        .unwrap();
        let tenant: FilterSettings = serde_json::from_str(
            r#"{"pii": {"mode": "redact", "kinds": ["email", "card", "iban", "ssn", "ip"]}}"#,
        )
        .unwrap();
        let filters = Filters::combine(&platform, &tenant).unwrap();
        check_equivalence(&filters, 3, 300);
    }

    #[test]
    fn blocking_pii_streams_like_apply() {
        let filters = settings(r#"{"pii": {"mode": "block", "kinds": ["card", "ssn"]}}"#);
        check_equivalence(&filters, 4, 300);
    }

    #[test]
    fn unbounded_rules_hold_everything_until_the_end() {
        let filters = settings(
            r#"{"pii": {"mode": "redact", "kinds": ["email"]},
                "block": [{"name": "no-secrets", "pattern": "(?i)password\\s*="}]}"#,
        );
        assert_eq!(filters.stream_hold(Direction::Output), None);
        check_equivalence(&filters, 5, 200);
        let mut stream = filters.stream(Direction::Output);
        for _ in 0..1000 {
            assert_eq!(stream.push("lorem ipsum jane@example.com ").unwrap(), "");
        }
        let end = stream.finish().unwrap();
        assert_eq!(end.text, "lorem ipsum [EMAIL] ".repeat(1000));
        let mut stream = filters.stream(Direction::Output);
        assert_eq!(
            stream.push("lorem ipsum ".repeat(1000).as_str()).unwrap(),
            ""
        );
        assert_eq!(stream.push("my PASSWORD").unwrap(), "");
        let blocked = Blocked {
            rule: "no-secrets".into(),
        };
        assert_eq!(stream.push("   = hunter2").unwrap(), "");
        // found once the answer has about doubled, before its end
        let mut pushed = 0;
        let error = loop {
            match stream.push("more text ") {
                Ok(text) => assert_eq!(text, ""),
                Err(error) => break error,
            }
            pushed += "more text ".len();
            assert!(pushed < 14_000, "not found");
        };
        assert_eq!(error, blocked);
        assert_eq!(stream.push("more").unwrap_err(), blocked);
        assert_eq!(stream.finish().unwrap_err(), blocked);
    }

    #[test]
    fn a_redacting_stream_holds_back_only_the_longest_match() {
        let filters = settings(&format!(
            r#"{{"pii": {{"mode": "redact", "kinds": {ALL_KINDS}}}}}"#
        ));
        let hold = filters.stream_hold(Direction::Output).unwrap();
        let mut stream = filters.stream(Direction::Output);
        let mut out = String::new();
        for _ in 0..2000 {
            out.push_str(&stream.push("lorem ipsum ").unwrap());
        }
        let pushed = 2000 * "lorem ipsum ".len();
        assert!(out.len() + 3 * hold >= pushed, "{} of {pushed}", out.len());
        out.push_str(&stream.push("mail jane@example.com").unwrap());
        out.push_str(&stream.finish().unwrap().text);
        assert!(out.ends_with("ipsum mail [EMAIL]"));
    }

    #[test]
    fn a_block_mid_stream_stops_before_the_match() {
        let filters = settings(
            r#"{"block": [{"name": "secret", "pattern": "secret-[0-9]{4}"}],
                "pii": {"mode": "redact", "kinds": ["email"]}}"#,
        );
        let mut stream = filters.stream(Direction::Output);
        let mut out = String::new();
        let mut blocked = None;
        for chunk in "lorem ipsum ".repeat(500).split_inclusive(' ').chain([
            "the key is sec",
            "ret-48",
            "21 ok",
            " and more text",
        ]) {
            match stream.push(chunk) {
                Ok(text) => out.push_str(&text),
                Err(error) => {
                    blocked = Some(error);
                    break;
                }
            }
        }
        let blocked = blocked.or_else(|| stream.finish().err());
        assert_eq!(blocked.unwrap().rule, "secret");
        assert!(!out.contains("sec"), "{out}");
        assert!(out.len() > 4000);
    }

    #[test]
    fn a_streams_debug_shows_no_held_text() {
        let filters = settings(r#"{"pii": {"mode": "redact", "kinds": ["email"]}}"#);
        let mut stream = filters.stream(Direction::Output);
        assert_eq!(stream.push("mail jane@example.com").unwrap(), "");
        let shown = format!("{stream:?}");
        assert!(
            shown.contains("held_bytes: 21") && !shown.contains("jane"),
            "{shown}"
        );
    }

    #[test]
    fn a_stream_in_another_direction_passes_chunks_on() {
        let filters =
            settings(r#"{"pii": {"mode": "redact", "kinds": ["email"]}, "apply_to": ["input"]}"#);
        let mut stream = filters.stream(Direction::Output);
        assert_eq!(stream.push("jane@example.com").unwrap(), "jane@example.com");
        assert_eq!(stream.finish().unwrap(), Finished::default());
    }

    #[test]
    fn a_large_answer_in_tiny_chunks_streams_in_linear_time() {
        let filters = settings(&format!(
            r#"{{"pii": {{"mode": "redact", "kinds": {ALL_KINDS}}}}}"#
        ));
        let unit = "call 555-123-4567 or mail jane@example.com about 4111 1111 1111 1111; ";
        let text = unit.repeat(200 * 1024 / unit.len());
        let mut stream = filters.stream(Direction::Output);
        let mut out = String::new();
        let bytes: Vec<&str> = text.split_inclusive(|_| true).collect();
        for piece in &bytes {
            out.push_str(&stream.push(piece).unwrap());
        }
        out.push_str(&stream.finish().unwrap().text);
        let Verdict::Pass { text: whole, .. } = filters.apply(Direction::Output, &text) else {
            panic!("blocked");
        };
        assert_eq!(out, whole);
    }
}
