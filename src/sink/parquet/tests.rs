//! Round trips through the Parquet encoding: what is read back equals what went in.

use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::file::{Codec, FileSettings, OpenFile, properties};
use super::rows::Rows;
use super::schema::{SCHEMA_VERSION, SCHEMA_VERSION_KEY, SPANS, TRACES};
use crate::assemble::ReleaseReason;
use crate::model::{AssembledTrace, TraceId};
use crate::otlp::{Event, KeyValue, Link};
use crate::testkit::{assembled, kv, kv_int, resource_spans, span};

const TRACE: [u8; 16] = [7; 16];

fn settings() -> FileSettings {
    FileSettings {
        traces: properties("traces", Codec::Zstd, None).unwrap(),
        spans: properties("spans", Codec::Zstd, None).unwrap(),
        row_group_bytes: 1 << 20,
        file_bytes: 1 << 20,
    }
}

/// A client and a server span, unicode names, GenAI attributes, an event and a link.
fn two_services() -> AssembledTrace {
    let mut root = span(TRACE, [1; 8], &[], "client-root ✓ 日本");
    root.attributes = vec![kv("mlflow.spanInputs", "{\"q\": \"héllo\"}")];
    root.events = vec![Event {
        time_unix_nano: 1_000_500_000,
        name: "checkpoint".into(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }];
    let mut llm = span(TRACE, [2; 8], &[1; 8], "chat");
    llm.attributes = vec![
        kv("gen_ai.operation.name", "chat"),
        kv("gen_ai.provider.name", "openai"),
        kv("gen_ai.request.model", "gpt-4o-mini"),
        kv_int("gen_ai.usage.input_tokens", 12),
        kv_int("gen_ai.usage.output_tokens", 5),
    ];
    llm.status = Some(crate::otlp::Status {
        message: "boom".into(),
        code: 2,
    });
    llm.events = vec![Event {
        time_unix_nano: 1_000_600_000,
        name: "exception".into(),
        attributes: vec![kv("exception.message", "bad ✗"), kv_int("retries", 2)],
        dropped_attributes_count: 0,
    }];
    llm.links = vec![Link {
        trace_id: Bytes::copy_from_slice(&[9; 16]),
        span_id: Bytes::copy_from_slice(&[9; 8]),
        attributes: Vec::<KeyValue>::new(),
        ..Default::default()
    }];
    assembled(
        TraceId(TRACE),
        vec![
            resource_spans("client", vec![root]),
            resource_spans("server", vec![llm]),
        ],
        2,
        ReleaseReason::MaxAge,
    )
}

/// Writes `traces` into one file pair and reads both tables back.
fn round_trip(
    traces: &[AssembledTrace],
) -> ((RecordBatch, RecordBatch), (RecordBatch, RecordBatch)) {
    let mut file = OpenFile::new("date=1970-01-01".into(), &settings(), Instant::now());
    let (trace_rows, span_rows) = file.append(&mut Rows::new(true), traces);
    let done = file.finish();
    (
        (trace_rows, span_rows),
        (read(done.traces), read(done.spans)),
    )
}

fn read(file: Vec<u8>) -> RecordBatch {
    let builder = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(file)).unwrap();
    let version = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == SCHEMA_VERSION_KEY))
        .and_then(|e| e.value.clone());
    assert_eq!(version.as_deref(), Some(SCHEMA_VERSION));
    let schema = builder.schema().clone();
    let batches: Vec<RecordBatch> = builder
        .with_batch_size(1 << 20)
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    arrow_select_concat(&schema, &batches)
}

fn arrow_select_concat(schema: &arrow_schema::SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    match batches {
        [one] => one.clone(),
        [] => RecordBatch::new_empty(schema.clone()),
        _ => panic!("expected one batch, got {}", batches.len()),
    }
}

fn text(batch: &RecordBatch, column: &str, row: usize) -> Option<String> {
    let a = batch.column_by_name(column).unwrap().as_string::<i32>();
    a.is_valid(row).then(|| a.value(row).to_string())
}

#[test]
fn every_column_reads_back_as_written() {
    let ((traces, spans), (traces_read, spans_read)) = round_trip(&[two_services()]);
    for (written, read, schema) in [
        (&traces, &traces_read, &TRACES),
        (&spans, &spans_read, &SPANS),
    ] {
        assert_eq!(read.schema().fields(), schema.fields());
        assert_eq!(read.num_rows(), written.num_rows());
        for (i, field) in schema.fields().iter().enumerate() {
            assert_eq!(
                read.column(i).to_data(),
                written.column(i).to_data(),
                "column {}",
                field.name()
            );
        }
    }
}

#[test]
fn trace_rows_carry_the_rollups() {
    let t = two_services();
    let (_, (traces, _)) = round_trip(std::slice::from_ref(&t));
    assert_eq!(
        text(&traces, "trace_id", 0).unwrap(),
        format!("tr-{}", "07".repeat(16))
    );
    assert_eq!(text(&traces, "experiment_id", 0).as_deref(), Some("0"));
    assert_eq!(text(&traces, "state", 0).as_deref(), Some("OK"));
    assert_eq!(
        text(&traces, "root_span_name", 0).as_deref(),
        Some("client-root ✓ 日本")
    );
    assert_eq!(
        text(&traces, "partial_reason", 0).as_deref(),
        Some("max_age")
    );
    let ms = traces.column_by_name("request_time").unwrap();
    assert_eq!(
        ms.as_primitive::<TimestampMillisecondType>().value(0),
        1_000
    );
    let int = |c: &str| {
        traces
            .column_by_name(c)
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0)
    };
    assert_eq!(
        (int("span_count"), int("error_span_count"), int("revision")),
        (2, 1, 2)
    );
    let tokens = |c: &str| {
        traces
            .column_by_name(c)
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0)
    };
    assert_eq!(
        (
            tokens("input_tokens"),
            tokens("output_tokens"),
            tokens("total_tokens")
        ),
        (12, 5, 17)
    );
    let services = traces
        .column_by_name("services")
        .unwrap()
        .as_list::<i32>()
        .value(0);
    let services: Vec<&str> = services.as_string::<i32>().iter().flatten().collect();
    assert_eq!(services, ["client", "server"]);
    assert!(
        traces
            .column_by_name("partial")
            .unwrap()
            .as_boolean()
            .value(0)
    );
    let json = text(&traces, "trace_json", 0).unwrap();
    assert_eq!(json, serde_json::to_string(&t.trace).unwrap());
}

#[test]
fn span_rows_carry_ids_types_and_genai_columns() {
    let (_, (_, spans)) = round_trip(&[two_services()]);
    assert_eq!(spans.num_rows(), 2);
    assert_eq!(
        text(&spans, "span_id", 0).as_deref(),
        Some("0101010101010101")
    );
    assert_eq!(text(&spans, "parent_span_id", 0), None);
    assert_eq!(
        text(&spans, "parent_span_id", 1).as_deref(),
        Some("0101010101010101")
    );
    assert_eq!(
        text(&spans, "inputs", 0).as_deref(),
        Some("{\"q\": \"héllo\"}")
    );
    assert_eq!(text(&spans, "service_name", 1).as_deref(), Some("server"));
    assert_eq!(text(&spans, "model", 1).as_deref(), Some("gpt-4o-mini"));
    assert_eq!(text(&spans, "provider", 1).as_deref(), Some("openai"));
    assert_eq!(text(&spans, "span_type", 1).as_deref(), Some("CHAT_MODEL"));
    assert_eq!(text(&spans, "status_code", 1).as_deref(), Some("ERROR"));
    assert_eq!(text(&spans, "status_message", 1).as_deref(), Some("boom"));
    let total = spans
        .column_by_name("total_tokens")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!(total.is_null(0));
    assert_eq!(total.value(1), 17);
    let events = spans.column_by_name("events").unwrap().as_list::<i32>();
    let root_event = events.value(0);
    let root_event = root_event.as_struct();
    assert_eq!(
        root_event.column(0).as_string::<i32>().value(0),
        "checkpoint"
    );
    assert_eq!(
        root_event.column(2).as_map().value(0).len(),
        0,
        "an empty map, not null"
    );
    let exception = events.value(1);
    let attrs = exception.as_struct().column(2).as_map().value(0);
    let keys: Vec<&str> = attrs
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    let values: Vec<&str> = attrs
        .column(1)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(keys, ["exception.message", "retries"]);
    assert_eq!(values, ["\"bad ✗\"", "2"]);
    let links = spans.column_by_name("links").unwrap().as_list::<i32>();
    assert_eq!(links.value(0).len(), 0);
    let link = links.value(1);
    assert_eq!(
        link.as_struct().column(1).as_string::<i32>().value(0),
        "0909090909090909"
    );
    let attributes = spans
        .column_by_name("attributes")
        .unwrap()
        .as_map()
        .value(0);
    let keys: Vec<&str> = attributes
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert!(
        !keys.contains(&"mlflow.spanInputs"),
        "inputs have their own column: {keys:?}"
    );
    assert!(keys.contains(&"mlflow.traceRequestId"));
}

#[test]
fn a_ten_thousand_span_trace_round_trips() {
    let spans: Vec<_> = (0..10_000u32)
        .map(|i| {
            let mut id = [0u8; 8];
            id[4..].copy_from_slice(&(i + 1).to_be_bytes());
            let parent = if i == 0 {
                vec![]
            } else {
                vec![0, 0, 0, 0, 0, 0, 0, 1]
            };
            span(TRACE, id, &parent, &format!("span {i}"))
        })
        .collect();
    let t = assembled(
        TraceId(TRACE),
        vec![resource_spans("svc", spans)],
        1,
        ReleaseReason::Size,
    );
    let ((_, written), (traces, read)) = round_trip(&[t]);
    assert_eq!(read.num_rows(), 10_000);
    assert_eq!(
        read.column_by_name("span_id").unwrap().to_data(),
        written.column_by_name("span_id").unwrap().to_data()
    );
    let count = traces
        .column_by_name("span_count")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert_eq!(count.value(0), 10_000);
}

#[test]
fn steps_are_encoded_in_bounded_batches_in_order() {
    let traces: Vec<super::SinkInput> = [300, 300, 500, 2000, 10]
        .into_iter()
        .map(|bytes| {
            let mut t = two_services();
            t.bytes = bytes;
            std::sync::Arc::new(t)
        })
        .collect();
    let refs: Vec<&super::SinkInput> = traces.iter().collect();
    let sizes: Vec<Vec<usize>> = super::batches(&refs, 1000)
        .map(|b| b.iter().map(|t| t.bytes).collect())
        .collect();
    // Never over the limit unless one trace alone is; never empty; nothing skipped or reordered.
    assert_eq!(sizes, [vec![300, 300], vec![500], vec![2000], vec![10]]);
    assert_eq!(super::batches(&[], 1000).count(), 0);
}
