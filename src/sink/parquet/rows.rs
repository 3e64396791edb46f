//! Assembled traces as Arrow record batches: one row per revision in `traces`, one row per span
//! in `spans`. Columns are appended trace by trace; [`Rows::finish`] hands out both batches.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Int32Builder, Int64Builder, ListBuilder, MapBuilder,
    StringBuilder, StructBuilder, TimestampMillisecondBuilder, TimestampNanosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field};

use super::schema::{SPANS, TRACES, event_fields, link_fields, map_names};
use crate::mlflow::conventions::{INPUTS, OUTPUTS, SPAN_TYPE, TOKEN_USAGE};
use crate::mlflow::span::{Span, StatusCode};
use crate::mlflow::{attributes, usage};
use crate::model::{AssembledTrace, SpanId};

type StringMap = MapBuilder<StringBuilder, StringBuilder>;

fn string_map() -> StringMap {
    MapBuilder::new(
        Some(map_names()),
        StringBuilder::new(),
        StringBuilder::new(),
    )
}

fn append_map<'a>(b: &mut StringMap, entries: impl IntoIterator<Item = (&'a str, &'a str)>) {
    for (k, v) in entries {
        b.keys().append_value(k);
        b.values().append_value(v);
    }
    b.append(true)
        .expect("keys and values are appended in pairs");
}

/// JSON text of each value: what MLflow stores for span attributes, used for event and link
/// attributes too so that every map of the dataset reads the same way.
fn append_json_map(b: &mut StringMap, entries: &indexmap::IndexMap<String, serde_json::Value>) {
    for (k, v) in entries {
        b.keys().append_value(k);
        b.values().append_value(v.to_string());
    }
    b.append(true)
        .expect("keys and values are appended in pairs");
}

/// Input, output and total token counts of a stored usage dict.
fn tokens(stored: Option<&str>) -> [Option<i64>; 3] {
    stored
        .and_then(usage::read)
        .map_or([None; 3], |u| [u.input, u.output, u.total])
}

#[derive(Default)]
struct TokenColumns([Int64Builder; 3]);

impl TokenColumns {
    fn append(&mut self, tokens: [Option<i64>; 3]) {
        for (b, v) in self.0.iter_mut().zip(tokens) {
            b.append_option(v);
        }
    }

    fn finish(&mut self) -> [ArrayRef; 3] {
        self.0.each_mut().map(|b| Arc::new(b.finish()) as ArrayRef)
    }
}

/// A decoded attribute as plain text: JSON strings unwrapped, anything else dropped.
fn attribute_str<'a>(span: &'a Span, key: &str) -> Option<Cow<'a, str>> {
    attributes::read_str(span.attributes.get(key)?)
}

/// `OK`, `ERROR` or `UNSET`: MLflow's name without its prefix.
fn status_code(code: StatusCode) -> &'static str {
    code.as_str().trim_start_matches("STATUS_CODE_")
}

/// A span id as 16 lowercase hex digits, written into `buf`.
fn span_hex<'a>(id: &SpanId, buf: &'a mut [u8; 16]) -> &'a str {
    hex::encode_to_slice(id.0, buf).expect("16 hex digits for 8 bytes");
    std::str::from_utf8(buf).expect("hex is ASCII")
}

fn ts_ns(ns: u64) -> i64 {
    i64::try_from(ns).unwrap_or(i64::MAX)
}

/// Column builders of both tables.
pub struct Rows {
    traces: TraceColumns,
    spans: SpanColumns,
    /// Whether `trace_json` is filled.
    trace_json: bool,
}

struct TraceColumns {
    trace_id: StringBuilder,
    experiment_id: StringBuilder,
    request_time: TimestampMillisecondBuilder,
    execution_duration_ms: Int64Builder,
    state: StringBuilder,
    request_preview: StringBuilder,
    response_preview: StringBuilder,
    client_request_id: StringBuilder,
    tags: StringMap,
    trace_metadata: StringMap,
    span_count: Int32Builder,
    error_span_count: Int32Builder,
    root_span_name: StringBuilder,
    services: ListBuilder<StringBuilder>,
    session_id: StringBuilder,
    user_id: StringBuilder,
    tokens: TokenColumns,
    revision: Int32Builder,
    partial: BooleanBuilder,
    partial_reason: StringBuilder,
    trace_json: StringBuilder,
}

struct SpanColumns {
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    name: StringBuilder,
    span_type: StringBuilder,
    start_time: TimestampNanosecondBuilder,
    end_time: TimestampNanosecondBuilder,
    duration_ns: Int64Builder,
    status_code: StringBuilder,
    status_message: StringBuilder,
    inputs: StringBuilder,
    outputs: StringBuilder,
    attributes: StringMap,
    events: ListBuilder<StructBuilder>,
    links: ListBuilder<StructBuilder>,
    service_name: StringBuilder,
    model: StringBuilder,
    provider: StringBuilder,
    tokens: TokenColumns,
    revision: Int32Builder,
}

fn struct_list(
    fields: arrow_schema::Fields,
    second: Box<dyn ArrayBuilder>,
) -> ListBuilder<StructBuilder> {
    let item = Field::new("item", DataType::Struct(fields.clone()), false);
    let builders: Vec<Box<dyn ArrayBuilder>> = vec![
        Box::new(StringBuilder::new()),
        second,
        Box::new(string_map()),
    ];
    ListBuilder::new(StructBuilder::new(fields, builders)).with_field(item)
}

fn utc_ns() -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::new().with_timezone("UTC")
}

impl Rows {
    /// Empty builders; `trace_json` says whether to fill the `trace_json` column.
    pub fn new(trace_json: bool) -> Self {
        Self {
            traces: TraceColumns {
                trace_id: StringBuilder::new(),
                experiment_id: StringBuilder::new(),
                request_time: TimestampMillisecondBuilder::new().with_timezone("UTC"),
                execution_duration_ms: Int64Builder::new(),
                state: StringBuilder::new(),
                request_preview: StringBuilder::new(),
                response_preview: StringBuilder::new(),
                client_request_id: StringBuilder::new(),
                tags: string_map(),
                trace_metadata: string_map(),
                span_count: Int32Builder::new(),
                error_span_count: Int32Builder::new(),
                root_span_name: StringBuilder::new(),
                services: ListBuilder::new(StringBuilder::new()).with_field(Field::new(
                    "item",
                    DataType::Utf8,
                    false,
                )),
                session_id: StringBuilder::new(),
                user_id: StringBuilder::new(),
                tokens: TokenColumns::default(),
                revision: Int32Builder::new(),
                partial: BooleanBuilder::new(),
                partial_reason: StringBuilder::new(),
                trace_json: StringBuilder::new(),
            },
            spans: SpanColumns {
                trace_id: StringBuilder::new(),
                span_id: StringBuilder::new(),
                parent_span_id: StringBuilder::new(),
                name: StringBuilder::new(),
                span_type: StringBuilder::new(),
                start_time: utc_ns(),
                end_time: utc_ns(),
                duration_ns: Int64Builder::new(),
                status_code: StringBuilder::new(),
                status_message: StringBuilder::new(),
                inputs: StringBuilder::new(),
                outputs: StringBuilder::new(),
                attributes: string_map(),
                events: struct_list(event_fields(), Box::new(utc_ns())),
                links: struct_list(link_fields(), Box::new(StringBuilder::new())),
                service_name: StringBuilder::new(),
                model: StringBuilder::new(),
                provider: StringBuilder::new(),
                tokens: TokenColumns::default(),
                revision: Int32Builder::new(),
            },
            trace_json,
        }
    }

    /// Appends one trace revision and its spans.
    pub fn push(&mut self, assembled: &AssembledTrace) {
        let services = &assembled.services;
        let trace = &assembled.trace;
        let info = &trace.info;
        let revision = i32::try_from(assembled.release.revision).unwrap_or(i32::MAX);
        let mut names: Vec<&str> = Vec::new();
        for span in &trace.data.spans {
            let service = services.of_span(&span.span_id);
            if let Some(s) = service
                && !names.contains(&s)
            {
                names.push(s);
            }
            self.spans.push(&info.trace_id, span, service, revision);
        }
        let t = &mut self.traces;
        t.trace_id.append_value(&info.trace_id);
        t.experiment_id
            .append_value(&info.trace_location.mlflow_experiment.experiment_id);
        t.request_time
            .append_value(i64::try_from(info.request_time_ms).unwrap_or(i64::MAX));
        t.execution_duration_ms
            .append_value(info.execution_duration_ms);
        t.state.append_value(info.state.as_str());
        t.request_preview
            .append_option(info.request_preview.as_deref());
        t.response_preview
            .append_option(info.response_preview.as_deref());
        t.client_request_id
            .append_option(info.client_request_id.as_deref());
        append_map(&mut t.tags, info.tags.iter().map(|(k, v)| (&k[..], &v[..])));
        append_map(
            &mut t.trace_metadata,
            info.trace_metadata.iter().map(|(k, v)| (&k[..], &v[..])),
        );
        let spans = &trace.data.spans;
        t.span_count
            .append_value(i32::try_from(spans.len()).unwrap_or(i32::MAX));
        let errors = spans
            .iter()
            .filter(|s| s.status.code == StatusCode::Error)
            .count();
        t.error_span_count
            .append_value(i32::try_from(errors).unwrap_or(i32::MAX));
        t.root_span_name.append_option(
            spans
                .iter()
                .find(|s| s.parent_span_id.is_none())
                .map(|s| &s.name[..]),
        );
        for name in names {
            t.services.values().append_value(name);
        }
        t.services.append(true);
        let metadata = |key: &str| info.trace_metadata.get(key).map(String::as_str);
        t.session_id.append_option(metadata("mlflow.trace.session"));
        t.user_id.append_option(metadata("mlflow.trace.user"));
        t.tokens.append(tokens(metadata("mlflow.trace.tokenUsage")));
        t.revision.append_value(revision);
        let release = &assembled.release;
        t.partial.append_value(release.partial());
        t.partial_reason
            .append_option(release.partial().then(|| release.reason.as_str()));
        t.trace_json.append_option(
            self.trace_json
                .then(|| crate::mlflow::trace_json::to_string(trace)),
        );
    }

    /// The `traces` and `spans` batches of everything appended; the builders start over.
    pub fn finish(&mut self) -> (RecordBatch, RecordBatch) {
        let t = &mut self.traces;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(t.trace_id.finish()),
            Arc::new(t.experiment_id.finish()),
            Arc::new(t.request_time.finish()),
            Arc::new(t.execution_duration_ms.finish()),
            Arc::new(t.state.finish()),
            Arc::new(t.request_preview.finish()),
            Arc::new(t.response_preview.finish()),
            Arc::new(t.client_request_id.finish()),
            Arc::new(t.tags.finish()),
            Arc::new(t.trace_metadata.finish()),
            Arc::new(t.span_count.finish()),
            Arc::new(t.error_span_count.finish()),
            Arc::new(t.root_span_name.finish()),
            Arc::new(t.services.finish()),
            Arc::new(t.session_id.finish()),
            Arc::new(t.user_id.finish()),
        ];
        columns.extend(t.tokens.finish());
        columns.extend([
            Arc::new(t.revision.finish()) as ArrayRef,
            Arc::new(t.partial.finish()),
            Arc::new(t.partial_reason.finish()),
            Arc::new(t.trace_json.finish()),
        ]);
        let traces = RecordBatch::try_new(Arc::clone(&TRACES), columns)
            .expect("trace columns match the traces schema");
        (traces, self.spans.finish())
    }
}

impl SpanColumns {
    fn push(&mut self, trace_id: &str, span: &Span, service: Option<&str>, revision: i32) {
        self.trace_id.append_value(trace_id);
        let mut hex = [0u8; 16];
        self.span_id.append_value(span_hex(&span.span_id, &mut hex));
        self.parent_span_id
            .append_option(span.parent_span_id.as_ref().map(|p| span_hex(p, &mut hex)));
        self.name.append_value(&span.name);
        self.span_type.append_option(attribute_str(span, SPAN_TYPE));
        let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
        self.start_time.append_value(ts_ns(start));
        self.end_time.append_value(ts_ns(end));
        self.duration_ns
            .append_value(ts_ns(end.saturating_sub(start)));
        self.status_code.append_value(status_code(span.status.code));
        self.status_message.append_value(&span.status.message);
        self.inputs.append_option(span.attributes.get(INPUTS));
        self.outputs.append_option(span.attributes.get(OUTPUTS));
        append_map(
            &mut self.attributes,
            span.attributes
                .iter()
                .filter(|(k, _)| *k != INPUTS && *k != OUTPUTS),
        );
        self.push_events(span);
        self.push_links(span);
        self.service_name.append_option(service);
        self.model
            .append_option(attribute_str(span, "mlflow.llm.model"));
        self.provider
            .append_option(attribute_str(span, "mlflow.llm.provider"));
        let usage = span.attributes.get(TOKEN_USAGE);
        self.tokens.append(tokens(usage));
        self.revision.append_value(revision);
    }

    fn push_events(&mut self, span: &Span) {
        let list = &mut self.events;
        for event in &span.events {
            let item = list.values();
            field::<StringBuilder>(item, 0).append_value(&event.name);
            field::<TimestampNanosecondBuilder>(item, 1).append_value(ts_ns(event.time_unix_nano));
            append_json_map(field::<StringMap>(item, 2), &event.attributes);
            item.append(true);
        }
        list.append(true);
    }

    fn push_links(&mut self, span: &Span) {
        let list = &mut self.links;
        let empty = indexmap::IndexMap::new();
        for link in &span.links {
            let item = list.values();
            field::<StringBuilder>(item, 0).append_value(&link.trace_id);
            field::<StringBuilder>(item, 1).append_value(&link.span_id);
            append_json_map(
                field::<StringMap>(item, 2),
                link.attributes.as_ref().unwrap_or(&empty),
            );
            item.append(true);
        }
        list.append(true);
    }

    fn finish(&mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.span_type.finish()),
            Arc::new(self.start_time.finish()),
            Arc::new(self.end_time.finish()),
            Arc::new(self.duration_ns.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
            Arc::new(self.inputs.finish()),
            Arc::new(self.outputs.finish()),
            Arc::new(self.attributes.finish()),
            Arc::new(self.events.finish()),
            Arc::new(self.links.finish()),
            Arc::new(self.service_name.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.provider.finish()),
        ];
        columns.extend(self.tokens.finish());
        columns.push(Arc::new(self.revision.finish()));
        RecordBatch::try_new(Arc::clone(&SPANS), columns)
            .expect("span columns match the spans schema")
    }
}

fn field<T: ArrayBuilder>(s: &mut StructBuilder, i: usize) -> &mut T {
    s.field_builder::<T>(i)
        .expect("struct builders are made with these field types")
}
