//! Quoting text that came from a request (a model or LoRA id, a `loras` field) in an error
//! message or a log line.

/// How much of the text a message quotes: it should neither echo megabytes back nor carry
/// control characters into logs.
const MAX_QUOTED_CHARS: usize = 200;

/// `text` as an error message may quote it: control characters escaped (no forged log
/// lines), cut short with `...` when long.
pub fn quoted(text: &str) -> String {
    let escaped: String = text.escape_debug().collect();
    match escaped.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", &escaped[..cut]),
        None => escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        assert_eq!(quoted("a/b"), "a/b");
        assert_eq!(quoted("a\nb\u{1b}"), "a\\nb\\u{1b}");
        let long = "x".repeat(500);
        assert_eq!(quoted(&long), format!("{}...", "x".repeat(200)));
    }
}
