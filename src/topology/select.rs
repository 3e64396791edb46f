//! `select`: which of its receivers' traces a pipeline takes, so one receiver can feed several
//! pipelines (one per experiment, team or tenant).
//!
//! ```yaml
//! select:                                  # any entry; every field of an entry must match
//!   - experiment: "12"                     # x-mlflow-experiment-id, else mlflow.experimentId
//!   - service: "checkout-*"                # resource service.name
//!     resource: {deployment.environment: prod}
//!   - attributes: {tenant: acme}           # any span's attribute
//!   - not: [{experiment: "12"}]            # every trace the entries listed do not select
//! ```
//!
//! Selection happens before the ingest log, per trace and request: the spans of one trace that
//! one request carried are taken or not as a whole, so each pipeline logs and assembles only its
//! own traces. A trace whose services export separately is selected request by request: select
//! on what every service's spans carry (the experiment id, which MLflow's distributed tracing
//! propagates, or a shared resource attribute), or take everything and use a `filter` stage,
//! which sees the assembled trace. Spans no pipeline selects are acknowledged and counted in
//! `traceloom_router_unrouted_spans_total`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::pattern::Pattern;
use crate::mlflow::attributes;
use crate::mlflow::trace::EXPERIMENT_RESOURCE_ATTRIBUTE;
use crate::model::{ArrivedGroup, ReceiveMeta, TraceSpans};
use crate::otlp::view::{SpanView, ValueRef};
use crate::stages::condition::value_matches;

/// A pipeline's selectors; a trace is taken when any matches.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct Select(pub Vec<Selector>);

/// One selector; every field given must match.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The MLflow experiment: the request's `x-mlflow-experiment-id` header, else the
    /// resource's `mlflow.experimentId`.
    pub experiment: Option<Pattern>,
    /// The resource's `service.name`.
    pub service: Option<Pattern>,
    /// Resource attributes, each present with a matching value.
    #[serde(default)]
    pub resource: BTreeMap<String, Pattern>,
    /// Span attributes, each present on one span with a matching value.
    #[serde(default)]
    pub attributes: BTreeMap<String, Pattern>,
    /// None of these selectors matches (e.g. every experiment but those other pipelines take).
    pub not: Option<Select>,
}

impl Select {
    /// Whether the pipeline takes `trace`, which came with `meta`.
    pub fn takes(&self, meta: &ReceiveMeta, trace: &TraceSpans) -> bool {
        self.0.iter().any(|s| {
            trace.groups.iter().any(|g| s.matches(meta, g))
                && s.not.as_ref().is_none_or(|n| !n.takes(meta, trace))
        })
    }

    /// Problems the types cannot express.
    pub fn problems(&self) -> Vec<String> {
        if self.0.is_empty() {
            vec!["an empty `select` takes nothing: remove it to take everything".into()]
        } else {
            Vec::new()
        }
    }
}

impl Selector {
    fn matches(&self, meta: &ReceiveMeta, group: &ArrivedGroup) -> bool {
        let origin = &group.origin;
        let resource = |key: &str, p: &Pattern| {
            origin.resource.as_ref().is_some_and(|r| {
                r.attributes.iter().any(|kv| {
                    kv.key == key.as_bytes()
                        && value_matches(p, &attributes::encode(ValueRef::of(kv.value.as_ref())))
                })
            })
        };
        self.experiment
            .as_ref()
            .is_none_or(|p| match &meta.experiment_id {
                Some(id) => p.matches(id),
                None => resource(EXPERIMENT_RESOURCE_ATTRIBUTE, p),
            })
            && self
                .service
                .as_ref()
                .is_none_or(|p| resource("service.name", p))
            && self.resource.iter().all(|(k, p)| resource(k, p))
            && self.attributes.iter().all(|(key, p)| {
                group.spans.iter().any(|span| {
                    SpanView::new(&span.encoded).attributes().any(|(k, value)| {
                        k == key.as_bytes() && value_matches(p, &attributes::encode(value))
                    })
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{kv, resource_spans, span};

    fn select(yaml: &str) -> Select {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn trace(service: &str, resource: &[(&str, &str)], attrs: &[(&str, &str)]) -> TraceSpans {
        let mut s = span([1; 16], [1; 8], &[], "root");
        s.attributes = attrs.iter().map(|(k, v)| kv(k, v)).collect();
        let mut rs = resource_spans(service, vec![s]);
        let r = rs.resource.as_mut().unwrap();
        r.attributes.extend(resource.iter().map(|(k, v)| kv(k, v)));
        let batch = crate::testkit::split(&[rs]);
        batch.traces.into_iter().next().unwrap()
    }

    fn meta(experiment: Option<&str>) -> ReceiveMeta {
        ReceiveMeta {
            receiver: "otlp".into(),
            protocol: crate::model::Protocol::Grpc,
            received_at: std::time::SystemTime::now(),
            experiment_id: experiment.map(Into::into),
        }
    }

    #[test]
    fn experiment_comes_from_the_header_else_the_resource() {
        let s = select("[{experiment: \"12\"}]");
        let plain = trace("svc", &[], &[]);
        assert!(s.takes(&meta(Some("12")), &plain));
        assert!(!s.takes(&meta(Some("13")), &plain));
        assert!(!s.takes(&meta(None), &plain), "no experiment anywhere");
        let tagged = trace("svc", &[("mlflow.experimentId", "12")], &[]);
        assert!(s.takes(&meta(None), &tagged));
        assert!(!s.takes(&meta(Some("7")), &tagged), "the header wins");
    }

    #[test]
    fn fields_are_and_entries_are_or() {
        let t = trace(
            "checkout-api",
            &[("deployment.environment", "prod")],
            &[("tenant", "acme")],
        );
        let m = meta(None);
        assert!(
            select("[{service: \"checkout-*\", resource: {deployment.environment: prod}}]")
                .takes(&m, &t)
        );
        assert!(
            !select("[{service: \"checkout-*\", resource: {deployment.environment: dev}}]")
                .takes(&m, &t)
        );
        assert!(select("[{service: other}, {attributes: {tenant: acme}}]").takes(&m, &t));
        assert!(!select("[{attributes: {tenant: \"*\", missing: \"*\"}}]").takes(&m, &t));
        assert!(
            select("[{attributes: {テナント: \"*\"}}]")
                .takes(&m, &trace("s", &[], &[("テナント", "東京")]))
        );
    }

    #[test]
    fn not_takes_what_its_entries_do_not() {
        let s = select("[{not: [{experiment: \"1\"}, {experiment: \"2\"}]}]");
        let t = trace("svc", &[], &[]);
        assert!(!s.takes(&meta(Some("1")), &t));
        assert!(!s.takes(&meta(Some("2")), &t));
        assert!(s.takes(&meta(Some("3")), &t));
        assert!(s.takes(&meta(None), &t));
    }

    #[test]
    fn an_empty_select_is_refused() {
        assert!(select("[]").problems()[0].contains("takes nothing"));
    }
}
