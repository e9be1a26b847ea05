//! Path normalization before routing and authorization, so that no spelling of a path slips
//! past a DENY that names it (Istio's `DECODE_AND_MERGE_SLASHES`, the strictest of its
//! options): `%2F`, `%5C` and `\` become `/`; runs of slashes merge; `.` and `..` segments
//! (also spelled `%2E`) are resolved; percent-encoded unreserved characters are decoded and
//! the remaining escapes upper-cased. The normalized path is also what goes upstream, so the
//! backend sees the path the policy judged.

use std::borrow::Cow;

/// The normalized form of `path` (without its query), or `None` when it cannot be made sense
/// of (not starting with `/`, or an escape that decodes to a control character): such a
/// request is refused. Most paths are normal already and are returned as they are.
pub fn normalize(path: &str) -> Option<Cow<'_, str>> {
    if is_normal(path) {
        return Some(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    if !decoded.starts_with('/') {
        return None;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    // A trailing slash (or dot segment) is kept: `/a/` and `/a` may be different resources.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push('/');
    }
    Some(Cow::Owned(out))
}

/// Whether `normalize` would return `path` unchanged: absolute, nothing to decode (no `%`,
/// no `\`), no empty segment but a trailing one, no dot segment.
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if path.bytes().any(|b| b == b'%' || b == b'\\') {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return false;
        }
    }
    true
}

/// Decodes escapes of unreserved characters and of `/` and `\`; upper-cases the others.
fn decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = path.get(i + 1..i + 3)?;
                let value = u8::from_str_radix(hex, 16).ok()?;
                if value < 0x20 || value == 0x7f {
                    return None;
                }
                match value {
                    b'/' | b'\\' => out.push('/'),
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        out.push(value as char)
                    }
                    _ => {
                        out.push('%');
                        out.push_str(&hex.to_ascii_uppercase());
                    }
                }
                i += 3;
            }
            b'\\' => {
                out.push('/');
                i += 1;
            }
            _ => {
                // Paths are ASCII on the wire; anything else passes as it is.
                let c = path[i..].chars().next()?;
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::normalize;

    #[test]
    fn every_spelling_of_admin_is_admin() {
        for spelling in [
            "/admin",
            "//admin",
            "///admin",
            "/a/../admin",
            "/./admin",
            "/a/b/../../admin",
            "/%61dmin",
            "/%2Fadmin",
            "/%2fadmin",
            "/x%2F..%2Fadmin",
            "/x%2f%2E%2E%2fadmin",
            "\\admin",
            "/..\\admin",
            "/../../admin",
        ] {
            assert_eq!(normalize(spelling).as_deref(), Some("/admin"), "{spelling}");
        }
    }

    #[test]
    fn other_paths_keep_their_meaning() {
        assert_eq!(normalize("/").as_deref(), Some("/"));
        assert_eq!(normalize("/a/").as_deref(), Some("/a/"));
        assert_eq!(normalize("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(normalize("/a%20b").as_deref(), Some("/a%20b"));
        assert_eq!(
            normalize("/a%3fb").as_deref(),
            Some("/a%3Fb"),
            "escapes upper-cased"
        );
        assert_eq!(normalize("/admin2").as_deref(), Some("/admin2"));
        assert_eq!(normalize("admin"), None, "not absolute");
        assert_eq!(normalize("/a%0Ab"), None, "control character");
        assert_eq!(normalize("/a%4"), None, "cut escape");
    }

    #[test]
    fn normal_paths_are_borrowed_and_others_rewritten() {
        for normal in [
            "/",
            "/a",
            "/a/",
            "/a/b.c",
            "/a/..b",
            "/a/.b/",
            "/reviews/1?",
        ] {
            assert!(
                matches!(normalize(normal), Some(Cow::Borrowed(p)) if p == normal),
                "{normal}"
            );
        }
        for other in [
            "//a", "/a//b", "/a/./b", "/a/..", "/.", "/%61", "/a\\b", "/a/b/.",
        ] {
            let normalized = normalize(other);
            assert!(
                matches!(normalized, Some(Cow::Owned(_))),
                "{other} is not normal"
            );
            // What comes out is normal: the shortcut and the full pass agree on it.
            let normalized = normalized.unwrap();
            assert_eq!(normalize(&normalized).as_deref(), Some(&*normalized));
        }
    }
}
