//! OTLP attribute values as MLflow stores them (`Span.from_otel_proto` followed by
//! `sanitize_attributes`; `shared/reference/mlflow-trace-model.md` §0.3 and §5.2).
//!
//! Every span attribute is kept as a JSON-encoded string: `stored = json.dumps(decode(value))`,
//! except that a string whose text is itself JSON for a string, object or array is stored as that
//! text (one layer of encoding stripped). So `stringValue "7"` is stored as `"\"7\""` while
//! `intValue 7` is stored as `"7"`, and `stringValue "{\"a\": 1}"` is stored unchanged. Readers
//! reverse it with `json.loads`, falling back to the raw text.

use std::borrow::Cow;

use base64::Engine as _;
use serde::de::DeserializeOwned;

use super::json::{PyValue, needs_escape, write_str};
use super::json_check::loads_as_container_or_string;
use crate::otlp::text;
use crate::otlp::view::ValueRef;

/// Decodes an OTLP value the way MLflow's `_decode_otel_proto_anyvalue` does: arrays become lists,
/// kvlists dicts, bytes base64 text, an empty value `None`.
pub fn decode(value: ValueRef<'_>) -> PyValue {
    match value {
        ValueRef::Empty => PyValue::Null,
        ValueRef::Str(s) => PyValue::Str(text(s).into_owned()),
        ValueRef::Bool(b) => PyValue::Bool(b),
        ValueRef::Int(i) => PyValue::Int(i),
        ValueRef::Double(d) => PyValue::Float(d),
        ValueRef::Bytes(b) => PyValue::Str(base64::engine::general_purpose::STANDARD.encode(b)),
        ValueRef::Array(values) => PyValue::List(values.map(decode).collect()),
        ValueRef::KvList(kvs) => {
            PyValue::dict(kvs.map(|(key, value)| (text(key).into_owned(), decode(value))))
        }
    }
}

/// The stored (JSON-encoded) form of an attribute value.
pub fn encode(value: ValueRef<'_>) -> String {
    let mut out = String::new();
    encode_into(value, &mut out);
    out
}

/// Appends the stored form of an attribute value to `out`: a span's attributes are encoded
/// straight into the buffer that holds them.
pub fn encode_into(value: ValueRef<'_>, out: &mut String) {
    match value {
        ValueRef::Str(s) => encode_str_into(&text(s), out),
        ValueRef::Int(i) => out.push_str(itoa::Buffer::new().format(i)),
        ValueRef::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        ValueRef::Empty => out.push_str("null"),
        value => out.push_str(&decode(value).dumps()),
    }
}

/// The stored form of a string attribute: the text itself when it is JSON for a string, object
/// or array, else its JSON encoding.
pub fn encode_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    encode_str_into(s, &mut out);
    out
}

fn encode_str_into(s: &str, out: &mut String) {
    if loads_as_container_or_string(s) {
        out.push_str(s);
    } else {
        write_str(s, out);
    }
}

/// Reads a stored value back as MLflow's readers do: `json.loads`, else the raw text.
///
/// Most stored values are plain JSON strings or integers; those are read without a parser.
pub fn read(stored: &str) -> PyValue {
    if let Some(s) = plain_str(stored) {
        return PyValue::Str(s.to_string());
    }
    if let Some(i) = plain_int(stored) {
        return PyValue::Int(i);
    }
    parse(stored)
}

fn parse(stored: &str) -> PyValue {
    serde_json::from_str::<serde_json::Value>(stored)
        .map(|v| PyValue::from_json(&v))
        .unwrap_or_else(|_| PyValue::Str(stored.to_string()))
}

/// A stored value's text when [`read`] gives a string: borrowed when it is plain (no escapes).
pub fn read_str(stored: &str) -> Option<Cow<'_, str>> {
    if let Some(text) = plain_str(stored) {
        return Some(Cow::Borrowed(text));
    }
    match read(stored) {
        PyValue::Str(s) => Some(Cow::Owned(s)),
        _ => None,
    }
}

/// The fields of `T` from a stored dict, as `json.loads` reads it, the rest of the value skipped
/// unparsed; `None` unless the value is a dict.
pub fn dict_fields<T: DeserializeOwned>(stored: &str) -> Option<T> {
    // A struct deserializes from a JSON array too: only objects may take the direct path.
    if !stored.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(stored).ok().or_else(|| {
        // A key repeated: serde refuses it, while Python (and a parsed `Value`) keeps the last.
        match serde_json::from_str::<serde_json::Value>(stored).ok()? {
            dict @ serde_json::Value::Object(_) => serde_json::from_value(dict).ok(),
            _ => None,
        }
    })
}

/// The text of a stored value that is a JSON string without escapes, borrowed: what [`read`]
/// returns as a `PyValue::Str`.
pub fn plain_str(stored: &str) -> Option<&str> {
    let inner = stored.strip_prefix('"')?.strip_suffix('"')?;
    // Control characters make the JSON invalid, and then `read` returns the raw text.
    (!inner.bytes().any(needs_escape)).then_some(inner)
}

/// A stored JSON integer (`0|-?[1-9][0-9]*`) that fits an `i64`. `-0` is left to the parser,
/// which reads it as a float.
fn plain_int(stored: &str) -> Option<i64> {
    let digits = stored.strip_prefix('-').unwrap_or(stored);
    let json = match digits.as_bytes() {
        [b'0'] => digits.len() == stored.len(),
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    json.then(|| stored.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{AnyValue, ArrayValue, KeyValue, KeyValueList, Value};
    use bytes::Bytes;

    fn any(v: Value) -> AnyValue {
        AnyValue { value: Some(v) }
    }

    fn s(text: &str) -> Value {
        Value::StringValue(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn stored_forms_match_mlflow() {
        let cases: Vec<(Option<AnyValue>, &str)> = vec![
            (Some(any(s("CHAT_MODEL"))), r#""CHAT_MODEL""#),
            (Some(any(s("\"CHAT_MODEL\""))), r#""CHAT_MODEL""#),
            (Some(any(s("7"))), r#""7""#),
            (Some(any(Value::IntValue(7))), "7"),
            (Some(any(Value::DoubleValue(2.5))), "2.5"),
            (Some(any(Value::BoolValue(true))), "true"),
            (Some(any(s("true"))), r#""true""#),
            (Some(any(s(r#"{"a":1}"#))), r#"{"a":1}"#),
            (Some(any(s(r#"[1, 2]"#))), "[1, 2]"),
            (Some(any(s("{not json"))), r#""{not json""#),
            (Some(any(s("héllo ✓"))), r#""héllo ✓""#),
            (
                Some(any(Value::BytesValue(Bytes::from_static(&[0, 255])))),
                r#""AP8=""#,
            ),
            (Some(AnyValue { value: None }), "null"),
            (None, "null"),
            (
                Some(any(Value::ArrayValue(ArrayValue {
                    values: vec![any(s("a")), any(Value::IntValue(1))],
                }))),
                r#"["a", 1]"#,
            ),
            (
                Some(any(Value::KvlistValue(KeyValueList {
                    values: vec![KeyValue {
                        key: Bytes::from_static(b"role"),
                        value: Some(any(s("user"))),
                    }],
                }))),
                r#"{"role": "user"}"#,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(encode(ValueRef::of(value.as_ref())), expected, "{value:?}");
        }
    }

    #[test]
    fn reading_reverses_encoding_or_falls_back_to_raw() {
        assert_eq!(read(r#""x""#), PyValue::Str("x".into()));
        assert_eq!(read("7"), PyValue::Int(7));
        assert_eq!(read("not json"), PyValue::Str("not json".into()));
        // Edges of the fast paths, read as the parser reads them.
        for stored in [
            "-0",
            "0",
            "-7",
            "007",
            "+7",
            "9223372036854775808",
            "\"a\\\"b\"",
            "\"\u{1}\"",
        ] {
            assert_eq!(read(stored), parse(stored), "{stored}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::otlp::{AnyValue, ArrayValue, KeyValue, KeyValueList, Value};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn any_value() -> impl Strategy<Value = AnyValue> {
        let leaf = prop_oneof![
            ".{0,12}".prop_map(|s: String| Value::StringValue(Bytes::from(s))),
            // Strings that are themselves JSON: the one-layer unwrap rule.
            prop_oneof![
                Just("{\"a\": 1}"),
                Just("[1, \"x\"]"),
                Just("\"q\""),
                Just("7"),
                Just("true")
            ]
            .prop_map(|s| Value::StringValue(Bytes::from_static(s.as_bytes()))),
            any::<bool>().prop_map(Value::BoolValue),
            any::<i64>().prop_map(Value::IntValue),
            // Finite doubles: Python's json.loads reads NaN/Infinity literals, serde_json does not.
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::DoubleValue),
            proptest::collection::vec(any::<u8>(), 0..8)
                .prop_map(|b| Value::BytesValue(Bytes::from(b))),
        ]
        .prop_map(|v| AnyValue { value: Some(v) });
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|values| Value::ArrayValue(ArrayValue { values })),
                proptest::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|kvs| {
                    Value::KvlistValue(KeyValueList {
                        values: kvs
                            .into_iter()
                            .map(|(k, v)| KeyValue {
                                key: Bytes::from(k),
                                value: Some(v),
                            })
                            .collect(),
                    })
                }),
            ]
            .prop_map(|v| AnyValue { value: Some(v) })
        })
    }

    /// Stored texts near the fast paths' edges: quotes, escapes, control characters, signs,
    /// leading zeros, numbers past `i64`, and JSON around them.
    fn stored_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\"[a-z\\\\\"\\x00-\\x1f ]{0,6}\"?",
            "-?[0-9]{0,21}(\\.[0-9]?)?",
            "[ \\[{\"]?[-0-9a-z\\\\\", :]{0,8}[\\]}\"]?",
        ]
    }

    proptest! {
        #[test]
        fn fast_paths_read_as_the_parser_does(stored in stored_text()) {
            prop_assert_eq!(read(&stored), parse(&stored));
        }

        /// A string that is not JSON for a string or container is stored as its JSON encoding,
        /// with escapes or without.
        #[test]
        fn plain_strings_store_as_their_json_encoding(
            s in "[a-zé✓ \\\"\\\\\\x00-\\x1f]{0,30}",
        ) {
            prop_assume!(!loads_as_container_or_string(&s));
            prop_assert_eq!(encode_str(&s), crate::mlflow::json::dumps_str(&s));
        }

        /// `json.loads(stored)` (falling back to the raw text) gives back the decoded value, except
        /// that a string holding JSON for a string, object or array reads back as that JSON, as it
        /// does in MLflow.
        #[test]
        fn stored_values_read_back_as_mlflow_reads_them(v in any_value()) {
            let stored = encode(ValueRef::of(Some(&v)));
            let expected = match &v.value {
                Some(Value::StringValue(s)) if loads_as_container_or_string(&text(s)) => read(&text(s)),
                _ => decode(ValueRef::of(Some(&v))),
            };
            prop_assert_eq!(read(&stored), expected);
        }
    }
}
