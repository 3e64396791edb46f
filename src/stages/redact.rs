//! `redact`: drops, hashes or truncates attribute values by key pattern, so prompts and personal
//! data never reach a sink.
//!
//! ```yaml
//! - type: redact
//!   salt: ${TRACELOOM_REDACT_SALT}          # key of the hash (HMAC-SHA256); see below
//!   rules:
//!     - keys: [inputs, outputs]             # every attribute and event MLflow reads them from
//!       action: truncate
//!       max_chars: 200
//!     - keys: ["user.email", "*.password"]
//!       action: hash
//!     - keys: ["llm.input_messages.*"]
//!       action: drop
//! ```
//!
//! A rule applies to span attributes, span event attributes, and trace tags and metadata whose
//! key matches, in both the MLflow trace and the OTLP spans (so `otlp-proto` output is redacted
//! too); resource attributes are left alone, as are traceloom's own `traceloom.*` keys. The
//! words `inputs` and `outputs` stand for `mlflow.spanInputs`/`mlflow.spanOutputs`, every key
//! and GenAI event a convention fills them from, and the `mlflow.traceInputs`/`traceOutputs`
//! metadata. A value is acted on as text: a string as
//! itself, anything else as its JSON. `hash` writes `sha256:` and 32 hex digits of
//! HMAC-SHA256(salt, text): the same value always gives the same hash, so redacted values can
//! still be joined and counted. Without a salt it is a plain SHA-256, which a dictionary of
//! likely values (emails) can reverse. The previews are recomputed from the redacted root.

use std::borrow::Cow;
use std::cell::RefCell;

use hmac::{Hmac, Mac};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::pattern::Pattern;
use crate::mlflow::attribute_map::Rewrite;
use crate::mlflow::attributes;
use crate::mlflow::conventions::{INPUTS, OUTPUTS, TRANSLATORS};
use crate::mlflow::preview::truncate;
use crate::model::AssembledTrace;
use crate::otlp::view::ValueRef;
use crate::otlp::{self, AnyValue, KeyValue, Value};

/// `type: redact` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// Key of the hash; without it, `hash` is a plain SHA-256.
    pub salt: Option<String>,
    /// Rules, applied in order; the first whose keys match a value acts on it.
    pub rules: Vec<RuleConfig>,
}

/// One rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Key patterns, or the words `inputs` and `outputs`.
    pub keys: Vec<Pattern>,
    /// What to do with matching values.
    pub action: Action,
    /// For `truncate`: characters kept, `...` included.
    pub max_chars: Option<usize>,
}

/// What a rule does to a value.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Remove the key.
    Drop,
    /// Replace the value with its hash.
    Hash,
    /// Cut the value to `max_chars`.
    Truncate,
}

impl RedactConfig {
    /// Problems the types cannot express.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.rules.is_empty() {
            problems.push("no rules: add at least one under `rules`".into());
        }
        for (i, rule) in self.rules.iter().enumerate() {
            match (rule.action, rule.max_chars) {
                (Action::Truncate, None) => {
                    problems.push(format!("rules[{i}]: `truncate` needs `max_chars`"))
                }
                (Action::Truncate, Some(n)) if n < 4 => problems.push(format!(
                    "rules[{i}].max_chars: {n} leaves no room for the text and `...`"
                )),
                (Action::Drop | Action::Hash, Some(_)) => {
                    problems.push(format!("rules[{i}].max_chars: only `truncate` takes it"))
                }
                _ => {}
            }
            if rule.keys.is_empty() {
                problems.push(format!("rules[{i}].keys: name at least one key"));
            }
        }
        problems
    }
}

/// The keys MLflow fills a span's inputs or outputs from, the trace metadata it copies the
/// root's into, and the GenAI message attributes that carry the same text under other names.
fn convention_keys(inputs: bool) -> Vec<Pattern> {
    let (reserved, extra): (&str, &[&str]) = if inputs {
        (
            INPUTS,
            &[
                "mlflow.traceInputs",
                "gen_ai.prompt*",
                "llm.input_messages.*",
                "llm.prompts*",
            ],
        )
    } else {
        (
            OUTPUTS,
            &[
                "mlflow.traceOutputs",
                "gen_ai.completion*",
                "llm.output_messages.*",
            ],
        )
    };
    let keys = TRANSLATORS
        .iter()
        .flat_map(|t| if inputs { t.inputs } else { t.outputs })
        .chain([&reserved])
        .chain(extra);
    keys.map(|k| Pattern::new(k).expect("convention keys are valid patterns"))
        .collect()
}

/// GenAI events whose `content` attribute holds inputs (or outputs).
fn is_message_event(name: &str, inputs: bool) -> bool {
    if inputs {
        matches!(
            name,
            "gen_ai.system.message"
                | "gen_ai.user.message"
                | "gen_ai.assistant.message"
                | "gen_ai.tool.message"
        )
    } else {
        name == "gen_ai.choice"
    }
}

/// A built rule.
#[derive(Clone, Debug)]
struct Rule {
    patterns: Vec<Pattern>,
    inputs: bool,
    outputs: bool,
    action: Action,
    max_chars: usize,
}

impl Rule {
    fn new(config: RuleConfig) -> Self {
        let mut rule = Rule {
            patterns: Vec::new(),
            inputs: false,
            outputs: false,
            action: config.action,
            max_chars: config.max_chars.unwrap_or(usize::MAX),
        };
        for key in config.keys {
            match key.as_str() {
                "inputs" => rule.inputs = true,
                "outputs" => rule.outputs = true,
                _ => rule.patterns.push(key),
            }
        }
        if rule.inputs {
            rule.patterns.extend(convention_keys(true));
        }
        if rule.outputs {
            rule.patterns.extend(convention_keys(false));
        }
        rule
    }

    fn matches(&self, key: &str) -> bool {
        !key.starts_with("traceloom.") && self.patterns.iter().any(|p| p.matches(key))
    }

    fn matches_event(&self, event: &str, key: &str) -> bool {
        self.matches(key)
            || key == "content"
                && (self.inputs && is_message_event(event, true)
                    || self.outputs && is_message_event(event, false))
    }
}

/// The running stage. A copy has its own cache of decisions.
#[derive(Clone, Debug)]
pub struct Redactor {
    rules: Vec<Rule>,
    salt: Option<Vec<u8>>,
    /// Attribute key → the index of the rule that acts on it: keys repeat from span to span,
    /// and `inputs`/`outputs` stand for dozens of patterns.
    decided: RefCell<FxHashMap<Box<str>, Option<usize>>>,
}

/// Most keys remembered in [`Redactor::decided`] before it starts over.
const MAX_DECIDED: usize = 4096;

impl Redactor {
    /// Builds the stage.
    pub fn new(config: RedactConfig) -> Self {
        Self {
            rules: config.rules.into_iter().map(Rule::new).collect(),
            salt: config
                .salt
                .filter(|s| !s.is_empty())
                .map(String::into_bytes),
            decided: RefCell::default(),
        }
    }

    /// Redacts `trace` in place; returns how many values were changed or removed.
    pub fn apply(&self, trace: &mut AssembledTrace) -> usize {
        let mut changed = self.mlflow_spans(trace);
        changed += self.otlp_spans(trace);
        let info = &mut trace.trace.info;
        for map in [&mut info.tags, &mut info.trace_metadata] {
            changed += self.map(map, |key| self.rule(key), String::clone, |v, t| *v = t);
        }
        if changed > 0 {
            trace.trace.refresh_previews();
        }
        changed
    }

    fn rule(&self, key: &str) -> Option<&Rule> {
        let mut decided = self.decided.borrow_mut();
        let index = match decided.get(key) {
            Some(index) => *index,
            None => {
                let index = self.rules.iter().position(|r| r.matches(key));
                if decided.len() >= MAX_DECIDED {
                    decided.clear();
                }
                decided.insert(key.into(), index);
                index
            }
        };
        index.map(|i| &self.rules[i])
    }

    /// What `rule` makes of a value; its text is read only when the action needs it, and a
    /// replacement is text, not yet stored.
    fn act(&self, rule: &Rule, text: impl FnOnce() -> String) -> Rewrite {
        match rule.action {
            Action::Drop => Rewrite::Drop,
            Action::Hash => Rewrite::Replace(self.hash(&text())),
            Action::Truncate => {
                let text = text();
                if text.chars().count() > rule.max_chars {
                    Rewrite::Replace(truncate(&text, rule.max_chars))
                } else {
                    Rewrite::Keep
                }
            }
        }
    }

    fn hash(&self, text: &str) -> String {
        let digest: [u8; 32] = match &self.salt {
            Some(salt) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(salt).expect("HMAC takes any key");
                mac.update(text.as_bytes());
                mac.finalize().into_bytes().into()
            }
            None => Sha256::digest(text.as_bytes()).into(),
        };
        format!("sha256:{}", hex::encode(&digest[..16]))
    }

    /// Acts on one value read as text by `text` and written back by `store`; returns whether
    /// it stays, counting a change in `changed`.
    fn value<V>(
        &self,
        rule: &Rule,
        value: &mut V,
        text: impl Fn(&V) -> String,
        store: impl Fn(&mut V, String),
        changed: &mut usize,
    ) -> bool {
        match self.act(rule, || text(value)) {
            Rewrite::Keep => return true,
            Rewrite::Drop => return false,
            Rewrite::Replace(new) => store(value, new),
        }
        *changed += 1;
        true
    }

    /// Applies the rules to a map of string keys.
    fn map<'r, K: AsRef<str>, V>(
        &'r self,
        map: &mut indexmap::IndexMap<K, V, impl std::hash::BuildHasher>,
        rule: impl Fn(&str) -> Option<&'r Rule>,
        text: impl Fn(&V) -> String,
        store: impl Fn(&mut V, String),
    ) -> usize {
        let mut changed = 0;
        let before = map.len();
        map.retain(|key, value| {
            rule(key.as_ref()).is_none_or(|r| self.value(r, value, &text, &store, &mut changed))
        });
        changed + before - map.len()
    }

    fn mlflow_spans(&self, trace: &mut AssembledTrace) -> usize {
        let mut changed = 0;
        for span in &mut trace.trace.data.spans {
            changed += span.attributes.rewrite(|key, stored| {
                let Some(rule) = self.rule(key) else {
                    return Rewrite::Keep;
                };
                match self.act(rule, || stored_text(stored)) {
                    Rewrite::Replace(text) => Rewrite::Replace(attributes::encode_str(&text)),
                    keep_or_drop => keep_or_drop,
                }
            });
            for event in &mut span.events {
                let name = &event.name;
                changed += self.map(
                    &mut event.attributes,
                    |key| self.event_rule(name, key),
                    json_text,
                    |v, t| *v = serde_json::Value::String(t),
                );
            }
        }
        changed
    }

    fn event_rule(&self, event: &str, key: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches_event(event, key))
    }

    fn otlp_spans(&self, trace: &mut AssembledTrace) -> usize {
        let mut changed = 0;
        for span in trace.groups_mut().iter_mut().flat_map(|g| &mut g.spans) {
            changed += self.key_values(&mut span.attributes, |key| self.rule(key));
            for event in &mut span.events {
                let name = otlp::text(&event.name).into_owned();
                changed +=
                    self.key_values(&mut event.attributes, |key| self.event_rule(&name, key));
            }
        }
        changed
    }

    fn key_values<'r>(
        &'r self,
        kvs: &mut Vec<KeyValue>,
        rule: impl Fn(&str) -> Option<&'r Rule>,
    ) -> usize {
        let mut changed = 0;
        let before = kvs.len();
        kvs.retain_mut(|kv| {
            rule(&otlp::text(&kv.key)).is_none_or(|r| {
                self.value(
                    r,
                    kv,
                    |kv| json_text(&attributes::decode(ValueRef::of(kv.value.as_ref())).to_json()),
                    |kv, t| {
                        kv.value = Some(AnyValue {
                            value: Some(Value::StringValue(t.into())),
                        })
                    },
                    &mut changed,
                )
            })
        });
        changed + before - kvs.len()
    }
}

/// A stored attribute's text: a string as itself, anything else as its JSON.
fn stored_text(stored: &str) -> String {
    attributes::read_str(stored).map_or_else(|| stored.to_string(), Cow::into_owned)
}

/// A raw value's text: a string as itself, anything else as its JSON.
fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests::{assembled, span};

    fn redactor(yaml: &str) -> Redactor {
        let config: RedactConfig = serde_saphyr::from_str(yaml).unwrap();
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        Redactor::new(config)
    }

    fn attr<'a>(t: &'a AssembledTrace, span: usize, key: &str) -> Option<&'a str> {
        t.trace.data.spans[span].attributes.get(key)
    }

    fn otlp_attr(t: &AssembledTrace, key: &str) -> Option<String> {
        t.groups()[0].spans[0]
            .attributes
            .iter()
            .find(|kv| &kv.key[..] == key.as_bytes())
            .map(|kv| attributes::encode(ValueRef::of(kv.value.as_ref())))
    }

    fn chat_root() -> AssembledTrace {
        let messages =
            r#"{"messages":[{"role":"user","content":"my card is 4111 1111 1111 1111"}]}"#;
        assembled(vec![
            span("root", 0, None)
                .attr("mlflow.spanInputs", messages)
                .attr("mlflow.spanOutputs", "\"fine\"")
                .attr("user.email", "ada@example.com")
                .int("retries", 2),
        ])
    }

    #[test]
    fn drop_removes_inputs_everywhere_and_clears_the_preview() {
        let mut t = chat_root();
        assert!(
            t.trace
                .info
                .request_preview
                .as_deref()
                .unwrap()
                .contains("4111")
        );
        let n = redactor("rules: [{keys: [inputs], action: drop}]").apply(&mut t);
        assert_eq!(
            n, 3,
            "the MLflow attribute, the OTLP one, mlflow.traceInputs"
        );
        assert_eq!(attr(&t, 0, INPUTS), None);
        assert_eq!(otlp_attr(&t, INPUTS), None);
        assert_eq!(t.trace.info.request_preview, None);
        assert!(attr(&t, 0, OUTPUTS).is_some(), "outputs were not named");
    }

    #[test]
    fn hash_is_stable_keyed_and_the_same_in_both_views() {
        let mut a = chat_root();
        let mut b = chat_root();
        redactor("salt: s1\nrules: [{keys: [\"user.*\"], action: hash}]").apply(&mut a);
        redactor("salt: s2\nrules: [{keys: [\"user.*\"], action: hash}]").apply(&mut b);
        let hashed = attr(&a, 0, "user.email").unwrap().to_string();
        assert!(
            hashed.starts_with("\"sha256:") && hashed.len() == 2 + 7 + 32,
            "{hashed}"
        );
        assert_eq!(otlp_attr(&a, "user.email").as_ref(), Some(&hashed));
        assert_ne!(
            attr(&b, 0, "user.email"),
            Some(hashed.as_str()),
            "another salt"
        );
        let mut again = chat_root();
        redactor("salt: s1\nrules: [{keys: [\"user.*\"], action: hash}]").apply(&mut again);
        assert_eq!(attr(&again, 0, "user.email"), Some(hashed.as_str()));
    }

    #[test]
    fn truncate_cuts_long_text_and_leaves_short_values_and_numbers() {
        let mut t = chat_root();
        let n = redactor(
            "rules: [{keys: [inputs, outputs, retries], action: truncate, max_chars: 20}]",
        )
        .apply(&mut t);
        assert_eq!(
            n, 3,
            "long inputs in both views and the trace metadata; short output and number untouched"
        );
        let cut = attributes::read(attr(&t, 0, INPUTS).unwrap());
        assert_eq!(
            cut,
            crate::mlflow::json::PyValue::Str(r#"{"messages":[{"ro..."#.into())
        );
        assert_eq!(attr(&t, 0, "retries"), Some("2"));
        // The preview is recomputed from the stored (now plain string) inputs.
        assert_eq!(
            t.trace.info.request_preview.as_deref(),
            attr(&t, 0, INPUTS),
            "recomputed"
        );
    }

    #[test]
    fn genai_message_events_and_convention_keys_count_as_inputs() {
        let mut t = assembled(vec![
            span("chat", 0, None)
                .attr("gen_ai.prompt.0.content", "secret prompt")
                .attr("llm.input_messages.0.message.content", "secret too")
                .event("gen_ai.user.message", "content", "secret event")
                .event("gen_ai.choice", "content", "answer"),
        ]);
        redactor("rules: [{keys: [inputs], action: drop}]").apply(&mut t);
        let json = serde_json::to_string(&t.trace).unwrap();
        assert!(!json.contains("secret"), "{json}");
        assert!(json.contains("answer"), "outputs stay");
        let otlp = format!("{:?}", t.groups());
        assert!(!otlp.contains("secret"));
    }

    #[test]
    fn unicode_keys_tags_and_missing_keys() {
        let mut t = assembled(vec![span("a", 0, None).attr("använder.namn", "Åsa")]);
        t.trace.info.tags.insert("kund".into(), "Åsa".into());
        t.trace
            .info
            .tags
            .insert("traceloom.partial".into(), "true".into());
        let n = redactor("rules: [{keys: [\"använder.*\", kund, \"traceloom.*\"], action: drop}]")
            .apply(&mut t);
        assert_eq!(n, 3);
        assert!(!t.trace.info.tags.contains_key("kund"));
        assert!(
            t.trace.info.tags.contains_key("traceloom.partial"),
            "own keys stay"
        );
        let mut empty = assembled(vec![]);
        assert_eq!(
            redactor("rules: [{keys: [x], action: hash}]").apply(&mut empty),
            0
        );
    }

    #[test]
    fn broken_rules_are_named() {
        let c: RedactConfig =
            serde_saphyr::from_str("rules: [{keys: [a], action: truncate}]").unwrap();
        assert!(c.problems()[0].contains("`truncate` needs `max_chars`"));
        let c: RedactConfig =
            serde_saphyr::from_str("rules: [{keys: [a], action: drop, max_chars: 9}]").unwrap();
        assert!(c.problems()[0].contains("only `truncate` takes it"));
    }
}
