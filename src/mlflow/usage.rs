//! Reading a stored token usage dict (`mlflow.chat.tokenUsage` on spans, `mlflow.trace.tokenUsage`
//! in trace metadata) field by field, without building the whole value: the trace rollup and the
//! Parquet token columns read one per span.

use serde::Deserialize;

use super::attributes;

/// The counts of a usage dict; a count that is not an integer is `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// `input_tokens`.
    pub input: Option<i64>,
    /// `output_tokens`.
    pub output: Option<i64>,
    /// `total_tokens`.
    pub total: Option<i64>,
    /// `cache_read_input_tokens`.
    pub cache_read: Option<i64>,
    /// `cache_creation_input_tokens`.
    pub cache_creation: Option<i64>,
}

impl TokenCounts {
    /// The usage dict MLflow stores, `json.dumps` of the counts present, in MLflow's key order.
    pub fn dumps(&self) -> String {
        let mut out = String::with_capacity(96);
        self.dump_into(&mut out);
        out
    }

    /// Appends [`TokenCounts::dumps`] to `out`. Written directly: it is built for every LLM
    /// span, straight into the span's attribute text, and its keys need no escaping.
    pub fn dump_into(&self, out: &mut String) {
        let fields = [
            ("input_tokens", self.input),
            ("output_tokens", self.output),
            ("total_tokens", self.total),
            ("cache_read_input_tokens", self.cache_read),
            ("cache_creation_input_tokens", self.cache_creation),
        ];
        out.push('{');
        let mut first = true;
        for (key, n) in fields.into_iter().filter_map(|(k, n)| Some((k, n?))) {
            if !first {
                out.push_str(", ");
            }
            first = false;
            out.push('"');
            out.push_str(key);
            out.push_str("\": ");
            out.push_str(itoa::Buffer::new().format(n));
        }
        out.push('}');
    }
}

/// The fields read; others are skipped unparsed.
#[derive(Deserialize)]
struct Stored {
    input_tokens: Option<serde_json::Value>,
    output_tokens: Option<serde_json::Value>,
    total_tokens: Option<serde_json::Value>,
    cache_read_input_tokens: Option<serde_json::Value>,
    cache_creation_input_tokens: Option<serde_json::Value>,
}

/// The counts of a stored usage value, as `json.loads` reads it; `None` unless it is a dict.
pub fn read(stored: &str) -> Option<TokenCounts> {
    let s: Stored = attributes::dict_fields(stored)?;
    let count = |v: Option<serde_json::Value>| v?.as_i64();
    Some(TokenCounts {
        input: count(s.input_tokens),
        output: count(s.output_tokens),
        total: count(s.total_tokens),
        cache_read: count(s.cache_read_input_tokens),
        cache_creation: count(s.cache_creation_input_tokens),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_writes_present_counts_as_python_does() {
        let all = TokenCounts {
            input: Some(12),
            output: Some(-5),
            total: Some(7),
            cache_read: Some(3),
            cache_creation: Some(1),
        };
        let text = all.dumps();
        assert_eq!(
            text,
            r#"{"input_tokens": 12, "output_tokens": -5, "total_tokens": 7, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 1}"#
        );
        assert_eq!(read(&text), Some(all));
        let some = TokenCounts {
            total: Some(9),
            cache_read: Some(4),
            ..TokenCounts::default()
        };
        assert_eq!(
            some.dumps(),
            r#"{"total_tokens": 9, "cache_read_input_tokens": 4}"#
        );
        assert_eq!(TokenCounts::default().dumps(), "{}");
        // Appended after other text, as into a span's attribute buffer.
        let mut buffer = String::from("\"x\"");
        some.dump_into(&mut buffer);
        assert_eq!(
            buffer,
            r#""x"{"total_tokens": 9, "cache_read_input_tokens": 4}"#
        );
    }

    #[test]
    fn counts_read_like_the_decoded_dict() {
        let all = r#"{"input_tokens": 12, "output_tokens": 5, "total_tokens": 17,
            "cache_read_input_tokens": 3, "cache_creation_input_tokens": 1, "other": [1, {"a": 2}]}"#;
        assert_eq!(
            read(all),
            Some(TokenCounts {
                input: Some(12),
                output: Some(5),
                total: Some(17),
                cache_read: Some(3),
                cache_creation: Some(1),
            })
        );
        // Not integers: not counts, but still a usage dict.
        let odd = r#"{"input_tokens": 1.5, "output_tokens": "5", "total_tokens": null}"#;
        assert_eq!(read(odd), Some(TokenCounts::default()));
        assert_eq!(read("{}"), Some(TokenCounts::default()));
        // A repeated key: the last one wins, as in Python.
        let repeated = r#"{"input_tokens": 1, "input_tokens": 2}"#;
        assert_eq!(read(repeated).unwrap().input, Some(2));
        for not_a_dict in ["[1, 2, 3, 4, 5]", "7", r#""{}""#, "{not json", ""] {
            assert_eq!(read(not_a_dict), None, "{not_a_dict}");
        }
    }
}
