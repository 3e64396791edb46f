//! Borrowed views of encoded OTLP spans: fields read straight from the bytes.
//!
//! MLflow normalization reads each field of a span once. Decoding the span into the prost
//! structs first allocated every attribute vector and counted a reference to the buffer for every
//! string field, only to drop it all after the conversion. A view reads the same fields from the
//! span's encoding in place.
//!
//! Views read bytes that [`super::wire`] checked, which also made them canonical: no singular
//! message field (a span's `status`, an attribute's `value`, an `AnyValue`'s variant) occurs
//! twice, so taking the last occurrence of every field, as views do, reads what prost decodes.
//! On bytes that were not checked, a view stops at the first malformed field rather than fail.

use prost::encoding::WireType;

use super::wire::{Fault, RECURSION_LIMIT, Reader, delimited_key, only_string, usual_key_value};

use super::{AnyValue, KeyValue};

/// One field's value as the wire carries it.
#[derive(Clone, Copy, Debug)]
pub enum Field<'a> {
    /// A varint.
    Varint(u64),
    /// A fixed 64-bit value.
    Fixed64(u64),
    /// A length-delimited payload.
    Bytes(&'a [u8]),
    /// Any other wire type (skipped).
    Other,
}

/// The fields of one message, in order.
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    reader: Reader<'a>,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            reader: Reader::new(buf),
        }
    }

    fn read(&mut self) -> Result<Option<(u32, Field<'a>)>, Fault> {
        let Some((tag, wire_type)) = self.reader.key()? else {
            return Ok(None);
        };
        let field = match wire_type {
            WireType::Varint => Field::Varint(self.reader.varint()?),
            WireType::SixtyFourBit => Field::Fixed64(self.reader.fixed64()?),
            WireType::LengthDelimited => Field::Bytes(self.reader.delimited()?),
            _ => {
                self.reader.skip(wire_type, tag, RECURSION_LIMIT)?;
                Field::Other
            }
        };
        Ok(Some((tag, field)))
    }

    /// The payloads of the length-delimited occurrences of field `tag`.
    fn messages(self, tag: u32) -> impl Iterator<Item = &'a [u8]> {
        self.filter_map(move |(t, f)| match f {
            Field::Bytes(b) if t == tag => Some(b),
            _ => None,
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u32, Field<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let field = self.read().ok().flatten();
        if field.is_none() {
            // Malformed (never, for checked bytes) or at the end: stay at the end.
            self.reader = Reader::new(&[]);
        }
        field
    }
}

/// A `Span`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanView<'a> {
    /// `trace_id`.
    pub trace_id: &'a [u8],
    /// `span_id`.
    pub span_id: &'a [u8],
    /// `parent_span_id`.
    pub parent_span_id: &'a [u8],
    /// `name`.
    pub name: &'a [u8],
    /// `start_time_unix_nano`.
    pub start_time_unix_nano: u64,
    /// `end_time_unix_nano`.
    pub end_time_unix_nano: u64,
    /// `status.code`.
    pub status_code: i32,
    /// `status.message`.
    pub status_message: &'a [u8],
    /// Where the attributes, events and links lie: from the first occurrence of each to the end
    /// of its last, so that reading them walks no other field.
    regions: [&'a [u8]; 3],
}

/// The field numbers of `attributes`, `events` and `links`, in [`SpanView`]'s `regions` order.
const REPEATED: [u32; 3] = [9, 11, 13];

impl<'a> SpanView<'a> {
    /// Reads the scalar fields of the span encoded in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        let mut span = Self::default();
        // (start, end) offsets of each region in `buf`.
        let mut bounds = [(usize::MAX, 0); 3];
        let mut fields = Fields::new(buf);
        loop {
            let start = fields.reader.position();
            let Some((tag, field)) = fields.next() else {
                break;
            };
            if let Some(i) = REPEATED.iter().position(|&t| t == tag) {
                let end = fields.reader.position();
                bounds[i] = (bounds[i].0.min(start), end);
                continue;
            }
            match (tag, field) {
                (1, Field::Bytes(b)) => span.trace_id = b,
                (2, Field::Bytes(b)) => span.span_id = b,
                (4, Field::Bytes(b)) => span.parent_span_id = b,
                (5, Field::Bytes(b)) => span.name = b,
                (7, Field::Fixed64(v)) => span.start_time_unix_nano = v,
                (8, Field::Fixed64(v)) => span.end_time_unix_nano = v,
                (15, Field::Bytes(status)) => {
                    for (tag, field) in Fields::new(status) {
                        match (tag, field) {
                            (2, Field::Bytes(b)) => span.status_message = b,
                            (3, Field::Varint(v)) => span.status_code = v as i32,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        for (region, (start, end)) in span.regions.iter_mut().zip(bounds) {
            *region = buf.get(start..end).unwrap_or_default();
        }
        span
    }

    /// `attributes`.
    pub fn attributes(&self) -> KeyValues<'a> {
        KeyValues::Encoded(Fields::new(self.regions[0]), 9)
    }

    /// The encoded size of the attributes, about the size of their keys and stored values.
    pub fn attributes_len(&self) -> usize {
        self.regions[0].len()
    }

    /// `events`.
    pub fn events(&self) -> impl Iterator<Item = EventView<'a>> + use<'a> {
        Fields::new(self.regions[1])
            .messages(11)
            .map(EventView::new)
    }

    /// `links`.
    pub fn links(&self) -> impl Iterator<Item = LinkView<'a>> + use<'a> {
        Fields::new(self.regions[2]).messages(13).map(LinkView::new)
    }
}

/// A `Span.Event`.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventView<'a> {
    /// `time_unix_nano`.
    pub time_unix_nano: u64,
    /// `name`.
    pub name: &'a [u8],
    buf: &'a [u8],
}

impl<'a> EventView<'a> {
    fn new(buf: &'a [u8]) -> Self {
        let mut event = Self {
            buf,
            ..Self::default()
        };
        for (tag, field) in Fields::new(buf) {
            match (tag, field) {
                (1, Field::Fixed64(v)) => event.time_unix_nano = v,
                (2, Field::Bytes(b)) => event.name = b,
                _ => {}
            }
        }
        event
    }

    /// `attributes`.
    pub fn attributes(&self) -> KeyValues<'a> {
        KeyValues::Encoded(Fields::new(self.buf), 3)
    }
}

/// A `Span.Link`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkView<'a> {
    /// `trace_id`.
    pub trace_id: &'a [u8],
    /// `span_id`.
    pub span_id: &'a [u8],
    buf: &'a [u8],
}

impl<'a> LinkView<'a> {
    fn new(buf: &'a [u8]) -> Self {
        let mut link = Self {
            buf,
            ..Self::default()
        };
        for (tag, field) in Fields::new(buf) {
            match (tag, field) {
                (1, Field::Bytes(b)) => link.trace_id = b,
                (2, Field::Bytes(b)) => link.span_id = b,
                _ => {}
            }
        }
        link
    }

    /// `attributes`.
    pub fn attributes(&self) -> KeyValues<'a> {
        KeyValues::Encoded(Fields::new(self.buf), 4)
    }
}

/// An `AnyValue`, decoded or encoded. `Empty` when the value or its variant is absent.
#[derive(Clone, Debug)]
pub enum ValueRef<'a> {
    /// No value.
    Empty,
    /// `string_value`.
    Str(&'a [u8]),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bytes_value`.
    Bytes(&'a [u8]),
    /// `array_value`.
    Array(Values<'a>),
    /// `kvlist_value`.
    KvList(KeyValues<'a>),
}

impl<'a> ValueRef<'a> {
    /// A decoded value.
    pub fn of(value: Option<&'a AnyValue>) -> Self {
        use super::Value;
        match value.and_then(|v| v.value.as_ref()) {
            None => Self::Empty,
            Some(Value::StringValue(s)) => Self::Str(s),
            Some(Value::BoolValue(b)) => Self::Bool(*b),
            Some(Value::IntValue(i)) => Self::Int(*i),
            Some(Value::DoubleValue(d)) => Self::Double(*d),
            Some(Value::BytesValue(b)) => Self::Bytes(b),
            Some(Value::ArrayValue(a)) => Self::Array(Values::Decoded(a.values.iter())),
            Some(Value::KvlistValue(l)) => Self::KvList(KeyValues::Decoded(l.values.iter())),
        }
    }

    /// An encoded `AnyValue`.
    fn parse(buf: &'a [u8]) -> Self {
        // Most values are one string field: read it without the general loop.
        if let Some(s) = only_string(buf) {
            return Self::Str(s);
        }
        let mut value = Self::Empty;
        for (tag, field) in Fields::new(buf) {
            value = match (tag, field) {
                (1, Field::Bytes(b)) => Self::Str(b),
                (2, Field::Varint(v)) => Self::Bool(v != 0),
                (3, Field::Varint(v)) => Self::Int(v as i64),
                (4, Field::Fixed64(v)) => Self::Double(f64::from_bits(v)),
                (5, Field::Bytes(b)) => Self::Array(Values::Encoded(Fields::new(b))),
                (6, Field::Bytes(b)) => Self::KvList(KeyValues::Encoded(Fields::new(b), 1)),
                (7, Field::Bytes(b)) => Self::Bytes(b),
                _ => continue,
            };
        }
        value
    }
}

/// The values of an `ArrayValue`.
#[derive(Clone, Debug)]
pub enum Values<'a> {
    /// Decoded.
    Decoded(std::slice::Iter<'a, AnyValue>),
    /// Encoded: the `ArrayValue`'s fields.
    Encoded(Fields<'a>),
}

impl<'a> Iterator for Values<'a> {
    type Item = ValueRef<'a>;

    fn next(&mut self) -> Option<ValueRef<'a>> {
        match self {
            Self::Decoded(values) => values.next().map(|v| ValueRef::of(Some(v))),
            Self::Encoded(fields) => fields.find_map(|(tag, field)| match (tag, field) {
                (1, Field::Bytes(b)) => Some(ValueRef::parse(b)),
                _ => None,
            }),
        }
    }
}

/// Key-value pairs (attributes or a `KeyValueList`), each as its key's bytes and its value.
#[derive(Clone, Debug)]
pub enum KeyValues<'a> {
    /// Decoded.
    Decoded(std::slice::Iter<'a, KeyValue>),
    /// Encoded: the fields of the message holding them, and the pairs' field number.
    Encoded(Fields<'a>, u32),
}

impl<'a> Iterator for KeyValues<'a> {
    type Item = (&'a [u8], ValueRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Decoded(kvs) => kvs
                .next()
                .map(|kv| (&kv.key[..], ValueRef::of(kv.value.as_ref()))),
            Self::Encoded(fields, number) => {
                let number = *number;
                let kv = match fields.reader.delimited_if(delimited_key(number)) {
                    Some(kv) => kv,
                    None => fields.find_map(|(tag, field)| match field {
                        Field::Bytes(b) if tag == number => Some(b),
                        _ => None,
                    })?,
                };
                Some(key_value(kv))
            }
        }
    }
}

/// An encoded `KeyValue`'s key and value.
fn key_value(kv: &[u8]) -> (&[u8], ValueRef<'_>) {
    // The usual layout is read without the general loop (which also reads repeated
    // occurrences, keeping the last as prost does).
    if let Some((key, value)) = usual_key_value(kv) {
        return (key, ValueRef::parse(value));
    }
    let (mut key, mut value) = (&[][..], ValueRef::Empty);
    for (tag, field) in Fields::new(kv) {
        match (tag, field) {
            (1, Field::Bytes(b)) => key = b,
            (2, Field::Bytes(b)) => value = ValueRef::parse(b),
            _ => {}
        }
    }
    (key, value)
}
