//! Environment-variable substitution in pipeline files, as `docker compose` does it.
//!
//! `${NAME}` is replaced by the variable's value and is an error when it is unset;
//! `${NAME:-default}` falls back to `default` when the variable is unset or empty; `$$` is a
//! literal `$`. Substitution is textual and happens before YAML parsing, so a variable can hold
//! any scalar (a broker list, a port, a size). Comments are substituted too, like compose does;
//! `$$` keeps a `$` out of reach.

use super::Problem;

/// `text` with every reference replaced, or one problem per unusable reference.
///
/// `lookup` answers a variable's value; tests pass their own, [`Config::parse`] reads the
/// process environment.
///
/// [`Config::parse`]: super::Config::parse
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let column = line.len() - rest.len() + at + 1;
            let tail = &rest[at..];
            let (replacement, used) = if tail.starts_with("$$") {
                (Ok("$".to_string()), 2)
            } else if let Some(body) = tail.strip_prefix("${") {
                match body.find('}') {
                    Some(end) => (expand(&body[..end], &lookup), end + 3),
                    None => (Err("`${` without its closing `}`".to_string()), tail.len()),
                }
            } else {
                (Ok("$".to_string()), 1)
            };
            match replacement {
                Ok(value) => out.push_str(&value),
                Err(message) => problems.push(Problem {
                    position: Some((index as u64 + 1, column as u64)),
                    path: String::new(),
                    message,
                }),
            }
            rest = &tail[used..];
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The value of one `${…}` body: `NAME` or `NAME:-default`.
fn expand(body: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match body.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (body, None),
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`${{{body}}}` is not a variable reference: use ${{NAME}} or ${{NAME:-default}}"
        ));
    }
    match (lookup(name).filter(|v| !v.is_empty()), default) {
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(format!(
            "environment variable {name} is not set (give a default with ${{{name}:-value}})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "BROKERS" => Some("kafka:9092".into()),
            "EMPTY" => Some(String::new()),
            "ÜBER" => Some("never".into()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        let text = "a: ${BROKERS}\nb: ${MISSING:-localhost:9092}\nc: ${EMPTY:-fallback}\n";
        assert_eq!(
            substitute(text, env).unwrap(),
            "a: kafka:9092\nb: localhost:9092\nc: fallback\n"
        );
    }

    #[test]
    fn set_value_wins_over_default_and_dollars_escape() {
        assert_eq!(
            substitute("x: ${BROKERS:-other} costs $$5 or $ 3", env).unwrap(),
            "x: kafka:9092 costs $5 or $ 3"
        );
        assert_eq!(substitute("x: $${BROKERS}", env).unwrap(), "x: ${BROKERS}");
    }

    #[test]
    fn unset_variable_names_line_column_and_how_to_default() {
        let problems = substitute("a: 1\nbrokers: ${KAFKA_BROKERS}\n", env).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].position, Some((2, 10)));
        assert_eq!(
            problems[0].message,
            "environment variable KAFKA_BROKERS is not set (give a default with ${KAFKA_BROKERS:-value})"
        );
    }

    #[test]
    fn malformed_references_are_reported_each() {
        let problems = substitute("a: ${}\nb: ${1X}\nc: ${ÜBER}\nd: ${OPEN\n", env).unwrap_err();
        let lines: Vec<_> = problems.iter().map(|p| p.position.unwrap().0).collect();
        assert_eq!(lines, [1, 2, 3, 4]);
        assert!(problems[3].message.contains("without its closing"));
        assert!(problems[2].message.contains("not a variable reference"));
    }
}
