//! Whether text parses as Python's `json.loads` parses it, checked in one pass that builds
//! nothing.
//!
//! MLflow keeps a string attribute as it is when `json.loads` gives a string, dict or list, and
//! encodes it again otherwise ([`super::attributes::encode_str`]), so the check must draw the line
//! where Python draws it, not where RFC 8259 does: Python reads `NaN`, `Infinity` and `-Infinity`,
//! escapes of lone surrogates (`"\ud800"`), and nesting up to its recursion limit, where
//! serde_json stops at 128 levels. Like Python's default (`strict=True`), it refuses control
//! characters inside strings.

/// Deeper nesting is refused. Python's decoder recurses per level and raises `RecursionError`
/// near its limit of 1,000 frames less the caller's stack, which MLflow does not catch; 512 is
/// well inside what an MLflow server reaches.
const MAX_DEPTH: usize = 512;

/// Whether `json.loads(s)` returns a `str`, `dict` or `list` (rather than raising or returning a
/// number, bool or `None`).
pub fn loads_as_container_or_string(s: &str) -> bool {
    let mut scan = Scanner {
        text: s.as_bytes(),
        at: 0,
    };
    scan.whitespace();
    matches!(scan.peek(), Some(b'"' | b'{' | b'[')) && scan.value().is_some() && {
        scan.whitespace();
        scan.at == scan.text.len()
    }
}

/// Open containers, one bit each (set for an object), innermost last.
struct Nesting {
    bits: [u64; MAX_DEPTH / 64],
    depth: usize,
}

impl Nesting {
    fn push(&mut self, object: bool) -> Option<()> {
        if self.depth == MAX_DEPTH {
            return None;
        }
        let (word, bit) = (self.depth / 64, self.depth % 64);
        self.bits[word] = (self.bits[word] & !(1 << bit)) | (u64::from(object) << bit);
        self.depth += 1;
        Some(())
    }

    /// Whether the innermost open container is an object; `None` at the top level.
    fn innermost_is_object(&self) -> Option<bool> {
        let top = self.depth.checked_sub(1)?;
        Some((self.bits[top / 64] >> (top % 64)) & 1 == 1)
    }
}

struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Consumes `byte` (after whitespace), or fails.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.whitespace();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.text[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// One whole value, nested containers included, without recursion.
    fn value(&mut self) -> Option<()> {
        let mut nesting = Nesting {
            bits: [0; MAX_DEPTH / 64],
            depth: 0,
        };
        loop {
            self.whitespace();
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.at += 1;
                    let object = open == b'{';
                    nesting.push(object)?;
                    self.whitespace();
                    if self.peek() == Some(if object { b'}' } else { b']' }) {
                        self.at += 1;
                        nesting.depth -= 1;
                    } else {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                _ => self.scalar()?,
            }
            if !self.close(&mut nesting)? {
                return Some(());
            }
        }
    }

    /// After a value: closes the containers it ends and consumes the separator before the next
    /// value (and key). `Some(false)` once the top-level value is complete.
    fn close(&mut self, nesting: &mut Nesting) -> Option<bool> {
        while let Some(object) = nesting.innermost_is_object() {
            self.whitespace();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    if object {
                        self.key()?;
                    }
                    return Some(true);
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            self.at += 1;
            nesting.depth -= 1;
        }
        Some(false)
    }

    /// An object's key and the colon after it.
    fn key(&mut self) -> Option<()> {
        self.expect(b'"')?;
        self.string_rest()?;
        self.expect(b':')
    }

    fn scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string_rest()
            }
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'N' => self.literal(b"NaN"),
            b'I' => self.literal(b"Infinity"),
            _ => self.literal(b"-Infinity").or_else(|| self.number()),
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`. Python matches a shorter number where
    /// a fraction or exponent has no digits ("1." reads as 1), but the `.` or `e` left over can
    /// never be followed validly, so the stricter grammar gives the same answer.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'-' | b'+') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// The rest of a string after its opening quote, through the closing one.
    fn string_rest(&mut self) -> Option<()> {
        loop {
            self.at += plain_run(&self.text[self.at..]);
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => self.escape()?,
                _ => return None, // a control character
            }
        }
    }

    /// A backslash escape; `\u` takes any four hex digits, lone surrogates included.
    fn escape(&mut self) -> Option<()> {
        let rest = &self.text[self.at + 1..];
        let len = match rest.first()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 1,
            b'u' if rest.get(1..5)?.iter().all(u8::is_ascii_hexdigit) => 5,
            _ => return None,
        };
        self.at += 1 + len;
        Some(())
    }
}

/// The length of the run of bytes that need no look inside a string: everything but `"`, `\` and
/// control characters. Strings (chat messages) are most of the text, so both scans are SIMD:
/// `memchr` for the two delimiters, then a reduction the compiler vectorizes for the controls.
fn plain_run(bytes: &[u8]) -> usize {
    let end = memchr::memchr2(b'"', b'\\', bytes).unwrap_or(bytes.len());
    let run = &bytes[..end];
    if run.iter().fold(false, |control, &b| control | (b < 0x20)) {
        run.iter().position(|&b| b < 0x20).unwrap_or(end)
    } else {
        end
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What serde_json, a strict RFC 8259 parser, says where Python agrees with it.
    fn serde_says(s: &str) -> bool {
        let head = s.trim_start_matches([' ', '\t', '\n', '\r']);
        matches!(head.as_bytes().first(), Some(b'"' | b'{' | b'['))
            && serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
    }

    /// JSON-ish text: valid values, then damaged by cutting or inserting a token.
    fn jsonish() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("-0".to_string()),
            "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][-+]?[0-9]{1,2})?",
            "\"([a-zé✓ ]|\\\\[\"\\\\/bfnrt]|\\\\u00[0-9a-fA-F]{2}){0,12}\"",
            "\"[a-z\\x00-\\x1f\"\\\\]{0,12}\"",
        ];
        let value = leaf.prop_recursive(5, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|items| format!("[{}]", items.join(", "))),
                prop::collection::vec(("[a-z]{0,4}", inner), 0..6).prop_map(|fields| {
                    let fields: Vec<_> = fields
                        .iter()
                        .map(|(k, v)| format!("\"{k}\" :{v}"))
                        .collect();
                    format!("{{ {} }}", fields.join(","))
                }),
            ]
        });
        let token = prop_oneof![
            Just(","),
            Just("]"),
            Just("}"),
            Just(":"),
            Just("\""),
            Just("\\"),
            Just("."),
            Just("e"),
            Just("0"),
            Just(" "),
        ];
        (value, any::<prop::sample::Index>(), prop::option::of(token)).prop_map(
            |(text, at, token)| {
                let cut = text
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(at.index(text.chars().count().max(1)))
                    .unwrap_or(0);
                match token {
                    Some(t) => format!("{}{t}{}", &text[..cut], &text[cut..]),
                    None if cut > 0 => text[..cut].to_string(),
                    None => text,
                }
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn agrees_with_a_strict_parser_on_ordinary_json(s in jsonish()) {
            prop_assert_eq!(loads_as_container_or_string(&s), serde_says(&s), "{:?}", s);
        }

        #[test]
        fn plain_runs_stop_at_the_first_special_byte(
            s in "[a-zé\\x00-\\x1f\"\\\\]{0,40}",
        ) {
            let expected = s.bytes().position(|b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(plain_run(s.as_bytes()), expected.unwrap_or(s.len()));
        }
    }

    #[test]
    fn reads_what_python_reads_beyond_rfc_8259() {
        for s in [
            "[NaN, Infinity, -Infinity]",
            r#"{"t": NaN}"#,
            r#""\ud800""#,
            r#"["\udfff tail"]"#,
        ] {
            assert!(loads_as_container_or_string(s), "{s}");
        }
        let deep = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(loads_as_container_or_string(&deep(MAX_DEPTH)));
        assert!(!loads_as_container_or_string(&deep(MAX_DEPTH + 1)));
    }

    #[test]
    fn refuses_what_python_refuses() {
        for s in [
            "[nan]",
            "[-NaN]",
            "[Infinit]",
            "[1e]",
            "[1.]",
            "[.5]",
            "[01]",
            "[-]",
            "[+1]",
            "{\"a\":1,}",
            "[1,]",
            "[]x",
            "[\"a\tb\"]",
            r#""\x""#,
            r#""\u12G4""#,
            "{1: 2}",
            "{\"a\" 1}",
            "[",
            "\"",
            "7",
            "true",
            "null",
            "",
        ] {
            assert!(!loads_as_container_or_string(s), "{s}");
        }
    }

    #[test]
    fn whitespace_around_the_value_is_python_json_whitespace_only() {
        assert!(loads_as_container_or_string(
            " \t\n\r[ 1 , {\"a\" : \"b\" } ]\r\n "
        ));
        assert!(!loads_as_container_or_string("\u{a0}[]"));
        assert!(!loads_as_container_or_string("\u{feff}[]"));
    }
}
