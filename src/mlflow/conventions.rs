//! Filling MLflow's reserved span attributes from other tracing conventions, as MLflow's server
//! does when it stores OTLP spans (`translate_span_when_storing`; reference §5.3).
//!
//! Each convention is a row of keys in [`TRANSLATORS`], tried in MLflow's order; the first that
//! yields a value wins, and a reserved attribute already present is never overwritten. Order of
//! the filled attributes follows MLflow: span type, inputs, outputs, token usage, message format,
//! tools, model, provider.

use super::attributes;
use super::json::{PyValue, write_str};
use super::span::{Attributes, SpanEvent};
use super::usage::TokenCounts;

/// `mlflow.spanType`.
pub const SPAN_TYPE: &str = "mlflow.spanType";
/// `mlflow.spanInputs`.
pub const INPUTS: &str = "mlflow.spanInputs";
/// `mlflow.spanOutputs`.
pub const OUTPUTS: &str = "mlflow.spanOutputs";
/// `mlflow.chat.tokenUsage`.
pub const TOKEN_USAGE: &str = "mlflow.chat.tokenUsage";
/// `mlflow.llm.model`.
pub const MODEL: &str = "mlflow.llm.model";
/// `mlflow.llm.provider`.
pub const PROVIDER: &str = "mlflow.llm.provider";
/// `mlflow.message.format`.
pub const MESSAGE_FORMAT: &str = "mlflow.message.format";
/// `mlflow.chat.tools`.
pub const TOOLS: &str = "mlflow.chat.tools";

/// The keys one convention uses for what MLflow needs.
#[derive(Debug)]
pub struct Translator {
    /// The convention's name, for documentation and tests.
    pub name: &'static str,
    /// The attribute naming the kind of operation.
    pub kind_key: &'static str,
    /// Kind value → MLflow span type.
    pub kinds: &'static [(&'static str, &'static str)],
    /// Attributes holding the inputs, in priority order.
    pub inputs: &'static [&'static str],
    /// Attributes holding the outputs.
    pub outputs: &'static [&'static str],
    /// Numbered attributes holding the inputs, tried after [`Translator::inputs`]: `*` stands
    /// for a run of digits (Traceloop numbers its prompts: `gen_ai.prompt.0.content`).
    pub numbered_inputs: &'static [&'static str],
    /// Numbered attributes holding the outputs, tried after [`Translator::outputs`].
    pub numbered_outputs: &'static [&'static str],
    /// Input (prompt) token count.
    pub input_tokens: &'static [&'static str],
    /// Output (completion) token count.
    pub output_tokens: &'static [&'static str],
    /// Total token count.
    pub total_tokens: &'static [&'static str],
    /// Prompt tokens read from cache.
    pub cache_read: &'static [&'static str],
    /// Prompt tokens written to cache.
    pub cache_write: &'static [&'static str],
    /// Model name.
    pub model: &'static [&'static str],
    /// Model provider.
    pub provider: &'static [&'static str],
    /// Tool definitions.
    pub tools: &'static [&'static str],
    /// `mlflow.message.format` when the convention is recognised.
    pub message_format: Option<&'static str>,
}

const NONE: &[&str] = &[];

const EMPTY: Translator = Translator {
    name: "",
    kind_key: "",
    kinds: &[],
    inputs: NONE,
    outputs: NONE,
    numbered_inputs: NONE,
    numbered_outputs: NONE,
    input_tokens: NONE,
    output_tokens: NONE,
    total_tokens: NONE,
    cache_read: NONE,
    cache_write: NONE,
    model: NONE,
    provider: NONE,
    tools: NONE,
    message_format: None,
};

/// The conventions, in MLflow's `_TRANSLATORS` order (Gemini CLI, Claude Code, Spring AI, VoltAgent
/// and LiveKit, which need heuristics beyond keys, are not included).
pub const TRANSLATORS: &[Translator] = &[
    Translator {
        name: "openinference",
        kind_key: "openinference.span.kind",
        kinds: &[
            ("TOOL", "TOOL"),
            ("CHAIN", "CHAIN"),
            ("LLM", "LLM"),
            ("RETRIEVER", "RETRIEVER"),
            ("EMBEDDING", "EMBEDDING"),
            ("AGENT", "AGENT"),
            ("RERANKER", "RERANKER"),
            ("UNKNOWN", "UNKNOWN"),
            ("GUARDRAIL", "GUARDRAIL"),
            ("EVALUATOR", "EVALUATOR"),
        ],
        inputs: &["input.value"],
        outputs: &["output.value"],
        input_tokens: &["llm.token_count.prompt"],
        output_tokens: &["llm.token_count.completion"],
        total_tokens: &["llm.token_count.total"],
        cache_read: &["llm.token_count.prompt_details.cache_read"],
        cache_write: &["llm.token_count.prompt_details.cache_write"],
        model: &[
            "llm.response.model_name",
            "llm.model_name",
            "llm.request.model_name",
            "embedding.model_name",
        ],
        provider: &["llm.provider"],
        ..EMPTY
    },
    Translator {
        name: "genai_semconv",
        kind_key: "gen_ai.operation.name",
        kinds: &[
            ("chat", "CHAT_MODEL"),
            ("create_agent", "AGENT"),
            ("embeddings", "EMBEDDING"),
            ("execute_tool", "TOOL"),
            ("generate_content", "LLM"),
            ("invoke_agent", "AGENT"),
            ("text_completion", "LLM"),
            ("response", "LLM"),
        ],
        inputs: &["gen_ai.input.messages", "gen_ai.tool.call.arguments"],
        outputs: &["gen_ai.output.messages", "gen_ai.tool.call.result"],
        input_tokens: &["gen_ai.usage.input_tokens"],
        output_tokens: &["gen_ai.usage.output_tokens"],
        cache_read: &["gen_ai.usage.cache_read.input_tokens"],
        cache_write: &[
            "gen_ai.usage.cache_write.input_tokens",
            "gen_ai.usage.cache_creation.input_tokens",
        ],
        model: &["gen_ai.response.model", "gen_ai.request.model"],
        provider: &["gen_ai.provider.name"],
        tools: &["gen_ai.tool.definitions"],
        ..EMPTY
    },
    Translator {
        name: "traceloop",
        kind_key: "traceloop.span.kind",
        kinds: &[
            ("workflow", "WORKFLOW"),
            ("task", "TASK"),
            ("agent", "AGENT"),
            ("tool", "TOOL"),
            ("unknown", "UNKNOWN"),
        ],
        inputs: &["traceloop.entity.input"],
        outputs: &["traceloop.entity.output"],
        numbered_inputs: &[
            "gen_ai.prompt.*.content",
            "gen_ai.completion.*.tool_calls.*.arguments",
        ],
        numbered_outputs: &["gen_ai.completion.*.content"],
        input_tokens: &["gen_ai.usage.prompt_tokens"],
        output_tokens: &["gen_ai.usage.completion_tokens"],
        total_tokens: &["llm.usage.total_tokens"],
        provider: &["gen_ai.system"],
        ..EMPTY
    },
    Translator {
        name: "google_adk",
        inputs: &[
            "gcp.vertex.agent.llm_request",
            "gcp.vertex.agent.tool_call_args",
        ],
        outputs: &[
            "gcp.vertex.agent.llm_response",
            "gcp.vertex.agent.tool_response",
        ],
        ..EMPTY
    },
    Translator {
        name: "vercel_ai",
        kind_key: "ai.operationId",
        kinds: &[
            ("ai.generateText", "LLM"),
            ("ai.generateText.doGenerate", "LLM"),
            ("ai.streamText", "LLM"),
            ("ai.streamText.doStream", "LLM"),
            ("ai.generateObject", "LLM"),
            ("ai.generateObject.doGenerate", "LLM"),
            ("ai.streamObject", "LLM"),
            ("ai.streamObject.doStream", "LLM"),
            ("ai.toolCall", "TOOL"),
            ("ai.embed", "EMBEDDING"),
            ("ai.embed.doEmbed", "EMBEDDING"),
            ("ai.embedMany", "EMBEDDING"),
            ("ai.embedMany.doEmbed", "EMBEDDING"),
        ],
        inputs: &["ai.prompt", "ai.toolCall.args", "ai.value", "ai.values"],
        outputs: &[
            "ai.response.text",
            "ai.toolCall.result",
            "ai.response.object",
            "ai.embedding",
            "ai.embeddings",
        ],
        ..EMPTY
    },
    Translator {
        name: "laminar",
        kind_key: "lmnr.span.type",
        kinds: &[
            ("LLM", "LLM"),
            ("TOOL", "TOOL"),
            ("DEFAULT", "CHAIN"),
            ("PIPELINE", "CHAIN"),
            ("EXECUTOR", "AGENT"),
            ("EVALUATOR", "EVALUATOR"),
            ("HUMAN_EVALUATOR", "EVALUATOR"),
            ("EVALUATION", "EVALUATOR"),
            ("CACHED", "LLM"),
        ],
        inputs: &["lmnr.span.input"],
        outputs: &["lmnr.span.output"],
        input_tokens: &["gen_ai.usage.input_tokens"],
        output_tokens: &["gen_ai.usage.output_tokens"],
        model: &["gen_ai.response.model", "gen_ai.request.model"],
        provider: &["gen_ai.system"],
        message_format: Some("openai"),
        ..EMPTY
    },
    Translator {
        name: "langfuse",
        kind_key: "langfuse.observation.type",
        kinds: &[
            ("generation", "LLM"),
            ("embedding", "EMBEDDING"),
            ("tool", "TOOL"),
            ("retriever", "RETRIEVER"),
            ("agent", "AGENT"),
            ("chain", "CHAIN"),
            ("evaluator", "EVALUATOR"),
            ("guardrail", "GUARDRAIL"),
            ("span", "UNKNOWN"),
        ],
        inputs: &["langfuse.observation.input"],
        outputs: &["langfuse.observation.output"],
        ..EMPTY
    },
];

/// Whether Python would find the value truthy.
fn truthy(v: &PyValue) -> bool {
    match v {
        PyValue::Null => false,
        PyValue::Bool(b) => *b,
        PyValue::Int(i) => *i != 0,
        PyValue::Float(f) => *f != 0.0,
        PyValue::Str(s) => !s.is_empty(),
        PyValue::List(l) => !l.is_empty(),
        PyValue::Dict(d) => !d.is_empty(),
    }
}

/// Whether `json.loads(stored)` (or, when it is not JSON, the raw text) is truthy, without parsing
/// the whole value: only `null`, `false`, zero, `""`, `[]` and `{}` (and an empty text) are falsy.
fn truthy_stored(stored: &str) -> bool {
    let t = stored.trim_matches([' ', '\t', '\n', '\r']);
    let inner_empty = |open: char, close: char| {
        t.strip_prefix(open)
            .and_then(|r| r.strip_suffix(close))
            .is_some_and(|r| r.trim_matches([' ', '\t', '\n', '\r']).is_empty())
    };
    let zero = t.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        && serde_json::from_str::<f64>(t).is_ok_and(|n| n == 0.0);
    !(stored.is_empty()
        || t == "null"
        || t == "false"
        || t == "\"\""
        || inner_empty('[', ']')
        || inner_empty('{', '}')
        || zero)
}

/// A stored value unless MLflow treats it as missing: absent, or JSON for a falsy value (`null`,
/// `{}`, `[]`, `""`, `0`, `false`).
fn present(attrs: &Attributes, key: &str) -> Option<usize> {
    attrs
        .position(key)
        .filter(|&i| truthy_stored(attrs.value(i)))
}

/// Whether `key` matches `pattern`, where `*` stands for a run of digits (Traceloop numbers its
/// prompts: `gen_ai.prompt.0.content`).
fn matches(pattern: &str, key: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return false;
    };
    let Some(mut rest) = key.strip_prefix(first) else {
        return false;
    };
    for part in parts {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        let Some(after) = rest[digits..].strip_prefix(part) else {
            return false;
        };
        rest = after;
    }
    rest.is_empty()
}

/// The index of the first of `keys` present.
fn first_present(attrs: &Attributes, keys: &[&str]) -> Option<usize> {
    keys.iter().find_map(|k| present(attrs, k))
}

/// The index of the first attribute, in the span's order, that matches a numbered key and is
/// present.
fn first_numbered(attrs: &Attributes, patterns: &[&str]) -> Option<usize> {
    patterns.iter().find_map(|p| {
        attrs
            .iter()
            .position(|(key, stored)| matches(p, key) && truthy_stored(stored))
    })
}

/// A token count as MLflow's `_parse_int_attribute` reads it: an integer, or a string holding one.
fn count(attrs: &Attributes, keys: &[&str]) -> Option<i64> {
    keys.iter()
        .find_map(|k| match attributes::read(attrs.get(k)?) {
            PyValue::Int(i) => Some(i),
            PyValue::Str(s) => s.trim().parse().ok(),
            _ => None,
        })
}

/// The MLflow span type `t` recognises from its kind attribute, if any.
fn span_type(attrs: &Attributes, t: &Translator) -> Option<&'static str> {
    if t.kind_key.is_empty() {
        return None;
    }
    let kind = attributes::read_str(attrs.get(t.kind_key)?)?;
    t.kinds.iter().find(|(k, _)| *k == kind).map(|(_, ty)| *ty)
}

fn usage(attrs: &Attributes, t: &Translator) -> Option<TokenCounts> {
    let input = count(attrs, t.input_tokens);
    let output = count(attrs, t.output_tokens);
    let total = count(attrs, t.total_tokens).or(match (input, output) {
        (Some(i), Some(o)) => Some(i + o),
        _ => None,
    });
    (input.is_some() || output.is_some() || total.is_some()).then(|| TokenCounts {
        input,
        output,
        total,
        cache_read: count(attrs, t.cache_read),
        cache_creation: count(attrs, t.cache_write),
    })
}

/// `inputs["model"]` or `outputs["model"]`, MLflow's fallback for the model name.
fn model_from_io(attrs: &Attributes) -> Option<String> {
    [INPUTS, OUTPUTS]
        .iter()
        .find_map(|k| model_of(attrs.get(k)?))
}

/// The non-empty string `model` of a stored dict. Only that field is decoded; the rest of the
/// value (often kilobytes of prompt) is skipped.
fn model_of(stored: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithModel {
        model: Option<serde_json::Value>,
    }
    match attributes::dict_fields::<WithModel>(stored)?.model {
        Some(serde_json::Value::String(m)) if !m.is_empty() => Some(m),
        _ => None,
    }
}

/// Inputs or outputs carried by events, tried after every attribute convention, in MLflow's
/// `_EVENT_TRANSLATORS` order: Spring AI (`gen_ai.content.prompt`/`completion` events, value
/// stored as it is), then GenAI semconv message events (`gen_ai.{system,user,assistant}.message`
/// in, `gen_ai.choice` out, collected into a JSON list of `{role, content}`).
fn from_events(events: &[SpanEvent], inputs: bool) -> Option<String> {
    let (spring_event, spring_key) = if inputs {
        ("gen_ai.content.prompt", "gen_ai.prompt")
    } else {
        ("gen_ai.content.completion", "gen_ai.completion")
    };
    let spring = events
        .iter()
        .filter(|e| e.name == spring_event)
        .find_map(|e| {
            e.attributes
                .get(spring_key)
                .map(PyValue::from_json)
                .filter(truthy)
        });
    if let Some(value) = spring {
        return Some(match value {
            PyValue::Str(s) => s,
            other => other.dumps(),
        });
    }
    let decode = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => attributes::read(s),
        other => PyValue::from_json(other),
    };
    let messages: Vec<PyValue> = events
        .iter()
        .filter_map(|e| {
            let role = match (inputs, e.name.as_str()) {
                (true, "gen_ai.system.message") => PyValue::Str("system".into()),
                (true, "gen_ai.user.message") => PyValue::Str("user".into()),
                (true, "gen_ai.assistant.message") => PyValue::Str("assistant".into()),
                (false, "gen_ai.choice") => e
                    .attributes
                    .get("role")
                    .map(decode)
                    .unwrap_or_else(|| PyValue::Str("assistant".into())),
                _ => return None,
            };
            let content = e
                .attributes
                .get("content")
                .filter(|c| truthy(&PyValue::from_json(c)))?;
            Some(PyValue::Dict(vec![
                ("role".into(), role),
                ("content".into(), decode(content)),
            ]))
        })
        .collect();
    (!messages.is_empty()).then(|| PyValue::List(messages).dumps_ascii())
}

/// The reserved attributes that translation fills, each with its bit in a [`Found`] mask above
/// the conventions' bits.
const RESERVED: [&str; 7] = [
    INPUTS,
    OUTPUTS,
    TOKEN_USAGE,
    MESSAGE_FORMAT,
    TOOLS,
    MODEL,
    PROVIDER,
];
const RESERVED_SHIFT: usize = 16;
const _: () = assert!(TRANSLATORS.len() <= RESERVED_SHIFT);

/// For every attribute key a convention reads (and the fixed prefix of each numbered key), the
/// set of conventions that read it, as a bit mask over [`TRANSLATORS`]; for each reserved key,
/// its bit. An exact key's mask also holds the bits of the prefixes it starts with, so only keys
/// that miss need the prefix scan.
struct KeyIndex {
    keys: rustc_hash::FxHashMap<&'static str, u32>,
    prefixes: Vec<(&'static str, u32)>,
}

static KEY_INDEX: std::sync::LazyLock<KeyIndex> = std::sync::LazyLock::new(|| {
    let mut keys = rustc_hash::FxHashMap::default();
    let mut prefixes = Vec::new();
    for (i, t) in TRANSLATORS.iter().enumerate() {
        let bit = 1u32 << i;
        let lists = [
            t.inputs,
            t.outputs,
            t.numbered_inputs,
            t.numbered_outputs,
            t.input_tokens,
            t.output_tokens,
            t.total_tokens,
            t.cache_read,
            t.cache_write,
            t.model,
            t.provider,
            t.tools,
        ];
        for &key in lists.into_iter().flatten().chain([&t.kind_key]) {
            match key.split_once('*') {
                Some((prefix, _)) => match prefixes.iter_mut().find(|(p, _)| *p == prefix) {
                    Some((_, bits)) => *bits |= bit,
                    None => prefixes.push((prefix, bit)),
                },
                None if !key.is_empty() => *keys.entry(key).or_insert(0) |= bit,
                None => {}
            }
        }
    }
    for (i, key) in RESERVED.into_iter().enumerate() {
        keys.insert(key, 1 << (RESERVED_SHIFT + i));
    }
    for (key, bits) in &mut keys {
        for (prefix, bit) in &prefixes {
            if key.starts_with(prefix) {
                *bits |= bit;
            }
        }
    }
    KeyIndex { keys, prefixes }
});

/// What one pass over a span's keys finds: the conventions that can match, so that only they
/// are probed (in MLflow's order) and spans of no known convention probe nothing, and which
/// reserved attributes are already set, so that translation looks none of them up.
#[derive(Clone, Copy)]
struct Found(u32);

impl Found {
    fn of(attrs: &Attributes) -> Self {
        let index = &*KEY_INDEX;
        let mut mask = 0u32;
        for k in attrs.keys() {
            mask |= match index.keys.get(k) {
                Some(bits) => *bits,
                None => index
                    .prefixes
                    .iter()
                    .filter(|(prefix, _)| k.starts_with(prefix))
                    .fold(0, |bits, (_, bit)| bits | bit),
            };
        }
        Found(mask)
    }

    /// Whether the span had the reserved attribute `key`, one of [`RESERVED`].
    fn has(self, key: &str) -> bool {
        let i = RESERVED.iter().position(|r| *r == key);
        debug_assert!(i.is_some(), "{key} is not reserved");
        i.is_some_and(|i| self.0 & (1 << (RESERVED_SHIFT + i)) != 0)
    }

    /// The conventions that can match, in MLflow's order.
    fn conventions(self) -> impl Iterator<Item = &'static Translator> {
        TRANSLATORS
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, t)| t)
    }
}

/// Adds `key` with `json.dumps(json.loads(v))` of the value `v` at `index`, as MLflow re-encodes
/// model and provider. A plain string (no escapes) is its own re-encoding, and shared.
fn push_redumped(attrs: &mut Attributes, key: &str, index: usize) {
    let stored = attrs.value(index);
    if attributes::plain_str(stored).is_some() {
        attrs.push_copy_of(key, index);
    } else {
        let value = attributes::read(stored).dumps();
        attrs.push(key, &value);
    }
}

/// Fills the reserved MLflow attributes that are absent from `attrs` from the first convention
/// that provides them (attributes first, then `events`).
pub fn translate(attrs: &mut Attributes, events: &[SpanEvent]) {
    // Only conventions with a key on this span can match; events and the model-in-inputs
    // fallback apply to every span.
    let found = Found::of(attrs);
    let needs_type = attrs.get(SPAN_TYPE).is_none_or(|t| t == "\"UNKNOWN\"");
    if needs_type && let Some(ty) = found.conventions().find_map(|t| span_type(attrs, t)) {
        attrs.insert_with(SPAN_TYPE, |out| write_str(ty, out));
    }
    for (key, inputs) in [(INPUTS, true), (OUTPUTS, false)] {
        if found.has(key) {
            continue;
        }
        let from_attributes = found.conventions().find_map(|t| {
            let (exact, numbered) = if inputs {
                (t.inputs, t.numbered_inputs)
            } else {
                (t.outputs, t.numbered_outputs)
            };
            first_present(attrs, exact).or_else(|| first_numbered(attrs, numbered))
        });
        match from_attributes {
            Some(i) => attrs.push_copy_of(key, i),
            None => {
                if let Some(v) = from_events(events, inputs) {
                    attrs.push(key, &v);
                }
            }
        }
    }
    if !found.has(TOKEN_USAGE)
        && let Some(u) = found.conventions().find_map(|t| usage(attrs, t))
    {
        attrs.push_with(TOKEN_USAGE, |out| u.dump_into(out));
    }
    if !found.has(MESSAGE_FORMAT)
        && let Some(format) = found
            .conventions()
            .filter(|t| !t.kind_key.is_empty() && attrs.contains_key(t.kind_key))
            .find_map(|t| t.message_format)
    {
        attrs.push_with(MESSAGE_FORMAT, |out| write_str(format, out));
    }
    if !found.has(TOOLS)
        && let Some(i) = found
            .conventions()
            .find_map(|t| first_present(attrs, t.tools))
    {
        attrs.push_copy_of(TOOLS, i);
    }
    // Model and provider are decoded, then encoded again (`dump_span_attribute_value`).
    if !found.has(MODEL) {
        if let Some(i) = found
            .conventions()
            .find_map(|t| first_present(attrs, t.model))
        {
            push_redumped(attrs, MODEL, i);
        } else if let Some(m) = model_from_io(attrs) {
            attrs.push_with(MODEL, |out| write_str(&m, out));
        }
    }
    if !found.has(PROVIDER)
        && let Some(i) = found
            .conventions()
            .find_map(|t| first_present(attrs, t.provider))
    {
        push_redumped(attrs, PROVIDER, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs.iter().copied().collect()
    }

    #[test]
    fn present_reserved_attributes_are_never_overwritten() {
        let mut a = attrs(&[
            (SPAN_TYPE, r#""AGENT""#),
            (INPUTS, r#"{"mine": 1}"#),
            ("gen_ai.operation.name", r#""chat""#),
            ("gen_ai.input.messages", "[1]"),
        ]);
        translate(&mut a, &[]);
        assert_eq!(&a[SPAN_TYPE], r#""AGENT""#);
        assert_eq!(&a[INPUTS], r#"{"mine": 1}"#);
    }

    #[test]
    fn unknown_span_type_is_replaced_and_unmapped_kinds_fall_through() {
        let mut a = attrs(&[
            (SPAN_TYPE, r#""UNKNOWN""#),
            ("openinference.span.kind", r#""NOT_A_KIND""#),
            ("traceloop.span.kind", r#""tool""#),
        ]);
        translate(&mut a, &[]);
        assert_eq!(&a[SPAN_TYPE], r#""TOOL""#);
    }

    #[test]
    fn first_convention_in_mlflow_order_wins_and_falsy_values_are_missing() {
        let mut a = attrs(&[
            ("input.value", "{}"),
            ("gen_ai.input.messages", "[]"),
            ("traceloop.entity.input", r#""from traceloop""#),
            ("gen_ai.completion.0.content", r#""out""#),
        ]);
        translate(&mut a, &[]);
        assert_eq!(&a[INPUTS], r#""from traceloop""#);
        assert_eq!(&a[OUTPUTS], r#""out""#, "numbered Traceloop keys match");
    }

    #[test]
    fn token_usage_has_only_known_counts() {
        let mut a = attrs(&[
            ("gen_ai.usage.input_tokens", "21"),
            ("gen_ai.usage.output_tokens", r#""7""#),
        ]);
        translate(&mut a, &[]);
        assert_eq!(
            &a[TOKEN_USAGE],
            r#"{"input_tokens": 21, "output_tokens": 7, "total_tokens": 28}"#
        );
        let mut a = attrs(&[
            ("llm.token_count.total", "9"),
            ("llm.token_count.prompt_details.cache_read", "4"),
        ]);
        translate(&mut a, &[]);
        assert_eq!(
            &a[TOKEN_USAGE],
            r#"{"total_tokens": 9, "cache_read_input_tokens": 4}"#
        );
        let mut a = attrs(&[("gen_ai.usage.input_tokens", "2.5")]);
        translate(&mut a, &[]);
        assert!(!a.contains_key(TOKEN_USAGE), "floats are not token counts");
    }

    #[test]
    fn model_falls_back_to_the_inputs_and_provider_is_decoded() {
        let mut a = attrs(&[
            (INPUTS, r#"{"model": "gpt-x", "q": 1}"#),
            ("llm.provider", r#""anthropic""#),
        ]);
        translate(&mut a, &[]);
        assert_eq!(&a[MODEL], r#""gpt-x""#);
        assert_eq!(&a[PROVIDER], r#""anthropic""#);
        for (inputs, model) in [
            (r#"{"model": "a", "model": "b"}"#, Some(r#""b""#)),
            (r#"{"model": 7, "model": "b"}"#, Some(r#""b""#)),
            (r#"{"model": "a", "model": 7}"#, None),
            (r#"{"model": ""}"#, None),
            (r#"{"model": ["a"]}"#, None),
            (r#"[{"model": "a"}]"#, None),
            (r#"["a"]"#, None),
            (r#"{"model": "é\n"}"#, Some(r#""é\n""#)),
        ] {
            let mut a = attrs(&[(INPUTS, inputs)]);
            translate(&mut a, &[]);
            assert_eq!(a.get(MODEL), model, "{inputs}");
        }
        let mut a = attrs(&[("llm.provider", r#""multi\u0020word""#)]);
        translate(&mut a, &[]);
        assert_eq!(&a[PROVIDER], r#""multi word""#, "re-encoded, not copied");
        let mut a = attrs(&[("lmnr.span.type", r#""LLM""#)]);
        translate(&mut a, &[]);
        assert_eq!(&a[MESSAGE_FORMAT], r#""openai""#);
    }

    #[test]
    fn truthiness_matches_python_without_parsing() {
        for falsy in [
            "", "null", "false", "0", "-0.0", "0e5", "\"\"", "[]", "[ ]", "{}", " {\n} ",
        ] {
            assert!(!truthy_stored(falsy), "{falsy:?}");
        }
        for truthy in [
            "x",
            "\"x\"",
            "[0]",
            "{\"a\": null}",
            "1",
            "-0.5",
            "true",
            "not json",
            "0x",
        ] {
            assert!(truthy_stored(truthy), "{truthy:?}");
        }
    }

    #[test]
    fn traceloop_key_patterns_need_digits() {
        assert!(matches(
            "gen_ai.prompt.*.content",
            "gen_ai.prompt.12.content"
        ));
        assert!(!matches(
            "gen_ai.prompt.*.content",
            "gen_ai.prompt..content"
        ));
        assert!(!matches(
            "gen_ai.prompt.*.content",
            "gen_ai.prompt.1.content.x"
        ));
        assert!(matches("a.*.b.*.c", "a.1.b.22.c"));
    }
}
