//! The two tables' Arrow schemas, declared once; the README's column tables describe them.
//!
//! The schema is a contract with every lake query written against it: columns are only ever
//! added (nullable, at the end), never renamed, retyped or removed, and [`SCHEMA_VERSION`] (in
//! each file's key-value metadata) goes up when one is added.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::MapFieldNames;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// Version of the dataset layout, written in each file's metadata under [`SCHEMA_VERSION_KEY`].
pub const SCHEMA_VERSION: &str = "1";
/// File metadata key of the schema version.
pub const SCHEMA_VERSION_KEY: &str = "traceloom.schema_version";
/// File metadata key naming the table (`traces` or `spans`).
pub const TABLE_KEY: &str = "traceloom.table";

/// Names of a map's parts, as the Parquet format specifies them (`key_value { key, value }`), so
/// that every engine reads a plain `MAP<STRING, STRING>`.
pub fn map_names() -> MapFieldNames {
    MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    }
}

/// `MAP<STRING, STRING>`.
pub fn string_map() -> DataType {
    let names = map_names();
    let entries = Fields::from(vec![
        Field::new(names.key, DataType::Utf8, false),
        Field::new(names.value, DataType::Utf8, true),
    ]);
    DataType::Map(
        Arc::new(Field::new(names.entry, DataType::Struct(entries), false)),
        false,
    )
}

/// `TIMESTAMP` in UTC at `unit`.
pub fn utc(unit: TimeUnit) -> DataType {
    DataType::Timestamp(unit, Some("UTC".into()))
}

/// A `LIST` of non-null `item`s.
pub fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, false)))
}

/// The struct of one `events` element.
pub fn event_fields() -> Fields {
    Fields::from(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("time", utc(TimeUnit::Nanosecond), false),
        Field::new("attributes", string_map(), false),
    ])
}

/// The struct of one `links` element.
pub fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new("trace_id", DataType::Utf8, false),
        Field::new("span_id", DataType::Utf8, false),
        Field::new("attributes", string_map(), false),
    ])
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn optional_text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn tokens() -> [Field; 3] {
    ["input_tokens", "output_tokens", "total_tokens"].map(|n| Field::new(n, DataType::Int64, true))
}

/// `traces/`: one row per trace revision.
pub static TRACES: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        text("trace_id"),
        text("experiment_id"),
        Field::new("request_time", utc(TimeUnit::Millisecond), false),
        Field::new("execution_duration_ms", DataType::Int64, false),
        text("state"),
        optional_text("request_preview"),
        optional_text("response_preview"),
        optional_text("client_request_id"),
        Field::new("tags", string_map(), false),
        Field::new("trace_metadata", string_map(), false),
        Field::new("span_count", DataType::Int32, false),
        Field::new("error_span_count", DataType::Int32, false),
        optional_text("root_span_name"),
        Field::new("services", list_of(DataType::Utf8), false),
        optional_text("session_id"),
        optional_text("user_id"),
    ];
    fields.extend(tokens());
    fields.extend([
        Field::new("revision", DataType::Int32, false),
        Field::new("partial", DataType::Boolean, false),
        optional_text("partial_reason"),
        optional_text("trace_json"),
    ]);
    Arc::new(Schema::new(fields))
});

/// `spans/`: one row per span of each trace revision.
pub static SPANS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        text("trace_id"),
        text("span_id"),
        optional_text("parent_span_id"),
        text("name"),
        optional_text("span_type"),
        Field::new("start_time", utc(TimeUnit::Nanosecond), false),
        Field::new("end_time", utc(TimeUnit::Nanosecond), false),
        Field::new("duration_ns", DataType::Int64, false),
        text("status_code"),
        text("status_message"),
        optional_text("inputs"),
        optional_text("outputs"),
        Field::new("attributes", string_map(), false),
        Field::new("events", list_of(DataType::Struct(event_fields())), false),
        Field::new("links", list_of(DataType::Struct(link_fields())), false),
        optional_text("service_name"),
        optional_text("model"),
        optional_text("provider"),
    ];
    fields.extend(tokens());
    fields.push(Field::new("revision", DataType::Int32, false));
    Arc::new(Schema::new(fields))
});
