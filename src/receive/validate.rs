//! Per-span validation and the split of a request by trace id.
//!
//! OTLP lets a server refuse individual spans and accept the rest through `partial_success`
//! (the OTLP specification, "Partial Success"). Peers refuse whole requests instead; traceloom
//! refuses only the spans that break the rules below, and reports how many and why.
//!
//! Rules: trace id 16 bytes and not all zero; span id 8 bytes and not all zero; parent span id
//! empty or 8 bytes; `end_time_unix_nano >= start_time_unix_nano`.

use std::collections::{HashMap, HashSet};
use std::fmt;

use std::sync::Arc;

use crate::otlp::{RawSpans, ResourceSpans, Span};

use crate::model::{Origin, SpanGroup, TraceId, TraceSpans};

/// How many rejection reasons the `partial_success.error_message` lists before summarising.
const MAX_LISTED_REJECTIONS: usize = 3;

/// Where a span sits in its request: `resource_spans[r].scope_spans[s].spans[i]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanPath {
    /// Index in `resource_spans`.
    pub resource: usize,
    /// Index in `scope_spans`.
    pub scope: usize,
    /// Index in `spans`.
    pub span: usize,
}

impl fmt::Display for SpanPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resource_spans[{}].scope_spans[{}].spans[{}]",
            self.resource, self.scope, self.span
        )
    }
}

/// Why one span was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    /// The trace id does not have 16 bytes.
    #[error("trace_id has {0} bytes, must have 16")]
    TraceIdLength(usize),
    /// The trace id is all zero, which W3C and OTLP define as invalid.
    #[error("trace_id is all zero")]
    TraceIdZero,
    /// The span id does not have 8 bytes.
    #[error("span_id has {0} bytes, must have 8")]
    SpanIdLength(usize),
    /// The span id is all zero.
    #[error("span_id is all zero")]
    SpanIdZero,
    /// The parent span id is neither empty nor 8 bytes.
    #[error("parent_span_id has {0} bytes, must be empty or have 8")]
    ParentSpanIdLength(usize),
    /// The span ends before it starts.
    #[error("end_time_unix_nano {end} is before start_time_unix_nano {start}")]
    EndBeforeStart {
        /// `start_time_unix_nano`.
        start: u64,
        /// `end_time_unix_nano`.
        end: u64,
    },
    /// An OTLP/JSON id that is not hexadecimal.
    #[error("{field} is not hexadecimal: {value:?}")]
    NotHex {
        /// The JSON field (`traceId`, `spanId`, `parentSpanId`).
        field: &'static str,
        /// The text received, cut to a readable length.
        value: String,
    },
}

/// One refused span and where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Where the span was in the request.
    pub path: SpanPath,
    /// Why it was refused.
    pub error: SpanError,
}

/// The outcome of validating a request: valid spans grouped by trace, and the refused ones.
#[derive(Debug, Default)]
pub struct Split {
    /// Valid spans, one group per trace id in order of first appearance.
    pub traces: Vec<TraceSpans>,
    /// Number of valid spans.
    pub accepted: usize,
    /// Refused spans, in request order.
    pub rejections: Vec<Rejection>,
}

impl Split {
    /// The `partial_success.error_message`: the first few reasons and a count of the rest.
    pub fn error_message(&self) -> Option<String> {
        if self.rejections.is_empty() {
            return None;
        }
        let mut msg = format!("{} spans rejected: ", self.rejections.len());
        let listed: Vec<String> = self
            .rejections
            .iter()
            .take(MAX_LISTED_REJECTIONS)
            .map(|r| format!("{}: {}", r.path, r.error))
            .collect();
        msg.push_str(&listed.join("; "));
        let rest = self.rejections.len().saturating_sub(MAX_LISTED_REJECTIONS);
        if rest > 0 {
            msg.push_str(&format!("; and {rest} more"));
        }
        Some(msg)
    }
}

/// Checks one span against the OTLP id and time rules.
pub fn check_span(span: &Span) -> Result<TraceId, SpanError> {
    let trace_id =
        TraceId::from_slice(&span.trace_id).ok_or(SpanError::TraceIdLength(span.trace_id.len()))?;
    if trace_id.0 == [0; 16] {
        return Err(SpanError::TraceIdZero);
    }
    if span.span_id.len() != 8 {
        return Err(SpanError::SpanIdLength(span.span_id.len()));
    }
    if span.span_id.iter().all(|&b| b == 0) {
        return Err(SpanError::SpanIdZero);
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err(SpanError::ParentSpanIdLength(span.parent_span_id.len()));
    }
    if span.end_time_unix_nano < span.start_time_unix_nano {
        return Err(SpanError::EndBeforeStart {
            start: span.start_time_unix_nano,
            end: span.end_time_unix_nano,
        });
    }
    Ok(trace_id)
}

/// Validates every span of a request and groups the valid ones by trace id.
///
/// `prior` holds spans already refused while decoding (OTLP/JSON ids that are not hex); their
/// slots in the request are skipped and they are reported with the others. Resources and scopes are cloned once per trace that uses them,
/// so each group is self-contained.
///
/// `raw` holds each span's encoding as it arrived ([`crate::otlp::raw_spans`] of the request), for
/// the log to copy; without it the log encodes the decoded spans.
pub fn split_by_trace(
    resource_spans: Vec<ResourceSpans>,
    prior: Vec<Rejection>,
    raw: Option<RawSpans>,
) -> Split {
    let refused: HashSet<SpanPath> = prior.iter().map(|r| r.path).collect();
    let mut out = Split {
        rejections: prior,
        ..Split::default()
    };
    let mut index: HashMap<TraceId, usize> = HashMap::new();
    // For each group, the (resource, scope) indexes its last entry came from.
    let mut origins: Vec<(usize, usize)> = Vec::new();
    for (r, mut rs) in resource_spans.into_iter().enumerate() {
        let scopes = std::mem::take(&mut rs.scope_spans);
        for (s, mut ss) in scopes.into_iter().enumerate() {
            let spans = std::mem::take(&mut ss.spans);
            let raw = raw
                .as_ref()
                .and_then(|raw| raw.get(r)?.get(s))
                .filter(|raw| raw.len() == spans.len());
            let origin = Arc::new(Origin {
                resource: rs.resource.clone(),
                resource_schema_url: rs.schema_url.clone(),
                scope: ss.scope.take(),
                scope_schema_url: std::mem::take(&mut ss.schema_url),
            });
            for (i, span) in spans.into_iter().enumerate() {
                let path = SpanPath {
                    resource: r,
                    scope: s,
                    span: i,
                };
                if !refused.is_empty() && refused.contains(&path) {
                    continue;
                }
                let trace_id = match check_span(&span) {
                    Ok(id) => id,
                    Err(error) => {
                        out.rejections.push(Rejection { path, error });
                        continue;
                    }
                };
                let slot = *index.entry(trace_id).or_insert_with(|| {
                    out.traces.push(TraceSpans {
                        trace_id,
                        groups: Vec::new(),
                    });
                    origins.push((usize::MAX, usize::MAX));
                    out.traces.len() - 1
                });
                let groups = &mut out.traces[slot].groups;
                if origins[slot] != (r, s) {
                    groups.push(SpanGroup {
                        origin: Arc::clone(&origin),
                        spans: Vec::new(),
                        raw: Vec::new(),
                    });
                    origins[slot] = (r, s);
                }
                let group = groups.last_mut().expect("pushed above");
                group.spans.push(span);
                if let Some(raw) = raw {
                    group.raw.push(raw[i].clone());
                }
                out.accepted += 1;
            }
        }
    }
    out.rejections
        .sort_by_key(|r| (r.path.resource, r.path.scope, r.path.span));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    fn span(trace: u8, span: u8, parent: &[u8]) -> Span {
        testkit::span([trace; 16], [span; 8], parent, "op")
    }

    fn request(resources: Vec<Vec<Span>>) -> Vec<ResourceSpans> {
        resources
            .into_iter()
            .enumerate()
            .map(|(i, spans)| testkit::resource_spans(&format!("svc-{i}"), spans))
            .collect()
    }

    #[test]
    fn groups_by_trace_in_order_of_first_appearance() {
        let req = request(vec![vec![
            span(2, 1, &[]),
            span(1, 2, &[]),
            span(2, 3, &[1; 8]),
        ]]);
        let split = split_by_trace(req, vec![], None);
        assert_eq!(split.accepted, 3);
        let ids: Vec<_> = split.traces.iter().map(|t| t.trace_id).collect();
        assert_eq!(ids, vec![TraceId([2; 16]), TraceId([1; 16])]);
        assert_eq!(split.traces[0].span_count(), 2);
        // Both spans of trace 2 share one origin, which trace 1 shares too.
        assert_eq!(split.traces[0].groups.len(), 1);
        assert!(Arc::ptr_eq(
            &split.traces[0].groups[0].origin,
            &split.traces[1].groups[0].origin
        ));
    }

    #[test]
    fn each_group_keeps_its_own_resources() {
        let req = request(vec![
            vec![span(1, 1, &[])],
            vec![span(1, 2, &[1; 8]), span(3, 3, &[])],
        ]);
        let split = split_by_trace(req, vec![], None);
        let t1 = split.traces[0].to_resource_spans();
        let names: Vec<_> = t1
            .iter()
            .map(|rs| testkit::service_name(rs).unwrap())
            .collect();
        assert_eq!(names, vec!["svc-0", "svc-1"]);
        assert_eq!(split.traces[1].groups.len(), 1);
    }

    #[test]
    fn refuses_bad_spans_individually_with_reasons() {
        let mut end_before_start = span(1, 5, &[]);
        end_before_start.start_time_unix_nano = 10;
        end_before_start.end_time_unix_nano = 9;
        let req = request(vec![vec![
            span(1, 1, &[]),
            testkit::span([0; 16], [1; 8], &[], "zero trace"),
            testkit::span([1; 16], [0; 8], &[], "zero span"),
            span(1, 2, &[1, 2, 3]),
            end_before_start,
            Span {
                trace_id: vec![1; 15].into(),
                ..span(1, 6, &[])
            },
            Span {
                span_id: vec![1; 9].into(),
                ..span(1, 7, &[])
            },
        ]]);
        let split = split_by_trace(req, vec![], None);
        assert_eq!(split.accepted, 1);
        let errors: Vec<_> = split.rejections.iter().map(|r| r.error.clone()).collect();
        assert_eq!(
            errors,
            vec![
                SpanError::TraceIdZero,
                SpanError::SpanIdZero,
                SpanError::ParentSpanIdLength(3),
                SpanError::EndBeforeStart { start: 10, end: 9 },
                SpanError::TraceIdLength(15),
                SpanError::SpanIdLength(9),
            ]
        );
        let msg = split.error_message().unwrap();
        assert!(
            msg.starts_with(
                "6 spans rejected: resource_spans[0].scope_spans[0].spans[1]: trace_id is all zero; "
            ),
            "{msg}"
        );
        assert!(msg.ends_with("; and 3 more"), "{msg}");
    }

    #[test]
    fn no_message_when_everything_is_valid() {
        let split = split_by_trace(request(vec![vec![span(1, 1, &[])]]), vec![], None);
        assert!(split.error_message().is_none());
        assert!(split.rejections.is_empty());
    }
}
