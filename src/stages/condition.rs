//! Conditions on spans, written as structured YAML.
//!
//! A condition is a map; every field given must hold (AND). A list of conditions holds when any
//! of them does (OR), and `not:` takes such a list. A trace matches a list when any of its spans
//! does, so `status: ERROR` selects traces with an error span and `min_duration: 10s` selects
//! traces with a span (normally the root) that long.
//!
//! ```yaml
//! - span_type: LLM                  # mlflow.spanType
//!   attributes: {gen_ai.request.model: "gpt-4*"}
//! - name: "health*"
//!   not: [{service: checkout}]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::pattern::Pattern;
use crate::config::units::HumanDuration;
use crate::mlflow::Trace;
use crate::mlflow::attributes;
use crate::mlflow::conventions::SPAN_TYPE;
use crate::mlflow::span::{Span, StatusCode};
use crate::model::Services;

/// A span status as written in conditions.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// `STATUS_CODE_OK`.
    Ok,
    /// `STATUS_CODE_ERROR`.
    Error,
    /// `STATUS_CODE_UNSET`.
    Unset,
}

impl Status {
    fn code(self) -> StatusCode {
        match self {
            Status::Ok => StatusCode::Ok,
            Status::Error => StatusCode::Error,
            Status::Unset => StatusCode::Unset,
        }
    }
}

/// One condition on a span; every field given must hold.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The span name.
    pub name: Option<Pattern>,
    /// The MLflow span type (`LLM`, `CHAT_MODEL`, `RETRIEVER`, `TOOL`, …).
    pub span_type: Option<Pattern>,
    /// The span status.
    pub status: Option<Status>,
    /// The `service.name` of the span's resource.
    pub service: Option<Pattern>,
    /// The trace's MLflow experiment id.
    pub experiment: Option<Pattern>,
    /// Span attributes: each key must be present with a value matching the pattern (`"*"`:
    /// present with any value). Strings are matched as text, other values as their JSON.
    #[serde(default)]
    pub attributes: BTreeMap<String, Pattern>,
    /// At least this long.
    pub min_duration: Option<HumanDuration>,
    /// At most this long.
    pub max_duration: Option<HumanDuration>,
    /// `true`: only the root span; `false`: only other spans.
    pub root: Option<bool>,
    /// None of these conditions holds.
    pub not: Option<Conditions>,
}

/// Conditions of which any one must hold.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct Conditions(pub Vec<Condition>);

/// What a condition is evaluated against: one span of a trace.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    /// The whole trace.
    pub trace: &'a Trace,
    /// The span.
    pub span: &'a Span,
    /// Services of the trace's spans.
    pub services: &'a Services,
}

impl Condition {
    /// Whether the condition holds for `s`.
    pub fn holds(&self, s: Subject<'_>) -> bool {
        let span = s.span;
        let duration = span
            .end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano);
        self.name.as_ref().is_none_or(|p| p.matches(&span.name))
            && self.status.is_none_or(|st| st.code() == span.status.code)
            && self.root.is_none_or(|r| r == span.parent_span_id.is_none())
            && self
                .min_duration
                .is_none_or(|d| u128::from(duration) >= d.0.as_nanos())
            && self
                .max_duration
                .is_none_or(|d| u128::from(duration) <= d.0.as_nanos())
            && self.span_type.as_ref().is_none_or(|p| {
                span.attributes
                    .get(SPAN_TYPE)
                    .is_some_and(|t| value_matches(p, t))
            })
            && self.experiment.as_ref().is_none_or(|p| {
                p.matches(&s.trace.info.trace_location.mlflow_experiment.experiment_id)
            })
            && self.service.as_ref().is_none_or(|p| {
                s.services
                    .of_span(&span.span_id)
                    .is_some_and(|n| p.matches(n))
            })
            && self.attributes.iter().all(|(key, p)| {
                span.attributes
                    .get(key.as_str())
                    .is_some_and(|v| value_matches(p, v))
            })
            && self.not.as_ref().is_none_or(|n| !n.any_holds(s))
    }
}

impl Conditions {
    /// Whether any condition holds for `s`; an empty list holds for nothing.
    pub fn any_holds(&self, s: Subject<'_>) -> bool {
        self.0.iter().any(|c| c.holds(s))
    }

    /// Whether any condition holds for any span of `trace`.
    pub fn any_span(&self, trace: &crate::model::AssembledTrace) -> bool {
        if self.0.is_empty() {
            return false;
        }
        trace.trace.data.spans.iter().any(|span| {
            self.any_holds(Subject {
                trace: &trace.trace,
                span,
                services: &trace.services,
            })
        })
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Matches a stored (JSON-encoded) attribute value: strings as their text, anything else as
/// its JSON.
pub(crate) fn value_matches(pattern: &Pattern, stored: &str) -> bool {
    match attributes::read_str(stored) {
        Some(text) => pattern.matches(&text),
        None => pattern.matches(stored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests::{assembled, span};

    fn conditions(yaml: &str) -> Conditions {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn matching(yaml: &str, trace: &crate::model::AssembledTrace) -> Vec<String> {
        let c = conditions(yaml);
        trace
            .trace
            .data
            .spans
            .iter()
            .filter(|span| {
                c.any_holds(Subject {
                    trace: &trace.trace,
                    span,
                    services: &trace.services,
                })
            })
            .map(|s| s.name.clone())
            .collect()
    }

    #[test]
    fn fields_are_and_list_items_are_or() {
        let t = assembled(vec![
            span("root", 0, None).llm("gpt-4o").ms(5000),
            span("retrieve", 1, Some(0)).kind("RETRIEVER").ms(30),
            span("llm-failed", 2, Some(0))
                .llm("gpt-4o-mini")
                .error()
                .ms(40),
        ]);
        assert_eq!(
            matching("[{span_type: LLM, status: ERROR}]", &t),
            ["llm-failed"]
        );
        assert_eq!(
            matching("[{span_type: RETRIEVER}, {status: ERROR}]", &t),
            ["retrieve", "llm-failed"]
        );
        assert_eq!(matching("[{min_duration: 1s}]", &t), ["root"]);
        assert_eq!(matching("[{max_duration: 35ms}]", &t), ["retrieve"]);
        assert_eq!(matching("[{root: true}]", &t), ["root"]);
        assert_eq!(
            matching("[{name: \"*\", not: [{root: true}, {status: ERROR}]}]", &t),
            ["retrieve"]
        );
    }

    #[test]
    fn attributes_match_text_of_strings_and_json_of_others() {
        let t = assembled(vec![
            span("a", 0, None)
                .attr("gen_ai.request.model", "gpt-4o")
                .int("retries", 3),
            span("b", 1, Some(0)).attr("user.tier", "gold"),
        ]);
        assert_eq!(
            matching("[{attributes: {gen_ai.request.model: \"gpt-4*\"}}]", &t),
            ["a"]
        );
        assert_eq!(matching("[{attributes: {retries: \"3\"}}]", &t), ["a"]);
        // Present with any value; a missing attribute never matches.
        assert_eq!(matching("[{attributes: {user.tier: \"*\"}}]", &t), ["b"]);
        assert!(matching("[{attributes: {nowhere: \"*\"}}]", &t).is_empty());
    }

    #[test]
    fn unicode_keys_and_values_match() {
        let t = assembled(vec![span("検索", 0, None).attr("ユーザー", "たなか")]);
        assert_eq!(
            matching("[{attributes: {ユーザー: \"たな*\"}}]", &t),
            ["検索"]
        );
        assert_eq!(matching("[{name: \"検*\"}]", &t), ["検索"]);
    }

    #[test]
    fn service_and_experiment_come_from_resource_and_trace() {
        let t = assembled(vec![span("a", 0, None)]);
        assert_eq!(matching("[{service: \"test-*\"}]", &t), ["a"]);
        assert!(matching("[{service: other}]", &t).is_empty());
        assert_eq!(matching("[{experiment: \"0\"}]", &t), ["a"]);
    }

    #[test]
    fn an_empty_list_holds_for_nothing_and_an_empty_trace_has_no_match() {
        let t = assembled(vec![]);
        assert!(!conditions("[{}]").any_span(&t));
        let t = assembled(vec![span("a", 0, None)]);
        assert!(!conditions("[]").any_span(&t));
        assert!(conditions("[{}]").any_span(&t));
    }
}
