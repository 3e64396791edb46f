//! Text patterns in pipeline files: `*` matches any run of characters, `?` one character,
//! `[abc]` one of a set (the `glob` crate's syntax, applied to whole strings, `/` not special).

use std::fmt;

use serde::{Deserialize, Deserializer, de};

/// A compiled pattern; a pattern without wildcards matches only its own text.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    compiled: glob::Pattern,
    /// The common shapes, matched without the glob engine.
    shape: Shape,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Shape {
    /// No wildcard: the text itself.
    Literal,
    /// One trailing `*`: this prefix.
    Prefix(String),
    /// Anything else.
    Glob,
}

const OPTIONS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

impl Pattern {
    /// Compiles `text`.
    ///
    /// # Errors
    ///
    /// When `text` is not a valid pattern (an unclosed `[`), with the reason.
    pub fn new(text: &str) -> Result<Self, String> {
        let compiled = glob::Pattern::new(text)
            .map_err(|e| format!("{text:?} is not a valid pattern: {}", e.msg))?;
        let wild = |t: &str| t.contains(['*', '?', '[']);
        let shape = match text.strip_suffix('*') {
            _ if !wild(text) => Shape::Literal,
            Some(prefix) if !wild(prefix) => Shape::Prefix(prefix.to_string()),
            _ => Shape::Glob,
        };
        Ok(Self { compiled, shape })
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        match &self.shape {
            Shape::Literal => self.compiled.as_str() == text,
            Shape::Prefix(prefix) => text.starts_with(prefix.as_str()),
            Shape::Glob => self.compiled.matches_with(text, OPTIONS),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.compiled.as_str()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Pattern::new(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_whole_strings() {
        let p = Pattern::new("gen_ai.prompt.*").unwrap();
        assert!(p.matches("gen_ai.prompt.0.content"));
        assert!(!p.matches("x.gen_ai.prompt.0"));
        assert!(Pattern::new("a?c").unwrap().matches("abc"));
        assert!(Pattern::new("*/health").unwrap().matches("GET /api/health"));
    }

    #[test]
    fn prefixes_and_globs_agree_with_the_glob_engine() {
        for (pattern, text) in [
            ("gen_ai.*", "gen_ai."),
            ("gen_ai.*", "gen_ai.x.y"),
            ("gen_ai.*", "gen_ai"),
            ("*", ""),
            ("a*b", "axxb"),
            ("a*b", "axxc"),
        ] {
            let fast = Pattern::new(pattern).unwrap().matches(text);
            let slow = glob::Pattern::new(pattern)
                .unwrap()
                .matches_with(text, OPTIONS);
            assert_eq!(fast, slow, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn literals_compare_exactly_including_unicode() {
        let p = Pattern::new("användare.e-post").unwrap();
        assert!(p.matches("användare.e-post"));
        assert!(!p.matches("Användare.e-post"));
    }

    #[test]
    fn a_broken_pattern_says_why() {
        let err = Pattern::new("[abc").unwrap_err();
        assert!(err.contains("\"[abc\" is not a valid pattern"), "{err}");
    }
}
