//! Request and response previews (`mlflow/tracing/utils/truncation.py`; reference §4.4): the text
//! of the last user (or assistant) chat message when the root's inputs (or outputs) hold chat
//! messages, else the whole JSON text; cut to 1000 characters as `s[:997] + "..."`.

use super::json::PyValue;

/// MLflow's preview length outside Databricks.
pub const MAX_PREVIEW_CHARS: usize = 1000;

/// Cuts `s` to `max` characters (Unicode scalar values, like Python's `len`), ending in `...`.
pub fn truncate(s: &str, max: usize) -> String {
    // A string of no more bytes than `max` has no more characters either.
    if s.len() <= max || s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(3);
    let cut = s.char_indices().nth(keep).map_or(s.len(), |(at, _)| at);
    let mut out = String::with_capacity(cut + 3);
    out.push_str(&s[..cut]);
    out.push_str("...");
    out
}

/// The preview of a root span's stored inputs or outputs; `role` is `user` for the request and
/// `assistant` for the response.
pub fn preview(stored: &str, role: &str) -> String {
    // Messages are found only in a dict: anything else is previewed as it is, unparsed.
    let dict = stored.trim_start().starts_with('{');
    let content = dict
        .then(|| serde_json::from_str::<serde_json::Value>(stored).ok())
        .flatten()
        .and_then(|obj| extract_messages(&PyValue::from_json(&obj)))
        .and_then(|messages| last_message(&messages, role).and_then(text_content))
        .filter(|c| !c.is_empty());
    truncate(content.as_deref().unwrap_or(stored), MAX_PREVIEW_CHARS)
}

fn get<'a>(v: &'a PyValue, key: &str) -> Option<&'a PyValue> {
    match v {
        PyValue::Dict(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

fn is_message(v: &PyValue) -> bool {
    get(v, "role").is_some() && get(v, "content").is_some()
}

fn non_empty_list(v: Option<&PyValue>) -> Option<&Vec<PyValue>> {
    match v {
        Some(PyValue::List(items)) if !items.is_empty() => Some(items),
        _ => None,
    }
}

/// Chat messages in OpenAI chat request (`messages`), chat response (`choices[0].message`),
/// Responses API (`input`, `output`) or ResponsesAgent (`request`) shape.
fn extract_messages(obj: &PyValue) -> Option<Vec<PyValue>> {
    if !matches!(obj, PyValue::Dict(_)) {
        return None;
    }
    if let Some(messages) = non_empty_list(get(obj, "messages")) {
        return Some(messages.iter().filter(|m| is_message(m)).cloned().collect());
    }
    if let Some(choices) = non_empty_list(get(obj, "choices"))
        && let Some(msg) = get(&choices[0], "message").filter(|m| is_message(m))
    {
        return Some(vec![msg.clone()]);
    }
    for key in ["input", "output"] {
        if let Some(items) = non_empty_list(get(obj, key)) {
            return Some(items.iter().filter(|m| is_message(m)).cloned().collect());
        }
    }
    get(obj, "request").and_then(extract_messages)
}

fn last_message<'a>(messages: &'a [PyValue], role: &str) -> Option<&'a PyValue> {
    messages
        .iter()
        .rev()
        .find(|m| matches!(get(m, "role"), Some(PyValue::Str(r)) if r == role))
        .or(messages.last())
}

fn text_content(message: &PyValue) -> Option<String> {
    match get(message, "content")? {
        PyValue::Str(s) => Some(s.clone()),
        PyValue::List(parts) => parts.iter().find_map(|part| match part {
            PyValue::Str(s) => Some(Some(s.clone())),
            PyValue::Dict(_) => match get(part, "type") {
                Some(PyValue::Str(t)) if t == "text" || t == "output_text" => {
                    Some(match get(part, "text") {
                        Some(PyValue::Str(s)) => Some(s.clone()),
                        _ => None,
                    })
                }
                _ => None,
            },
            _ => None,
        })?,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_messages_give_the_last_message_of_the_role() {
        let req = r#"{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}], "model": "m"}"#;
        assert_eq!(preview(req, "user"), "hi there");
        let resp = r#"{"choices": [{"message": {"role": "assistant", "content": "2+2=4"}}]}"#;
        assert_eq!(preview(resp, "assistant"), "2+2=4");
        let parts =
            r#"{"input": [{"role": "user", "content": [{"type": "text", "text": "part"}]}]}"#;
        assert_eq!(preview(parts, "user"), "part");
        let nested = r#"{"request": {"messages": [{"role": "user", "content": "inner"}]}}"#;
        assert_eq!(preview(nested, "user"), "inner");
    }

    #[test]
    fn anything_else_is_the_whole_text() {
        assert_eq!(
            preview(r#"{"question": "What is 2+2?"}"#, "user"),
            r#"{"question": "What is 2+2?"}"#
        );
        assert_eq!(preview(r#""hello!""#, "assistant"), r#""hello!""#);
        let list = r#"[{"role": "user", "content": "x"}]"#;
        assert_eq!(
            preview(list, "user"),
            list,
            "a list is not a dict: no extraction"
        );
    }

    #[test]
    fn long_text_is_cut_to_1000_characters() {
        let long = "é".repeat(1500);
        let p = preview(&format!("\"{long}\""), "user");
        assert_eq!(p.chars().count(), 1000);
        assert!(p.ends_with("..."));
        assert_eq!(truncate("abcdef", 5), "ab...");
        assert_eq!(truncate("abcde", 5), "abcde");
        // Characters, not bytes: five two-byte characters fit in five.
        assert_eq!(truncate("ééééé", 5), "ééééé");
        assert_eq!(truncate("éééééé", 5), "éé...");
        assert_eq!(truncate("日本語のテキスト", 4), "日...");
    }
}
