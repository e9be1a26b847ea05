//! Reading multi-document YAML so that one broken document costs only itself.
//!
//! serde_yaml's stream parser cannot resynchronise after a syntax error: every document after
//! it is lost, a DENY policy further down the file included. The file is therefore cut at its
//! `---` separator lines first, and each document parsed on its own.

use serde_yaml::Value;

/// One document of a YAML stream: its 1-based position and its value, or why it is not YAML.
/// Nothing between two markers is not a document; a document of comments only is counted
/// but not returned.
pub fn documents(text: &str) -> impl Iterator<Item = (usize, Result<Value, serde_yaml::Error>)> {
    split(text)
        .into_iter()
        .filter(|document| !document.trim().is_empty())
        .enumerate()
        .map(|(i, document)| (i + 1, serde_yaml::from_str::<Value>(document)))
        .filter(|(_, parsed)| !matches!(parsed, Ok(Value::Null)))
}

/// The documents of `text`, cut at lines that are a document marker (`---`, optionally
/// followed by a space and content or a comment) and ended by `...` lines. A marker is only
/// recognised at the start of a line, as YAML requires, so it cannot occur inside a block
/// scalar of a document (whose lines are indented).
fn split(text: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_start = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        let is_end = bare == "..." || bare.starts_with("... ");
        if is_start || is_end {
            documents.push(&text[start..offset]);
            // A start marker may carry the document's first content on its own line.
            start = if is_start {
                offset + 3
            } else {
                offset + line.len()
            };
        }
        offset += line.len();
    }
    documents.push(&text[start..]);
    documents
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_document_costs_only_itself() {
        let text = "a: 1\n---\nb: [unclosed\n---\nc: 3\n...\n--- {d: 4}\n";
        let parsed: Vec<(usize, bool)> = documents(text).map(|(i, r)| (i, r.is_ok())).collect();
        assert_eq!(parsed, [(1, true), (2, false), (3, true), (4, true)]);
        let last = documents(text).last().unwrap().1.unwrap();
        assert_eq!(last.get("d").and_then(Value::as_u64), Some(4));
    }

    #[test]
    fn markers_inside_block_scalars_do_not_split() {
        let text = "a: |\n  ---\n  text\nb: 2\n";
        let parsed: Vec<_> = documents(text).collect();
        assert_eq!(parsed.len(), 1);
        let value = parsed[0].1.as_ref().unwrap();
        assert_eq!(value.get("a").and_then(Value::as_str), Some("---\ntext\n"));
    }

    #[test]
    fn leading_separator_and_comments() {
        let text = "# header\n---\na: 1\n---\n# nothing here\n";
        assert_eq!(documents(text).count(), 1);
    }
}
