//! One partition's open file pair (`traces/…/part-X.parquet` and `spans/…/part-X.parquet`),
//! encoded in memory until it is published.
//!
//! Encoding into memory rather than into the temp file keeps a failed publish retryable: the
//! bytes are still here when the disk has room again, so a full disk delays data but never loses
//! it. The cost is memory up to the file size, bounded by the sink's `max_buffered_bytes`.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::Deserialize;

use super::layout::FileName;
use super::rows::Rows;
use super::schema::{SCHEMA_VERSION, SCHEMA_VERSION_KEY, SPANS, TABLE_KEY, TRACES};
use crate::model::{AssembledTrace, TraceId};

/// `compression` of the Parquet sink.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// zstd (level from `compression_level`, default 1): small files, fast enough for ingest.
    #[default]
    Zstd,
    /// Snappy: faster, larger.
    Snappy,
    /// No compression.
    None,
}

/// Columns that are long and nearly unique: no dictionary and no min/max statistics, which
/// would cost CPU and footer space without helping any filter.
const FREE_TEXT: &[&str] = &[
    "trace_json",
    "inputs",
    "outputs",
    "request_preview",
    "response_preview",
    "status_message",
    "span_id",
    "parent_span_id",
];

/// Map columns whose values are free text (keys keep their dictionary: they repeat).
const MAPS: &[&str] = &["attributes", "tags", "trace_metadata"];

/// Writer settings of one table.
pub fn properties(
    table: &str,
    codec: Codec,
    level: Option<i32>,
) -> parquet::errors::Result<WriterProperties> {
    let compression = match codec {
        Codec::Zstd => Compression::ZSTD(ZstdLevel::try_new(level.unwrap_or(1))?),
        Codec::Snappy => Compression::SNAPPY,
        Codec::None => Compression::UNCOMPRESSED,
    };
    let mut b = WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_statistics_truncate_length(Some(64))
        .set_column_bloom_filter_enabled(ColumnPath::from("trace_id"), true)
        .set_key_value_metadata(Some(vec![
            KeyValue::new(SCHEMA_VERSION_KEY.into(), SCHEMA_VERSION.to_string()),
            KeyValue::new(TABLE_KEY.into(), table.to_string()),
        ]));
    let map_values = MAPS
        .iter()
        .map(|m| ColumnPath::new(vec![m.to_string(), "key_value".into(), "value".into()]));
    for column in FREE_TEXT
        .iter()
        .map(|c| ColumnPath::from(*c))
        .chain(map_values)
    {
        b = b
            .set_column_dictionary_enabled(column.clone(), false)
            .set_column_statistics_enabled(column, EnabledStatistics::None);
    }
    Ok(b.build())
}

/// Settings shared by every open file of a sink.
#[derive(Clone)]
pub struct FileSettings {
    /// `traces` writer settings.
    pub traces: WriterProperties,
    /// `spans` writer settings.
    pub spans: WriterProperties,
    /// Encoded bytes after which a row group is closed.
    pub row_group_bytes: usize,
    /// Expected size of a file (`max_file_size`), reserved up front.
    pub file_bytes: usize,
}

/// A file pair being written.
pub struct OpenFile {
    partition: String,
    traces: ArrowWriter<Vec<u8>>,
    spans: ArrowWriter<Vec<u8>>,
    name: FileName,
    opened: Instant,
    revisions: Vec<(TraceId, u32)>,
    positions: Vec<u64>,
    span_rows: usize,
    row_group_bytes: usize,
}

/// A file pair ready to publish.
pub struct Finished {
    /// Partition directory, relative to each table's root.
    pub partition: String,
    /// File name, the same in both tables.
    pub name: String,
    /// The `traces` file.
    pub traces: Vec<u8>,
    /// The `spans` file.
    pub spans: Vec<u8>,
    /// The trace revisions it holds, in order.
    pub revisions: Vec<(TraceId, u32)>,
    /// Their identities in the ingest log.
    pub positions: Vec<u64>,
    /// Rows in the `spans` file.
    pub span_rows: usize,
}

impl Finished {
    /// Bytes of both files.
    pub fn size(&self) -> usize {
        self.traces.len() + self.spans.len()
    }
}

/// A writer into memory. The buffer reserves `capacity` up front: only address space until
/// written, and it saves copying the file each time a growing buffer doubles.
fn writer(
    schema: &Arc<arrow_schema::Schema>,
    props: &WriterProperties,
    capacity: usize,
) -> ArrowWriter<Vec<u8>> {
    ArrowWriter::try_new(
        Vec::with_capacity(capacity),
        Arc::clone(schema),
        Some(props.clone()),
    )
    .expect("an in-memory writer for a fixed schema")
}

impl OpenFile {
    /// An empty file pair in `partition`.
    pub fn new(partition: String, settings: &FileSettings, now: Instant) -> Self {
        Self {
            name: FileName::new(&partition),
            partition,
            traces: writer(&TRACES, &settings.traces, settings.file_bytes / 4),
            spans: writer(&SPANS, &settings.spans, settings.file_bytes),
            opened: now,
            revisions: Vec::new(),
            positions: Vec::new(),
            span_rows: 0,
            row_group_bytes: settings.row_group_bytes,
        }
    }

    /// When the file was opened.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Appends `traces` (built into rows with `rows`, whose builders start over) and returns the
    /// `traces` and `spans` batches written.
    pub fn append<'a>(
        &mut self,
        rows: &mut Rows,
        traces: impl IntoIterator<Item = &'a AssembledTrace>,
    ) -> (RecordBatch, RecordBatch) {
        for t in traces {
            rows.push(t);
            let (id, revision) = (t.release.trace_id, t.release.revision);
            self.name.add(&id, revision);
            self.revisions.push((id, revision));
            self.positions.push(t.position);
        }
        let (traces, spans) = rows.finish();
        self.span_rows += spans.num_rows();
        for (w, batch) in [(&mut self.traces, &traces), (&mut self.spans, &spans)] {
            w.write(batch)
                .expect("batches of the writer's schema encode in memory");
            if w.in_progress_size() >= self.row_group_bytes {
                w.flush().expect("flushing a row group in memory");
            }
        }
        (traces, spans)
    }

    /// Encoded bytes so far (closed row groups plus the open one).
    pub fn size(&self) -> usize {
        [&self.traces, &self.spans]
            .iter()
            .map(|w| w.bytes_written() + w.in_progress_size())
            .sum()
    }

    /// Closes both files.
    pub fn finish(self) -> Finished {
        let close = |w: ArrowWriter<Vec<u8>>| w.into_inner().expect("closing a file in memory");
        Finished {
            name: self.name.finish(),
            partition: self.partition,
            traces: close(self.traces),
            spans: close(self.spans),
            revisions: self.revisions,
            positions: self.positions,
            span_rows: self.span_rows,
        }
    }
}
