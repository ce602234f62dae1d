//! A request as the router sees it, borrowed from wherever it was decoded (protobuf bytes, or the
//! engine's Python `ChatInput`), and its validation: every rule about what a caller may send is
//! decided here, once, and each refusal names the field.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::error::{Refusal, Result};
use crate::scoring::PredictedQuality;

pub const ROLES: [&str; 3] = ["system", "user", "assistant"];
/// Characters of a client's string shown in an error; the rest is cut and marked with "…".
pub const SHOWN_CHARS: usize = 64;

/// What one request may carry (`server.limits`, defaults in `switchpoint/server/limits.py`).
/// Checked before anything reads the request's text, so refusing costs no more than its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages per request.
    pub messages: usize,
    /// Bytes of one message's content.
    pub message_bytes: usize,
    /// Bytes of all messages' contents together.
    pub prompt_bytes: usize,
    /// Bytes of a name or id: tenant, stage, strategy, model and capability names, request id,
    /// role, stop sequence.
    pub name_bytes: usize,
    /// Items of a list of names: routing.models, routing.capabilities, params.stop.
    pub list_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            messages: 1024,
            message_bytes: 256 * 1024,
            prompt_bytes: 512 * 1024,
            name_bytes: 128,
            list_items: 64,
        }
    }
}

impl Limits {
    /// The message count alone, which a server can check before it converts a request's
    /// messages (tens of thousands fit in a megabyte).
    ///
    /// # Errors
    /// `Refused(TooLarge)` over `messages`.
    pub fn check_message_count(&self, count: usize) -> Result<()> {
        if count > self.messages {
            return Err(Refusal::too_large(
                "messages",
                format!(
                    "{count} messages exceeds server.limits.messages ({})",
                    self.messages
                ),
            ));
        }
        Ok(())
    }
}

/// `text` as an error may show it: at most `SHOWN_CHARS` characters, then "…".
pub fn clipped(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
    }
}

fn too_large(field: impl Into<String>, size: usize, limit: &str, value: usize) -> crate::CoreError {
    Refusal::too_large(
        field,
        format!("{size} bytes exceeds server.limits.{limit} ({value})"),
    )
}

fn too_long(field: impl Into<String>, size: usize, limit: &str, value: usize) -> crate::CoreError {
    Refusal::invalid(
        field,
        format!("{size} bytes exceeds server.limits.{limit} ({value})"),
    )
}
/// `switchpoint.v1.Priority`: unspecified, realtime, interactive, batch.
const PRIORITIES: std::ops::RangeInclusive<i64> = 0..=3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// `switchpoint.v1.RoutingOptions`; `Default` is a request that sets none of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingOptions<'a> {
    pub models: Vec<&'a str>,
    pub stage: &'a str,
    pub strategy: &'a str,
    /// (cost, latency, quality), when the caller set custom weights.
    pub weights: Option<[f64; 3]>,
    pub tenant: &'a str,
    pub priority: i64,
    pub capabilities: Vec<&'a str>,
    pub max_cost_usd: Option<f64>,
    pub hedge: bool,
}

/// `switchpoint.v1.GenerationParams`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params<'a> {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<&'a str>,
}

/// A reading of the prompt given in place of the classifier's (by the engine, from a classifier
/// model it asked because the rules were unsure), and what the reasons say about it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GivenReading<'a> {
    /// The task class (one of `crate::TASK_CLASSES` or chat) and complexity to route by; `None`
    /// keeps the rules' reading.
    pub reading: Option<(&'static str, f64)>,
    /// Said after the auto level's reading: what classified the prompt, or why the rules did.
    pub note: &'a str,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteInput<'a> {
    pub messages: Vec<Message<'a>>,
    pub routing: RoutingOptions<'a>,
    pub params: Params<'a>,
    pub request_id: &'a str,
    /// `ChatRequest.cache.threshold`; Route requests carry none.
    pub cache_threshold: Option<f64>,
    /// The quality predictor's view of this request per table index (empty when it is off).
    pub predicted: Vec<Option<PredictedQuality>>,
    /// Uniform in [0, 1): decides whether this request explores (`routing.exploration`).
    pub explore_draw: f64,
    /// Only the engine sets it; used only if the auto level decides.
    pub given: Option<GivenReading<'a>>,
}

/// Python's `str.isspace` set: Unicode `White_Space` plus the four ASCII separators (0x1C-0x1F)
/// Python counts as whitespace, so "blank" means here what it meant to the Python engine.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

pub(crate) fn is_blank(text: &str) -> bool {
    text.chars().all(is_python_space)
}

/// Bounds of a number field; `low_open` excludes `low` itself.
struct Range {
    low: f64,
    high: f64,
    low_open: bool,
}

impl Range {
    const NON_NEGATIVE: Self = Self {
        low: 0.0,
        high: f64::INFINITY,
        low_open: false,
    };
    const UNIT: Self = Self {
        low: 0.0,
        high: 1.0,
        low_open: false,
    };
    const UNIT_OPEN: Self = Self {
        low: 0.0,
        high: 1.0,
        low_open: true,
    };

    fn check(&self, field: &str, value: Option<f64>) -> Result<()> {
        let Some(value) = value else {
            return Ok(());
        };
        if !value.is_finite() {
            return Err(Refusal::invalid(field, "must be a finite number"));
        }
        if value < self.low || (self.low_open && value <= self.low) {
            let op = if self.low_open { ">" } else { ">=" };
            return Err(Refusal::invalid(
                field,
                format!("must be {op} {}", self.low),
            ));
        }
        if value > self.high {
            return Err(Refusal::invalid(field, format!("must be <= {}", self.high)));
        }
        Ok(())
    }
}

/// Python's `repr` of a string cut to `SHOWN_CHARS`, for naming a bad value in a message.
fn quoted(text: &str) -> String {
    let text = clipped(text);
    let text = text.as_ref();
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

impl RouteInput<'_> {
    /// The first thing wrong with the request, naming its field: sizes first (`limits`), then
    /// content.
    ///
    /// # Errors
    /// `Refused(TooLarge)` for a size over `limits`, `Refused(InvalidRequest)` otherwise.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        self.check_sizes(limits)?;
        self.validate_messages()?;
        self.routing.validate()?;
        self.params.validate()?;
        Range::UNIT_OPEN.check("cache.threshold", self.cache_threshold)?;
        let given = self.given.and_then(|given| given.reading);
        Range::UNIT.check("classification.complexity", given.map(|(_, c)| c))?;
        Ok(())
    }

    fn check_sizes(&self, limits: &Limits) -> Result<()> {
        limits.check_message_count(self.messages.len())?;
        let mut prompt = 0usize;
        for (i, message) in self.messages.iter().enumerate() {
            let size = message.content.len();
            if size > limits.message_bytes {
                let field = format!("messages[{i}].content");
                return Err(too_large(
                    field,
                    size,
                    "message_bytes",
                    limits.message_bytes,
                ));
            }
            prompt += size;
            let role = message.role.len();
            if role > limits.name_bytes {
                let field = format!("messages[{i}].role");
                return Err(too_long(field, role, "name_bytes", limits.name_bytes));
            }
        }
        if prompt > limits.prompt_bytes {
            return Err(too_large(
                "messages",
                prompt,
                "prompt_bytes",
                limits.prompt_bytes,
            ));
        }
        let routing = &self.routing;
        let names = [
            ("routing.tenant", routing.tenant),
            ("routing.stage", routing.stage),
            ("routing.strategy", routing.strategy),
            ("request_id", self.request_id),
        ];
        for (field, name) in names {
            if name.len() > limits.name_bytes {
                return Err(too_long(field, name.len(), "name_bytes", limits.name_bytes));
            }
        }
        let lists = [
            ("routing.models", &routing.models),
            ("routing.capabilities", &routing.capabilities),
            ("params.stop", &self.params.stop),
        ];
        for (field, list) in lists {
            if list.len() > limits.list_items {
                return Err(Refusal::too_large(
                    field,
                    format!(
                        "{} items exceeds server.limits.list_items ({})",
                        list.len(),
                        limits.list_items
                    ),
                ));
            }
            for (i, name) in list.iter().enumerate() {
                if name.len() > limits.name_bytes {
                    let field = format!("{field}[{i}]");
                    return Err(too_long(field, name.len(), "name_bytes", limits.name_bytes));
                }
            }
        }
        Ok(())
    }

    fn validate_messages(&self) -> Result<()> {
        let Some(last) = self.messages.last() else {
            return Err(Refusal::invalid(
                "messages",
                "must contain at least one message",
            ));
        };
        for (i, message) in self.messages.iter().enumerate() {
            if !ROLES.contains(&message.role) {
                return Err(Refusal::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "must be one of {} (got {})",
                        ROLES.join(", "),
                        quoted(message.role)
                    ),
                ));
            }
        }
        if self
            .messages
            .iter()
            .all(|m| m.role == "system" || is_blank(m.content))
        {
            return Err(Refusal::invalid(
                "messages",
                "no user or assistant message has any content",
            ));
        }
        if last.role == "system" {
            return Err(Refusal::invalid(
                "messages",
                "the last message must not be a system message",
            ));
        }
        Ok(())
    }
}

impl RoutingOptions<'_> {
    fn validate(&self) -> Result<()> {
        for (i, name) in self.models.iter().enumerate() {
            if is_blank(name) {
                return Err(Refusal::invalid(
                    format!("routing.models[{i}]"),
                    "must not be empty",
                ));
            }
        }
        if let Some(weights) = self.weights {
            for (part, value) in ["cost", "latency", "quality"].iter().zip(weights) {
                Range::NON_NEGATIVE.check(&format!("routing.weights.{part}"), Some(value))?;
            }
            let sum: f64 = weights.iter().sum();
            if sum <= 0.0 {
                return Err(Refusal::invalid("routing.weights", "must not all be zero"));
            }
            if !sum.is_finite() {
                // Each is finite, but normalising would divide by infinity.
                return Err(Refusal::invalid(
                    "routing.weights",
                    "must sum to a finite number",
                ));
            }
        }
        if !PRIORITIES.contains(&self.priority) {
            return Err(Refusal::invalid(
                "routing.priority",
                format!("unknown priority {}", self.priority),
            ));
        }
        Range::NON_NEGATIVE.check("routing.max_cost_usd", self.max_cost_usd)?;
        for (i, capability) in self.capabilities.iter().enumerate() {
            if is_blank(capability) {
                return Err(Refusal::invalid(
                    format!("routing.capabilities[{i}]"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

impl Params<'_> {
    fn validate(&self) -> Result<()> {
        if self.max_tokens.is_some_and(|n| n < 1) {
            return Err(Refusal::invalid("params.max_tokens", "must be >= 1"));
        }
        let temperature = Range {
            low: 0.0,
            high: 2.0,
            low_open: false,
        };
        temperature.check("params.temperature", self.temperature)?;
        Range::UNIT_OPEN.check("params.top_p", self.top_p)?;
        for (i, stop) in self.stop.iter().enumerate() {
            if stop.is_empty() {
                return Err(Refusal::invalid(
                    format!("params.stop[{i}]"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}
