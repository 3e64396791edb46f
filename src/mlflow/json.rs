//! JSON text exactly as Python's `json.dumps` writes it, the way MLflow encodes attribute values,
//! token usage and cost: `", "` and `": "` separators, Python's float repr (`1.5e-06`, `2.0`,
//! `1e+16`), `NaN`/`Infinity` literals, and non-ASCII characters unescaped (`ensure_ascii=False`,
//! as `dump_span_attribute_value` sets it).
//!
//! Matching the bytes matters: MLflow stores these strings verbatim, and readers compare them.

use std::fmt::Write;

/// A JSON value as MLflow builds it from OTLP attributes and its own aggregates.
#[derive(Clone, Debug, PartialEq)]
pub enum PyValue {
    /// `None`.
    Null,
    /// `True` / `False`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<PyValue>),
    /// A dict, in insertion order; a repeated key keeps its first position and its last value.
    Dict(Vec<(String, PyValue)>),
}

impl PyValue {
    /// Builds a dict, folding repeated keys as a Python dict literal would.
    pub fn dict(entries: impl IntoIterator<Item = (String, PyValue)>) -> Self {
        let mut out: Vec<(String, PyValue)> = Vec::new();
        for (k, v) in entries {
            match out.iter_mut().find(|(existing, _)| *existing == k) {
                Some(slot) => slot.1 = v,
                None => out.push((k, v)),
            }
        }
        PyValue::Dict(out)
    }

    /// `json.dumps(self, ensure_ascii=False)`.
    pub fn dumps(&self) -> String {
        // Room for a token usage dict, the commonest value, so that it is written without growing.
        let mut out = String::with_capacity(96);
        self.write(&mut out);
        out
    }

    /// `json.dumps(self)` with Python's default `ensure_ascii=True`: every non-ASCII character
    /// as `\uXXXX` (UTF-16 surrogate pairs beyond the BMP).
    pub fn dumps_ascii(&self) -> String {
        let mut out = String::new();
        for c in self.dumps().chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            PyValue::Null => out.push_str("null"),
            PyValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            PyValue::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
            PyValue::Float(f) => out.push_str(&float_repr(*f)),
            PyValue::Str(s) => write_str(s, out),
            PyValue::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            PyValue::Dict(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(k, out);
                    out.push_str(": ");
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// The value as `serde_json` holds it (non-finite floats become strings, which JSON cannot
    /// carry as numbers).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            PyValue::Null => J::Null,
            PyValue::Bool(b) => J::Bool(*b),
            PyValue::Int(i) => J::from(*i),
            PyValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(float_repr(*f))),
            PyValue::Str(s) => J::String(s.clone()),
            PyValue::List(items) => J::Array(items.iter().map(PyValue::to_json).collect()),
            PyValue::Dict(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Reads parsed JSON back into a `PyValue` (integers that fit stay integers).
    pub fn from_json(v: &serde_json::Value) -> Self {
        use serde_json::Value as J;
        match v {
            J::Null => PyValue::Null,
            J::Bool(b) => PyValue::Bool(*b),
            J::Number(n) => n
                .as_i64()
                .map(PyValue::Int)
                .unwrap_or_else(|| PyValue::Float(n.as_f64().unwrap_or(f64::NAN))),
            J::String(s) => PyValue::Str(s.clone()),
            J::Array(items) => PyValue::List(items.iter().map(PyValue::from_json).collect()),
            J::Object(map) => PyValue::Dict(
                map.iter()
                    .map(|(k, v)| (k.clone(), PyValue::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Writes `s` as a JSON string literal with Python's escapes (`\"`, `\\`, `\n`, `\r`, `\t`, `\b`,
/// `\f`, other control characters as `\u00xx`) and everything else verbatim. These are also
/// serde_json's escapes, byte for byte.
pub fn write_str<W: Write>(s: &str, out: &mut W) {
    // Writing to a `String` cannot fail.
    let _ = out.write_char('"');
    split_escapes(s, |run, escaped| {
        let _ = out.write_str(run);
        if let Some(b) = escaped {
            let _ = out.write_str(escape(b));
        }
    });
    let _ = out.write_char('"');
}

/// Whether JSON must escape `b` inside a string.
pub const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Calls `f` with each run of `s` that JSON keeps verbatim and the byte after it that must be
/// escaped, then with the rest and `None`.
///
/// Blocks of 16 bytes are checked at once (the fold compiles to vector compares): the long
/// values are chat messages, prose between a few quotes, and a byte-at-a-time scan (serde_json's)
/// was a tenth of the Kafka pipeline's CPU.
fn split_escapes(s: &str, mut f: impl FnMut(&str, Option<u8>)) {
    const BLOCK: usize = 16;
    let bytes = s.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        let clean = |block: &[u8]| !block.iter().fold(false, |any, &b| any | needs_escape(b));
        if bytes.get(i..i + BLOCK).is_some_and(clean) {
            i += BLOCK;
            continue;
        }
        let end = (i + BLOCK).min(bytes.len());
        for (offset, &b) in bytes[i..end].iter().enumerate() {
            if needs_escape(b) {
                // Escaped bytes are ASCII, so this is a character boundary.
                f(&s[start..i + offset], Some(b));
                start = i + offset + 1;
            }
        }
        i = end;
    }
    f(&s[start..], None);
}

/// The escape sequence of a byte that [`needs_escape`].
fn escape(b: u8) -> &'static str {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
        "\\u0008", "\\u0009", "\\u000a", "\\u000b", "\\u000c", "\\u000d", "\\u000e", "\\u000f",
        "\\u0010", "\\u0011", "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017",
        "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
    ];
    match b {
        b'"' => "\\\"",
        b'\\' => "\\\\",
        b'\n' => "\\n",
        b'\r' => "\\r",
        b'\t' => "\\t",
        0x08 => "\\b",
        0x0c => "\\f",
        _ => CONTROL[usize::from(b & 0x1f)],
    }
}

/// `json.dumps(s)` for a string.
pub fn dumps_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(s, &mut out);
    out
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation when the
/// decimal exponent is in [-4, 16), else scientific with a signed two-digit exponent.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-6".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` writes a decimal exponent");
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let point = exp as usize + 1;
            if digits.len() > point {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            } else {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', point - digits.len()));
                out.push_str(".0");
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        for (f, expected) in [
            (1.5e-06, "1.5e-06"),
            (7.349999999999999e-06, "7.349999999999999e-06"),
            (2.7e-06, "2.7e-06"),
            (2.0, "2.0"),
            (2.5, "2.5"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456789.0, "123456789.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (-3.25, "-3.25"),
            (1e300, "1e+300"),
            (-0.0, "-0.0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(float_repr(f), expected, "{f:e}");
        }
    }

    #[test]
    fn dumps_uses_python_separators_and_escapes() {
        let v = PyValue::dict([
            ("a".to_string(), PyValue::Int(2)),
            (
                "b".into(),
                PyValue::List(vec![
                    PyValue::Bool(true),
                    PyValue::Null,
                    PyValue::Float(0.5),
                ]),
            ),
            ("ünï".into(), PyValue::Str("line\n\t\"q\" \u{1} ✓".into())),
        ]);
        assert_eq!(
            v.dumps(),
            r#"{"a": 2, "b": [true, null, 0.5], "ünï": "line\n\t\"q\" \u0001 ✓"}"#
        );
    }

    #[test]
    fn ascii_mode_escapes_like_python_defaults() {
        let v = PyValue::List(vec![PyValue::Str("é ✓ 🚀".into())]);
        assert_eq!(v.dumps_ascii(), r#"["\u00e9 \u2713 \ud83d\ude80"]"#);
    }

    #[test]
    fn repeated_dict_keys_keep_first_position_and_last_value() {
        let v = PyValue::dict([
            ("k".to_string(), PyValue::Int(1)),
            ("j".into(), PyValue::Int(2)),
            ("k".into(), PyValue::Int(3)),
        ]);
        assert_eq!(v.dumps(), r#"{"k": 3, "j": 2}"#);
    }

    proptest::proptest! {
        #[test]
        fn strings_escape_as_serde_json_escapes_them(s in "[a-z \"\\\\\\x00-\\x1f\\x7fé✓🚀]{0,80}") {
            let expected = serde_json::to_string(&s).unwrap();
            let mut text = String::new();
            write_str(&s, &mut text);
            proptest::prop_assert_eq!(&text, &expected);
        }
    }
}
