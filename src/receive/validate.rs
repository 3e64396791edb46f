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

use crate::model::{ArrivedGroup, ArrivedSpan, Origin, SpanId, TraceId, TraceSpans};
use crate::otlp::wire::{ResourceBlock, ScopeBlock, WireSpan};

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
pub fn check_span(span: WireSpan) -> Result<(TraceId, ArrivedSpan), SpanError> {
    let head = span.head;
    let trace_id = head
        .trace_id
        .get()
        .map(TraceId)
        .ok_or(SpanError::TraceIdLength(head.trace_id.len()))?;
    if trace_id.0 == [0; 16] {
        return Err(SpanError::TraceIdZero);
    }
    let span_id = head
        .span_id
        .get()
        .map(SpanId)
        .ok_or(SpanError::SpanIdLength(head.span_id.len()))?;
    if span_id.0 == [0; 8] {
        return Err(SpanError::SpanIdZero);
    }
    let parent = head.parent_span_id;
    if !parent.is_empty() && parent.get().is_none() {
        return Err(SpanError::ParentSpanIdLength(parent.len()));
    }
    if head.end_time_unix_nano < head.start_time_unix_nano {
        return Err(SpanError::EndBeforeStart {
            start: head.start_time_unix_nano,
            end: head.end_time_unix_nano,
        });
    }
    let arrived = ArrivedSpan {
        span_id,
        parent_span_id: parent.get().map(SpanId),
        encoded: span.encoded,
    };
    Ok((trace_id, arrived))
}

/// The origin of the spans of `scope`, a scope of `resource`.
pub fn origin(resource: &ResourceBlock, scope: &mut ScopeBlock) -> Arc<Origin> {
    Arc::new(Origin {
        resource: resource.resource.clone(),
        resource_schema_url: resource.schema_url.clone(),
        scope: scope.scope.take(),
        scope_schema_url: std::mem::take(&mut scope.schema_url),
    })
}

/// Validates every span of a request and groups the valid ones by trace id.
///
/// `prior` holds spans already refused while decoding (OTLP/JSON ids that are not hex); their
/// slots in the request are skipped and they are reported with the others. Each resource and
/// scope is shared (one `Arc`) by every trace that has spans under it.
pub fn split_by_trace(resources: Vec<ResourceBlock>, prior: Vec<Rejection>) -> Split {
    let refused: HashSet<SpanPath> = prior.iter().map(|r| r.path).collect();
    let mut out = Split {
        rejections: prior,
        ..Split::default()
    };
    let mut index: HashMap<TraceId, usize> = HashMap::new();
    // For each group, the (resource, scope) indexes its last entry came from.
    let mut origins: Vec<(usize, usize)> = Vec::new();
    for (r, mut rb) in resources.into_iter().enumerate() {
        for (s, mut sb) in std::mem::take(&mut rb.scopes).into_iter().enumerate() {
            let origin = origin(&rb, &mut sb);
            for (i, span) in sb.spans.into_iter().enumerate() {
                let path = SpanPath {
                    resource: r,
                    scope: s,
                    span: i,
                };
                if !refused.is_empty() && refused.contains(&path) {
                    continue;
                }
                let (trace_id, span) = match check_span(span) {
                    Ok(checked) => checked,
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
                    groups.push(ArrivedGroup {
                        origin: Arc::clone(&origin),
                        spans: Vec::new(),
                    });
                    origins[slot] = (r, s);
                }
                groups.last_mut().expect("pushed above").spans.push(span);
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
    use crate::otlp::wire::blocks_of;
    use crate::otlp::{ResourceSpans, Span};
    use crate::testkit;

    fn span(trace: u8, span: u8, parent: &[u8]) -> Span {
        testkit::span([trace; 16], [span; 8], parent, "op")
    }

    fn request(resources: Vec<Vec<Span>>) -> Vec<ResourceBlock> {
        let request: Vec<ResourceSpans> = resources
            .into_iter()
            .enumerate()
            .map(|(i, spans)| testkit::resource_spans(&format!("svc-{i}"), spans))
            .collect();
        blocks_of(&request).unwrap()
    }

    #[test]
    fn groups_by_trace_in_order_of_first_appearance() {
        let req = request(vec![vec![
            span(2, 1, &[]),
            span(1, 2, &[]),
            span(2, 3, &[1; 8]),
        ]]);
        let split = split_by_trace(req, vec![]);
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
        let split = split_by_trace(req, vec![]);
        let t1 = crate::model::resource_spans(&split.traces[0].decode());
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
        let split = split_by_trace(req, vec![]);
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
        let split = split_by_trace(request(vec![vec![span(1, 1, &[])]]), vec![]);
        assert!(split.error_message().is_none());
        assert!(split.rejections.is_empty());
    }
}
