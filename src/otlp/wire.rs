//! Reading `ResourceSpans` from the wire without decoding the spans.
//!
//! Receiving a span needs only its ids and times, to validate it and group it by trace. The
//! ingest log and the assembler keep the span's message as it arrived, and MLflow normalization
//! decodes it when the trace is released. Decoding every span at receive as well cost a loaded
//! pipeline a sixth of its CPU (allocating attribute vectors, counting references to the request
//! buffer, dropping it all again).
//!
//! So [`read_resource_spans`] decodes resources and scopes (a few per request), and for each span
//! reads its ids and times and checks the rest of its encoding as prost decoding the whole
//! request does. It accepts the same wire types for the same fields, and applies the same bounds
//! and the same recursion limit, and allocates nothing while checking. A request it accepts
//! therefore decodes, and a span accepted at receive always decodes at release. A property test
//! holds it to that, request by request, against `ExportTraceServiceRequest::decode`.

use std::fmt;

use bytes::Bytes;
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint};

use super::{InstrumentationScope, Resource};

/// prost's recursion limit: how deeply messages may nest below the one being decoded.
pub(super) const RECURSION_LIMIT: u32 = 100;

/// One `ResourceSpans`: its resource, decoded, and its scopes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceBlock {
    /// `ResourceSpans.resource`.
    pub resource: Option<Resource>,
    /// `ResourceSpans.schema_url`.
    pub schema_url: Bytes,
    /// `ResourceSpans.scope_spans`.
    pub scopes: Vec<ScopeBlock>,
}

/// One `ScopeSpans`: its scope, decoded, and its spans, checked but encoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScopeBlock {
    /// `ScopeSpans.scope`.
    pub scope: Option<InstrumentationScope>,
    /// `ScopeSpans.schema_url`.
    pub schema_url: Bytes,
    /// `ScopeSpans.spans`.
    pub spans: Vec<WireSpan>,
}

/// A span as it arrived: the fields receiving needs, and its whole `Span` message.
#[derive(Clone, Debug, PartialEq)]
pub struct WireSpan {
    /// Ids and times.
    pub head: SpanHead,
    /// The `Span` message.
    pub encoded: Bytes,
}

/// The fields of a `Span` that validation and assembly read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanHead {
    /// `trace_id`.
    pub trace_id: IdField<16>,
    /// `span_id`.
    pub span_id: IdField<8>,
    /// `parent_span_id`.
    pub parent_span_id: IdField<8>,
    /// `start_time_unix_nano`.
    pub start_time_unix_nano: u64,
    /// `end_time_unix_nano`.
    pub end_time_unix_nano: u64,
}

/// An id field as received: its length, and its bytes when that length is `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdField<const N: usize> {
    len: usize,
    bytes: [u8; N],
}

impl<const N: usize> Default for IdField<N> {
    fn default() -> Self {
        Self {
            len: 0,
            bytes: [0; N],
        }
    }
}

impl<const N: usize> IdField<N> {
    /// Keeps `field`; as in prost, a later occurrence of the field replaces an earlier one.
    fn set(&mut self, field: &[u8]) {
        self.len = field.len();
        if let Ok(bytes) = field.try_into() {
            self.bytes = bytes;
        }
    }

    /// The field's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the field is empty (absent).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id, when the field has exactly `N` bytes.
    pub fn get(&self) -> Option<[u8; N]> {
        (self.len == N).then_some(self.bytes)
    }
}

/// Why a buffer is not well-formed, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct WireError {
    /// The path of the span, resource or scope, and the message and field inside it.
    pub at: String,
    /// What is wrong.
    pub reason: String,
}

/// The `ResourceSpans` held as the repeated field `field` of message `buf` (1 in
/// `ExportTraceServiceRequest`, 2 in the log's `SpanRecord`), every span checked.
///
/// # Errors
///
/// [`WireError`] where prost would refuse to decode the message.
pub fn read_resource_spans(buf: &Bytes, field: u32) -> Result<Vec<ResourceBlock>, WireError> {
    let mut out = Vec::new();
    let mut reader = Reader::of(buf);
    while let Some((tag, wire_type)) = reader.key().map_err(|f| f.at("request"))? {
        if tag != field {
            reader
                .skip(wire_type, tag, RECURSION_LIMIT)
                .map_err(|f| f.at("request"))?;
            continue;
        }
        let at = || format!("resource_spans[{}]", out.len());
        let payload = reader
            .message(wire_type, RECURSION_LIMIT)
            .map_err(|f| f.at(&at()))?;
        out.push(resource_block(&payload, out.len())?);
    }
    Ok(out)
}

fn resource_block(buf: &Bytes, r: usize) -> Result<ResourceBlock, WireError> {
    let at = || format!("resource_spans[{r}]");
    let mut block = ResourceBlock::default();
    let mut scopes = Vec::new();
    walk_block(buf, RECURSION_LIMIT - 1, &at, |tag, field| {
        match tag {
            1 => merge(&mut block.resource, field, || format!("{}.resource", at()))?,
            2 => scopes.push(field),
            _ => block.schema_url = field,
        }
        Ok(())
    })?;
    block.scopes = scopes
        .iter()
        .enumerate()
        .map(|(s, scope)| scope_block(scope, &|| format!("{}.scope_spans[{s}]", at())))
        .collect::<Result<_, _>>()?;
    Ok(block)
}

fn scope_block(buf: &Bytes, at: &dyn Fn() -> String) -> Result<ScopeBlock, WireError> {
    const DEPTH: u32 = RECURSION_LIMIT - 2;
    let mut block = ScopeBlock::default();
    walk_block(buf, DEPTH, at, |tag, field| {
        match tag {
            1 => merge(&mut block.scope, field, || format!("{}.scope", at()))?,
            2 => {
                let mut head = SpanHead::default();
                let canonical = check(Msg::Span, &field, DEPTH - 1, Some(&mut head))
                    .map_err(|f| f.at(&format!("{}.spans[{}]", at(), block.spans.len())))?;
                let encoded = if canonical {
                    field
                } else {
                    canonical_span(field)
                };
                block.spans.push(WireSpan { head, encoded });
            }
            _ => block.schema_url = field,
        }
        Ok(())
    })?;
    Ok(block)
}

/// Walks a `ResourceSpans` or `ScopeSpans` (a message at recursion budget `depth`), whose
/// fields 1 and 2 are messages and 3 the schema URL: hands each of those to `on`, skips the rest.
fn walk_block(
    buf: &Bytes,
    depth: u32,
    at: &dyn Fn() -> String,
    mut on: impl FnMut(u32, Bytes) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut reader = Reader::of(buf);
    while let Some((tag, wire_type)) = reader.key().map_err(|f| f.at(&at()))? {
        let field = match tag {
            1 | 2 => reader.message(wire_type, depth),
            3 => reader.bytes(wire_type),
            _ => {
                reader
                    .skip(wire_type, tag, depth)
                    .map_err(|f| f.at(&at()))?;
                continue;
            }
        };
        on(tag, field.map_err(|f| f.at(&at()))?)?;
    }
    Ok(())
}

/// A span's encoding as prost writes it after decoding, for the rare span that repeats a
/// singular message field: the views of [`super::view`] read every span as prost decodes it
/// only when none does.
fn canonical_span(encoded: Bytes) -> Bytes {
    let span = super::Span::decode(encoded).expect("checked spans decode");
    Bytes::from(span.encode_to_vec())
}

/// Decodes a resource or scope into `slot`, merging into what an earlier occurrence left there
/// as prost does.
fn merge<M: Message + Default>(
    slot: &mut Option<M>,
    buf: Bytes,
    at: impl Fn() -> String,
) -> Result<(), WireError> {
    slot.get_or_insert_with(M::default)
        .merge(buf)
        .map_err(|e| WireError {
            at: at(),
            reason: e.to_string(),
        })
}

/// The messages below `Span`, with the kind of each field as the OTLP protos (and the structs in
/// [`crate::otlp`]) declare it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Msg {
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

#[derive(Clone, Copy)]
enum Kind {
    Varint,
    Fixed32,
    Fixed64,
    Bytes,
    Message(Msg),
    Unknown,
}

impl Msg {
    /// Whether `tag` is one of the message's singular message fields (for `AnyValue`, any
    /// variant of its `oneof`, conservatively), which views assume occur at most once.
    fn singular(self, tag: u32) -> bool {
        matches!(
            (self, tag),
            (Msg::Span, 15) | (Msg::KeyValue, 2) | (Msg::AnyValue, 1..=7)
        )
    }

    fn kind(self, tag: u32) -> Kind {
        use Kind::*;
        match (self, tag) {
            (Msg::Span, 1..=5) => Bytes,
            (Msg::Span, 6 | 10 | 12 | 14) => Varint,
            (Msg::Span, 7 | 8) => Fixed64,
            (Msg::Span, 9) => Message(Msg::KeyValue),
            (Msg::Span, 11) => Message(Msg::Event),
            (Msg::Span, 13) => Message(Msg::Link),
            (Msg::Span, 15) => Message(Msg::Status),
            (Msg::Span, 16) => Fixed32,
            (Msg::Event, 1) => Fixed64,
            (Msg::Event, 2) => Bytes,
            (Msg::Event, 3) => Message(Msg::KeyValue),
            (Msg::Event, 4) => Varint,
            (Msg::Link, 1..=3) => Bytes,
            (Msg::Link, 4) => Message(Msg::KeyValue),
            (Msg::Link, 5) => Varint,
            (Msg::Link, 6) => Fixed32,
            (Msg::Status, 2) => Bytes,
            (Msg::Status, 3) => Varint,
            (Msg::KeyValue, 1) => Bytes,
            (Msg::KeyValue, 2) => Message(Msg::AnyValue),
            (Msg::AnyValue, 1 | 7) => Bytes,
            (Msg::AnyValue, 2 | 3) => Varint,
            (Msg::AnyValue, 4) => Fixed64,
            (Msg::AnyValue, 5) => Message(Msg::ArrayValue),
            (Msg::AnyValue, 6) => Message(Msg::KeyValueList),
            (Msg::ArrayValue, 1) => Message(Msg::AnyValue),
            (Msg::KeyValueList, 1) => Message(Msg::KeyValue),
            _ => Unknown,
        }
    }
}

/// The layout every encoder writes for a `KeyValue`: the key, then the value, each once and
/// nothing else. `(key, value)`, or `None` for any other layout (which the general loops read).
pub(super) fn usual_key_value(kv: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut reader = Reader::new(kv);
    let key = reader.delimited_if(delimited_key(1))?;
    let value = reader.delimited_if(delimited_key(2))?;
    reader.at_end().then_some((key, value))
}

/// The string of an `AnyValue` made of its `string_value` alone, as most are.
pub(super) fn only_string(value: &[u8]) -> Option<&[u8]> {
    let mut reader = Reader::new(value);
    let string = reader.delimited_if(delimited_key(1))?;
    reader.at_end().then_some(string)
}

/// Whether an `AnyValue` is one scalar variant and nothing else (valid and canonical): a
/// string, bool, int, double or bytes value.
fn one_scalar(value: &[u8]) -> bool {
    const STRING: u8 = delimited_key(1);
    const BOOL: u8 = one_byte_key(2, WireType::Varint);
    const INT: u8 = one_byte_key(3, WireType::Varint);
    const DOUBLE: u8 = one_byte_key(4, WireType::SixtyFourBit);
    const BYTES: u8 = delimited_key(7);
    // Matched by key byte rather than through `Reader::key`: this runs for every attribute.
    let Some((&key, rest)) = value.split_first() else {
        return false;
    };
    let mut reader = Reader::new(rest);
    let read = match key {
        STRING | BYTES => reader.delimited().is_ok(),
        BOOL | INT => reader.varint().is_ok(),
        DOUBLE => reader.fixed64().is_ok(),
        _ => false,
    };
    read && reader.at_end()
}

/// The one-byte key of field `number` (every OTLP field number is below 16).
const fn one_byte_key(number: u32, wire_type: WireType) -> u8 {
    (number << 3) as u8 | wire_type as u8
}

/// The one-byte key of length-delimited field `number`.
pub(super) const fn delimited_key(number: u32) -> u8 {
    one_byte_key(number, WireType::LengthDelimited)
}

/// Checks message `msg` in `buf`, whose fields may nest `depth` more messages, noting the span's
/// ids and times in `head` when given. `Ok(false)` when a singular message field occurs more
/// than once somewhere inside: prost merges the occurrences, so the message is not canonical.
fn check(msg: Msg, buf: &[u8], depth: u32, mut head: Option<&mut SpanHead>) -> Result<bool, Fault> {
    // Most messages checked are attributes of one scalar value in the usual layout: valid and
    // canonical, with the value one level down.
    if matches!(msg, Msg::KeyValue)
        && depth > 0
        && usual_key_value(buf).is_some_and(|(_, value)| one_scalar(value))
    {
        return Ok(true);
    }
    let mut reader = Reader::new(buf);
    let mut canonical = true;
    let mut singular_seen = false;
    while let Some((tag, wire_type)) = reader.key().map_err(|f| f.inside(msg, 0))? {
        let inside = |f: Fault| f.inside(msg, tag);
        let kind = msg.kind(tag);
        let expected = match kind {
            Kind::Varint => WireType::Varint,
            Kind::Fixed32 => WireType::ThirtyTwoBit,
            Kind::Fixed64 => WireType::SixtyFourBit,
            Kind::Bytes | Kind::Message(_) => WireType::LengthDelimited,
            Kind::Unknown => {
                reader.skip(wire_type, tag, depth).map_err(inside)?;
                continue;
            }
        };
        if wire_type != expected {
            return Err(inside(Fault::wire_type(wire_type, expected)));
        }
        if msg.singular(tag) {
            canonical &= !singular_seen;
            singular_seen = true;
        }
        match kind {
            Kind::Varint => reader.varint().map(drop),
            Kind::Fixed32 => reader.take(4).map(drop),
            Kind::Fixed64 => reader.fixed64().map(|value| {
                if let Some(head) = head.as_deref_mut() {
                    match tag {
                        7 => head.start_time_unix_nano = value,
                        8 => head.end_time_unix_nano = value,
                        _ => {}
                    }
                }
            }),
            Kind::Bytes => reader.delimited().map(|b| {
                if let Some(head) = head.as_deref_mut() {
                    match tag {
                        1 => head.trace_id.set(b),
                        2 => head.span_id.set(b),
                        4 => head.parent_span_id.set(b),
                        _ => {}
                    }
                }
            }),
            Kind::Message(inner) => {
                let payload = reader.delimited().map_err(inside)?;
                if depth == 0 {
                    return Err(inside(Fault::TooDeep));
                }
                check(inner, payload, depth - 1, None).map(|c| canonical &= c)
            }
            Kind::Unknown => unreachable!("skipped above"),
        }
        .map_err(inside)?;
    }
    Ok(canonical)
}

/// A cursor over a message's fields; [`super::view`] reads through it too.
#[derive(Clone, Debug)]
pub(super) struct Reader<'a> {
    whole: &'a [u8],
    rest: &'a [u8],
    bytes: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self {
            whole: buf,
            rest: buf,
            bytes: None,
        }
    }

    /// A reader whose length-delimited fields can be sliced out of `buf` without copying.
    fn of(buf: &'a Bytes) -> Self {
        Self {
            bytes: Some(buf),
            ..Self::new(buf)
        }
    }

    /// The next field's tag and wire type, `None` at the end.
    #[inline]
    pub(super) fn key(&mut self) -> Result<Option<(u32, WireType)>, Fault> {
        let Some(&first) = self.rest.first() else {
            return Ok(None);
        };
        // Every OTLP field number is below 16, so its key is one byte: read it here, and leave
        // longer keys and the invalid ones (tag 0, wire types 6 and 7) to prost and its errors.
        let wire_type = match first & 7 {
            0 => WireType::Varint,
            1 => WireType::SixtyFourBit,
            2 => WireType::LengthDelimited,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::ThirtyTwoBit,
            _ => return self.long_key(),
        };
        if !(8..0x80).contains(&first) {
            return self.long_key();
        }
        self.rest = &self.rest[1..];
        Ok(Some((u32::from(first >> 3), wire_type)))
    }

    #[cold]
    fn long_key(&mut self) -> Result<Option<(u32, WireType)>, Fault> {
        decode_key(&mut self.rest).map(Some).map_err(Fault::Prost)
    }

    /// A varint; those of one or two bytes (every length below 16 KiB) are read here.
    #[inline]
    pub(super) fn varint(&mut self) -> Result<u64, Fault> {
        match *self.rest {
            [b, ..] if b < 0x80 => {
                self.rest = &self.rest[1..];
                Ok(u64::from(b))
            }
            [low, high, ..] if high < 0x80 => {
                self.rest = &self.rest[2..];
                Ok(u64::from(low & 0x7f) | u64::from(high) << 7)
            }
            _ => decode_varint(&mut self.rest).map_err(Fault::Prost),
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Fault> {
        if len > self.rest.len() {
            return Err(Fault::Truncated);
        }
        let (field, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(field)
    }

    /// A fixed 64-bit field's value.
    pub(super) fn fixed64(&mut self) -> Result<u64, Fault> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("took 8 bytes")))
    }

    /// How far into the message the cursor is.
    pub(super) fn position(&self) -> usize {
        self.whole.len() - self.rest.len()
    }

    #[inline]
    pub(super) fn delimited(&mut self) -> Result<&'a [u8], Fault> {
        let len = self.varint()?;
        self.take(usize::try_from(len).map_err(|_| Fault::Truncated)?)
    }

    /// The payload of the next field when its one-byte key is `key` (a length-delimited field's),
    /// else `None` with the cursor unmoved: the views' fast path for the layout every encoder
    /// writes.
    #[inline]
    pub(super) fn delimited_if(&mut self, key: u8) -> Option<&'a [u8]> {
        let (&first, rest) = self.rest.split_first()?;
        if first != key {
            return None;
        }
        let before = self.rest;
        self.rest = rest;
        let payload = self.delimited().ok();
        if payload.is_none() {
            self.rest = before;
        }
        payload
    }

    /// Whether every field has been read.
    pub(super) fn at_end(&self) -> bool {
        self.rest.is_empty()
    }

    /// A length-delimited field as a slice of the reader's `Bytes`, without copying.
    fn bytes(&mut self, wire_type: WireType) -> Result<Bytes, Fault> {
        if wire_type != WireType::LengthDelimited {
            return Err(Fault::wire_type(wire_type, WireType::LengthDelimited));
        }
        let field = self.delimited()?;
        let start = self.whole.len() - self.rest.len() - field.len();
        Ok(self
            .bytes
            .map_or_else(Bytes::new, |b| b.slice(start..start + field.len())))
    }

    /// A message field (for a message at recursion budget `depth`), as a slice.
    fn message(&mut self, wire_type: WireType, depth: u32) -> Result<Bytes, Fault> {
        let field = self.bytes(wire_type)?;
        if depth == 0 {
            return Err(Fault::TooDeep);
        }
        Ok(field)
    }

    /// Skips an unknown field as prost's `skip_field` does, groups included.
    pub(super) fn skip(&mut self, wire_type: WireType, tag: u32, depth: u32) -> Result<(), Fault> {
        if depth == 0 {
            return Err(Fault::TooDeep);
        }
        match wire_type {
            WireType::Varint => self.varint().map(drop),
            WireType::ThirtyTwoBit => self.take(4).map(drop),
            WireType::SixtyFourBit => self.take(8).map(drop),
            WireType::LengthDelimited => self.delimited().map(drop),
            WireType::StartGroup => loop {
                let (inner, inner_type) = self.key()?.ok_or(Fault::Truncated)?;
                if inner_type == WireType::EndGroup {
                    break if inner == tag {
                        Ok(())
                    } else {
                        Err(Fault::EndGroup)
                    };
                }
                self.skip(inner_type, inner, depth - 1)?;
            },
            WireType::EndGroup => Err(Fault::EndGroup),
        }
    }
}

/// What is wrong, with the innermost message and field it was found in.
#[derive(Debug)]
pub(super) enum Fault {
    Prost(prost::DecodeError),
    Truncated,
    TooDeep,
    EndGroup,
    WireType {
        got: WireType,
        expected: WireType,
    },
    Inside {
        msg: Msg,
        tag: u32,
        fault: Box<Fault>,
    },
}

impl Fault {
    fn wire_type(got: WireType, expected: WireType) -> Self {
        Self::WireType { got, expected }
    }

    /// Notes the message and field the fault was found in, keeping the innermost.
    fn inside(self, msg: Msg, tag: u32) -> Self {
        match self {
            Self::Inside { .. } => self,
            fault => Self::Inside {
                msg,
                tag,
                fault: Box::new(fault),
            },
        }
    }

    fn at(self, at: &str) -> WireError {
        WireError {
            at: at.to_string(),
            reason: self.to_string(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prost(e) => write!(f, "{e}"),
            Self::Truncated => f.write_str("the buffer ends inside a field"),
            Self::TooDeep => write!(f, "messages nest deeper than {RECURSION_LIMIT} levels"),
            Self::EndGroup => f.write_str("unexpected end-group tag"),
            Self::WireType { got, expected } => {
                write!(f, "wire type {got:?}, expected {expected:?}")
            }
            Self::Inside { msg, tag, fault } if *tag == 0 => write!(f, "{msg:?}: {fault}"),
            Self::Inside { msg, tag, fault } => write!(f, "{msg:?} field {tag}: {fault}"),
        }
    }
}

/// Decoded resource spans as [`read_resource_spans`] reads them: encoded as a request, then read.
/// For requests that arrive decoded (OTLP/JSON).
///
/// # Errors
///
/// [`WireError`] when the messages nest deeper than decoding allows.
pub fn blocks_of(resource_spans: &[super::ResourceSpans]) -> Result<Vec<ResourceBlock>, WireError> {
    let mut buf = Vec::new();
    for rs in resource_spans {
        prost::encoding::message::encode(1, rs, &mut buf);
    }
    read_resource_spans(&Bytes::from(buf), 1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::encoding::{encode_key, encode_varint};

    use super::*;
    use crate::otlp::{
        AnyValue, ArrayValue, Event, ExportTraceServiceRequest, KeyValue, KeyValueList, Link,
        ResourceSpans, ScopeSpans, Span, Status, Value,
    };
    use crate::testkit::{self, kv, kv_int};

    /// A span using every field and every kind of attribute value.
    fn rich_span(id: u8) -> Span {
        let nested = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(Value::DoubleValue(1.5)),
                    },
                    AnyValue {
                        value: Some(Value::KvlistValue(KeyValueList {
                            values: vec![kv("role", "user"), kv_int("n", -3)],
                        })),
                    },
                    AnyValue {
                        value: Some(Value::BytesValue(Bytes::from_static(b"\x00\xff"))),
                    },
                    AnyValue {
                        value: Some(Value::BoolValue(true)),
                    },
                ],
            })),
        };
        Span {
            trace_state: Bytes::from_static(b"k=v"),
            flags: 0x301,
            attributes: vec![
                kv("gen_ai.operation.name", "chat"),
                KeyValue {
                    key: Bytes::from_static(b"nested"),
                    value: Some(nested),
                },
            ],
            dropped_attributes_count: 2,
            events: vec![Event {
                time_unix_nano: 1_000_500_000,
                name: Bytes::from_static(b"exception"),
                attributes: vec![kv("exception.message", "boom")],
                dropped_attributes_count: 1,
            }],
            dropped_events_count: 3,
            links: vec![Link {
                trace_id: Bytes::from_static(&[7; 16]),
                span_id: Bytes::from_static(&[8; 8]),
                trace_state: Bytes::new(),
                attributes: vec![kv("link", "yes")],
                dropped_attributes_count: 0,
                flags: 1,
            }],
            dropped_links_count: 4,
            status: Some(Status {
                message: Bytes::from_static(b"failed"),
                code: 2,
            }),
            ..testkit::span([id; 16], [id; 8], &[9; 8], "rich")
        }
    }

    fn rich_request() -> ExportTraceServiceRequest {
        let mut second = testkit::resource_spans("svc-b", vec![rich_span(3)]);
        second.scope_spans.push(ScopeSpans {
            spans: vec![rich_span(4), testkit::span([5; 16], [5; 8], &[], "root")],
            schema_url: Bytes::from_static(b"https://example.com/scope"),
            ..ScopeSpans::default()
        });
        ExportTraceServiceRequest {
            resource_spans: vec![
                testkit::resource_spans("svc-a", vec![rich_span(1), rich_span(2)]),
                second,
                ResourceSpans::default(),
            ],
        }
    }

    /// Checks that `buf` reads as prost decodes it: both accept it or both refuse it, and when
    /// accepted, the same resources, scopes and spans (each span's bytes decode to prost's span,
    /// and its head holds that span's fields).
    fn reads_as_prost_decodes(buf: &[u8]) -> Result<(), TestCaseError> {
        let buf = Bytes::copy_from_slice(buf);
        let ours = read_resource_spans(&buf, 1);
        let theirs = ExportTraceServiceRequest::decode(buf.clone());
        prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "ours {:?}", ours);
        let (Ok(ours), Ok(theirs)) = (ours, theirs) else {
            return Ok(());
        };
        prop_assert_eq!(ours.len(), theirs.resource_spans.len());
        for (block, rs) in ours.iter().zip(&theirs.resource_spans) {
            prop_assert_eq!(&block.resource, &rs.resource);
            prop_assert_eq!(&block.schema_url, &rs.schema_url);
            prop_assert_eq!(block.scopes.len(), rs.scope_spans.len());
            for (scope, ss) in block.scopes.iter().zip(&rs.scope_spans) {
                prop_assert_eq!(&scope.scope, &ss.scope);
                prop_assert_eq!(&scope.schema_url, &ss.schema_url);
                prop_assert_eq!(scope.spans.len(), ss.spans.len());
                for (wire, span) in scope.spans.iter().zip(&ss.spans) {
                    // Compared as encodings: a flipped byte can make a double NaN, which is
                    // unequal to itself.
                    let decoded = Span::decode(wire.encoded.clone()).unwrap();
                    prop_assert_eq!(decoded.encode_to_vec(), span.encode_to_vec());
                    let head = wire.head;
                    prop_assert_eq!(head.trace_id.len(), span.trace_id.len());
                    prop_assert_eq!(head.span_id.len(), span.span_id.len());
                    prop_assert_eq!(head.parent_span_id.len(), span.parent_span_id.len());
                    if let Some(id) = head.trace_id.get() {
                        prop_assert_eq!(&id[..], &span.trace_id[..]);
                    }
                    if let Some(id) = head.parent_span_id.get() {
                        prop_assert_eq!(&id[..], &span.parent_span_id[..]);
                    }
                    prop_assert_eq!(head.start_time_unix_nano, span.start_time_unix_nano);
                    prop_assert_eq!(head.end_time_unix_nano, span.end_time_unix_nano);
                    prop_assert_eq!(
                        viewed(&wire.encoded).encode_to_vec(),
                        without_empty_values(span.clone()).encode_to_vec()
                    );
                }
            }
        }
        Ok(())
    }

    /// `span` with each empty attribute value (`Some(AnyValue { value: None })`) as `None`: views
    /// do not tell the two apart, and MLflow reads both as `None`.
    fn without_empty_values(mut span: Span) -> Span {
        fn clean(kvs: &mut [KeyValue]) {
            for kv in kvs {
                match kv.value.as_mut().map(|v| &mut v.value) {
                    Some(None) => kv.value = None,
                    Some(Some(value)) => clean_value(value),
                    None => {}
                }
            }
        }
        fn clean_value(value: &mut Value) {
            match value {
                Value::KvlistValue(list) => clean(&mut list.values),
                Value::ArrayValue(array) => array
                    .values
                    .iter_mut()
                    .filter_map(|v| v.value.as_mut())
                    .for_each(clean_value),
                _ => {}
            }
        }
        clean(&mut span.attributes);
        span.events
            .iter_mut()
            .for_each(|e| clean(&mut e.attributes));
        span.links.iter_mut().for_each(|l| clean(&mut l.attributes));
        span
    }

    /// The span as [`super::super::view`] reads it, rebuilt as prost's struct for comparison.
    fn viewed(encoded: &[u8]) -> Span {
        use crate::otlp::view::{KeyValues, SpanView, ValueRef};
        fn value(v: ValueRef<'_>) -> Option<AnyValue> {
            let value = match v {
                ValueRef::Empty => return None,
                ValueRef::Str(s) => Value::StringValue(Bytes::copy_from_slice(s)),
                ValueRef::Bool(b) => Value::BoolValue(b),
                ValueRef::Int(i) => Value::IntValue(i),
                ValueRef::Double(d) => Value::DoubleValue(d),
                ValueRef::Bytes(b) => Value::BytesValue(Bytes::copy_from_slice(b)),
                ValueRef::Array(values) => Value::ArrayValue(ArrayValue {
                    values: values.map(|v| value(v).unwrap_or_default()).collect(),
                }),
                ValueRef::KvList(kvs) => Value::KvlistValue(KeyValueList {
                    values: key_values(kvs),
                }),
            };
            Some(AnyValue { value: Some(value) })
        }
        fn key_values(kvs: KeyValues<'_>) -> Vec<KeyValue> {
            kvs.map(|(key, v)| KeyValue {
                key: Bytes::copy_from_slice(key),
                value: value(v),
            })
            .collect()
        }
        let v = SpanView::new(encoded);
        let decoded = Span::decode(encoded).unwrap();
        Span {
            trace_id: Bytes::copy_from_slice(v.trace_id),
            span_id: Bytes::copy_from_slice(v.span_id),
            parent_span_id: Bytes::copy_from_slice(v.parent_span_id),
            name: Bytes::copy_from_slice(v.name),
            start_time_unix_nano: v.start_time_unix_nano,
            end_time_unix_nano: v.end_time_unix_nano,
            attributes: key_values(v.attributes()),
            events: v
                .events()
                .zip(&decoded.events)
                .map(|(e, d)| Event {
                    time_unix_nano: e.time_unix_nano,
                    name: Bytes::copy_from_slice(e.name),
                    attributes: key_values(e.attributes()),
                    ..d.clone()
                })
                .collect(),
            links: v
                .links()
                .zip(&decoded.links)
                .map(|(l, d)| Link {
                    trace_id: Bytes::copy_from_slice(l.trace_id),
                    span_id: Bytes::copy_from_slice(l.span_id),
                    attributes: key_values(l.attributes()),
                    ..d.clone()
                })
                .collect(),
            status: decoded.status.as_ref().map(|_| Status {
                message: Bytes::copy_from_slice(v.status_message),
                code: v.status_code,
            }),
            // Fields views do not read.
            trace_state: decoded.trace_state.clone(),
            flags: decoded.flags,
            kind: decoded.kind,
            dropped_attributes_count: decoded.dropped_attributes_count,
            dropped_events_count: decoded.dropped_events_count,
            dropped_links_count: decoded.dropped_links_count,
        }
    }

    #[derive(Clone, Debug)]
    enum Mutation {
        Set(usize, u8),
        Insert(usize, u8),
        Remove(usize),
        Truncate(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
            any::<usize>().prop_map(Mutation::Remove),
            any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    fn mutate(mut buf: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
        for m in mutations {
            let len = buf.len().max(1);
            match *m {
                Mutation::Set(at, b) if !buf.is_empty() => buf[at % len] = b,
                Mutation::Insert(at, b) => buf.insert(at % (buf.len() + 1), b),
                Mutation::Remove(at) if !buf.is_empty() => drop(buf.remove(at % len)),
                Mutation::Truncate(at) => buf.truncate(at % len),
                _ => {}
            }
        }
        buf
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Damaged requests: whatever a byte flip, insertion, deletion or cut does, the reader
        /// accepts exactly what prost accepts, and reads it as prost decodes it.
        #[test]
        fn accepts_exactly_what_prost_decodes(mutations in prop::collection::vec(mutation(), 1..4)) {
            let buf = mutate(rich_request().encode_to_vec(), &mutations);
            reads_as_prost_decodes(&buf)?;
        }
    }

    #[test]
    fn reads_a_request_as_prost_decodes_it() {
        reads_as_prost_decodes(&rich_request().encode_to_vec()).unwrap();
        reads_as_prost_decodes(&testkit::request(1, 3, 4, 300).encode_to_vec()).unwrap();
        reads_as_prost_decodes(&[]).unwrap();
        let blocks = read_resource_spans(&Bytes::from(rich_request().encode_to_vec()), 1).unwrap();
        let spans: Vec<usize> = blocks
            .iter()
            .flat_map(|b| b.scopes.iter().map(|s| s.spans.len()))
            .collect();
        assert_eq!(spans, vec![2, 1, 2]);
    }

    /// The one-byte key fast path hands prost every key it does not read itself: tag 0, wire
    /// types 6 and 7, and field numbers from 16 (two-byte keys), at the start and the end.
    #[test]
    fn odd_keys_read_as_prost_decodes_them() {
        let span = rich_request().encode_to_vec();
        for key in [
            [0x00, 0x01],
            [0x06, 0x01],
            [0x0f, 0x01],
            [0x80, 0x01],
            [0x82, 0x01],
        ] {
            let mut buf = key.to_vec();
            buf.extend_from_slice(&span);
            reads_as_prost_decodes(&buf).unwrap();
            let mut buf = span.clone();
            buf.extend_from_slice(&key);
            buf.push(0);
            reads_as_prost_decodes(&buf).unwrap();
        }
    }

    fn field(tag: u32, wire_type: WireType, payload: &[u8], buf: &mut Vec<u8>) {
        encode_key(tag, wire_type, buf);
        if wire_type == WireType::LengthDelimited {
            encode_varint(payload.len() as u64, buf);
        }
        buf.extend_from_slice(payload);
    }

    fn request_of(resource_spans: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        field(1, WireType::LengthDelimited, resource_spans, &mut buf);
        buf
    }

    /// A request of one resource with one scope holding `spans`, encoded by hand.
    fn request_of_spans(spans: &[&[u8]]) -> Vec<u8> {
        let mut scope = Vec::new();
        for span in spans {
            field(2, WireType::LengthDelimited, span, &mut scope);
        }
        let mut rs = Vec::new();
        field(2, WireType::LengthDelimited, &scope, &mut rs);
        request_of(&rs)
    }

    #[test]
    fn fields_in_any_order_repeated_or_unknown_read_as_prost_merges_them() {
        let resource = |name: &str| testkit::resource_spans(name, vec![]).resource.unwrap();
        let mut span = rich_span(1).encode_to_vec();
        // A later trace_id replaces the first; an unknown group and an unknown varint are skipped.
        field(1, WireType::LengthDelimited, &[6; 16], &mut span);
        field(99, WireType::StartGroup, &[], &mut span);
        field(5, WireType::Varint, &[1], &mut span);
        field(99, WireType::EndGroup, &[], &mut span);
        field(77, WireType::Varint, &[0x80, 0x01], &mut span);
        let mut scope = Vec::new();
        field(2, WireType::LengthDelimited, &span, &mut scope);
        field(3, WireType::LengthDelimited, b"first", &mut scope);
        field(3, WireType::LengthDelimited, b"second", &mut scope);
        let mut rs = Vec::new();
        // Spans before their resource, and the resource twice: prost merges the two.
        field(2, WireType::LengthDelimited, &scope, &mut rs);
        field(
            1,
            WireType::LengthDelimited,
            &resource("a").encode_to_vec(),
            &mut rs,
        );
        field(
            1,
            WireType::LengthDelimited,
            &resource("b").encode_to_vec(),
            &mut rs,
        );
        let buf = request_of(&rs);
        reads_as_prost_decodes(&buf).unwrap();
        let blocks = read_resource_spans(&Bytes::from(buf), 1).unwrap();
        assert_eq!(blocks[0].resource.as_ref().unwrap().attributes.len(), 2);
        assert_eq!(&blocks[0].scopes[0].schema_url[..], b"second");
        assert_eq!(
            blocks[0].scopes[0].spans[0].head.trace_id.get(),
            Some([6; 16])
        );
    }

    /// Views read the usual `KeyValue` layout (key, then a value of one string) by a fast path;
    /// any other layout must still read as prost decodes it: the value first, the key twice or
    /// around the value, a string value followed by another variant or an unknown field, and
    /// attributes split by another span field. One span per layout, so that a span re-encoded
    /// for being non-canonical leaves the others as sent.
    #[test]
    fn key_values_in_unusual_layouts_read_as_prost_decodes_them() {
        let string = |s: &[u8]| {
            let mut v = Vec::new();
            field(1, WireType::LengthDelimited, s, &mut v);
            v
        };
        let mut then_int = string(b"first");
        field(3, WireType::Varint, &[7], &mut then_int);
        let mut then_unknown = string(b"kept");
        field(12, WireType::Varint, &[1], &mut then_unknown);
        let layouts: [&[(u32, &[u8])]; 6] = [
            &[(2, &string(b"v")), (1, b"value.first")],
            &[(1, b"key.before"), (2, &string(b"v")), (1, b"key.after")],
            &[(1, b"old.key"), (1, b"new.key"), (2, &string(b"v"))],
            &[(1, b"then.int"), (2, &then_int)],
            &[(1, b"unknown"), (2, &then_unknown)],
            &[(1, b"usual"), (2, &string(b"v"))],
        ];
        let spans: Vec<Vec<u8>> = layouts
            .iter()
            .map(|layout| {
                let mut kv = Vec::new();
                for (tag, payload) in layout.iter() {
                    field(*tag, WireType::LengthDelimited, payload, &mut kv);
                }
                let mut span = testkit::span([1; 16], [1; 8], &[], "layout").encode_to_vec();
                field(9, WireType::LengthDelimited, &kv, &mut span);
                field(5, WireType::LengthDelimited, b"renamed", &mut span);
                field(9, WireType::LengthDelimited, &kv, &mut span);
                span
            })
            .collect();
        let buf = request_of_spans(&spans.iter().map(Vec::as_slice).collect::<Vec<_>>());
        reads_as_prost_decodes(&buf).unwrap();
        let blocks = read_resource_spans(&Bytes::from(buf), 1).unwrap();
        let keys: Vec<Vec<u8>> = blocks[0].scopes[0]
            .spans
            .iter()
            .flat_map(|s| {
                crate::otlp::view::SpanView::new(&s.encoded)
                    .attributes()
                    .map(|(k, _)| k.to_vec())
                    .collect::<Vec<_>>()
            })
            .step_by(2)
            .collect();
        let expected: [&[u8]; 6] = [
            b"value.first",
            b"key.after",
            b"new.key",
            b"then.int",
            b"unknown",
            b"usual",
        ];
        assert_eq!(keys, expected);
    }

    /// The check's fast path takes an attribute of one scalar value in the usual layout as valid;
    /// every scalar kind, and each damaged at its end, is accepted or refused as prost does.
    #[test]
    fn scalar_attributes_are_checked_as_prost_decodes_them() {
        let ten_byte_varint = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let values: [&[u8]; 11] = [
            &[0x0a, 2, b'h', b'i'],
            &[0x10, 1],
            &[0x18, 0x96, 0x01],
            &[0x21, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f],
            &[0x3a, 1, 0xff],
            &[&[0x18][..], &ten_byte_varint].concat(),
            &[&[0x18][..], &ten_byte_varint[..9], &[0x80, 0x01]].concat(),
            &[0x21, 0, 0, 0, 0, 0, 0, 0xf0],
            &[0x0a, 5, b'h', b'i'],
            &[0x18],
            &[0x10, 1, 0x18],
        ];
        for value in values {
            let mut kv = Vec::new();
            field(1, WireType::LengthDelimited, b"key", &mut kv);
            field(2, WireType::LengthDelimited, value, &mut kv);
            let mut span = testkit::span([1; 16], [1; 8], &[], "scalar").encode_to_vec();
            field(9, WireType::LengthDelimited, &kv, &mut span);
            let buf = request_of_spans(&[&span]);
            reads_as_prost_decodes(&buf).unwrap();
        }
    }

    #[test]
    fn spans_repeating_a_singular_message_are_stored_as_prost_merges_them() {
        let array = |v: i64| AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(Value::IntValue(v)),
                }],
            })),
        };
        // An attribute whose value occurs twice, each an array: prost concatenates them.
        let mut attribute = Vec::new();
        field(1, WireType::LengthDelimited, b"list", &mut attribute);
        field(
            2,
            WireType::LengthDelimited,
            &array(1).encode_to_vec(),
            &mut attribute,
        );
        field(
            2,
            WireType::LengthDelimited,
            &array(2).encode_to_vec(),
            &mut attribute,
        );
        let mut span = testkit::span([1; 16], [1; 8], &[], "twice").encode_to_vec();
        field(9, WireType::LengthDelimited, &attribute, &mut span);
        // A second status: prost merges it into the first, keeping the first's code.
        let status = Status {
            message: Bytes::from_static(b"later"),
            code: 0,
        };
        field(
            15,
            WireType::LengthDelimited,
            &status.encode_to_vec(),
            &mut span,
        );
        let buf = request_of_spans(&[&span]);
        reads_as_prost_decodes(&buf).unwrap();
        let blocks = read_resource_spans(&Bytes::from(buf), 1).unwrap();
        let stored = &blocks[0].scopes[0].spans[0].encoded;
        assert_ne!(stored[..], span[..], "re-encoded");
        let decoded = Span::decode(stored.clone()).unwrap();
        assert_eq!(
            decoded.attributes[0].value,
            Some(AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![array(1), array(2)]
                        .into_iter()
                        .flat_map(|a| match a.value {
                            Some(Value::ArrayValue(a)) => a.values,
                            _ => unreachable!(),
                        })
                        .collect(),
                })),
            })
        );
    }

    #[test]
    fn wrong_wire_types_and_stray_end_groups_are_refused_with_where() {
        let mut span = rich_span(1).encode_to_vec();
        // `kind` (field 6, a varint) sent length-delimited.
        field(6, WireType::LengthDelimited, b"x", &mut span);
        let buf = request_of_spans(&[&rich_span(2).encode_to_vec(), &span]);
        reads_as_prost_decodes(&buf).unwrap();
        let err = read_resource_spans(&Bytes::from(buf), 1).unwrap_err();
        assert_eq!(err.at, "resource_spans[0].scope_spans[0].spans[1]");
        assert_eq!(
            err.reason,
            "Span field 6: wire type LengthDelimited, expected Varint"
        );

        let mut attribute = Vec::new();
        field(3, WireType::EndGroup, &[], &mut attribute);
        let mut span = Vec::new();
        field(9, WireType::LengthDelimited, &attribute, &mut span);
        let buf = request_of_spans(&[&span]);
        reads_as_prost_decodes(&buf).unwrap();
        let err = read_resource_spans(&Bytes::from(buf), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "resource_spans[0].scope_spans[0].spans[0]: KeyValue field 3: unexpected end-group tag"
        );
    }

    /// An attribute value nested `levels` arrays deep.
    fn nested(levels: usize) -> Span {
        let mut value = AnyValue {
            value: Some(Value::IntValue(1)),
        };
        for _ in 0..levels {
            value = AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![value],
                })),
            };
        }
        Span {
            attributes: vec![KeyValue {
                key: Bytes::from_static(b"deep"),
                value: Some(value),
            }],
            ..testkit::span([1; 16], [1; 8], &[], "deep")
        }
    }

    #[test]
    fn varints_of_every_length_read_as_prost_reads_them() {
        let mut cases: Vec<Vec<u8>> = [0, 1, 127, 128, 300, 16_383, 16_384, u64::MAX]
            .iter()
            .map(|&v| {
                let mut buf = Vec::new();
                encode_varint(v, &mut buf);
                buf
            })
            .collect();
        // Non-canonical encodings (zero padded) are valid protobuf, and truncated ones are not.
        cases.extend([
            vec![0x80, 0x00],
            vec![0xff, 0x00, 7],
            vec![0x80],
            vec![0xff, 0xff],
        ]);
        for case in cases {
            let mut reader = Reader::new(&case);
            let mut rest = case.as_slice();
            let expected = decode_varint(&mut rest).map_err(|_| ());
            assert_eq!(reader.varint().map_err(|_| ()), expected, "{case:02x?}");
            if expected.is_ok() {
                assert_eq!(reader.rest, rest, "{case:02x?} consumes the same bytes");
            }
        }
    }

    #[test]
    fn nesting_is_limited_where_prost_limits_it() {
        let mut refused = 0;
        for levels in 40..52 {
            let buf = ExportTraceServiceRequest {
                resource_spans: vec![testkit::resource_spans("deep", vec![nested(levels)])],
            }
            .encode_to_vec();
            reads_as_prost_decodes(&buf).unwrap();
            refused += usize::from(read_resource_spans(&Bytes::from(buf), 1).is_err());
        }
        assert!(
            (1..12).contains(&refused),
            "the limit falls inside the range"
        );
    }
}
