//! The name and value formats the API server checks (IANA service names, DNS labels,
//! environment variable names, local paths, quantities).

/// IANA_SVC_NAME: what a named port must be.
pub(super) fn port_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 15 {
        return Err("must be no more than 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        return Err("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not begin or end with a hyphen");
    }
    Ok(())
}

pub(super) fn is_dns1123_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub(super) fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || matches!(b, b'-' | b'.' | b'_'))
        && name.bytes().all(valid)
        && name != "."
        && name != ".."
        && !name.starts_with("..")
}

/// A relative path with no `..` element (subPath, projected and configMap item paths).
pub(super) fn is_local_path(path: &str) -> bool {
    !path.starts_with('/') && !path.split('/').any(|part| part == "..")
}

/// A quantity's value for comparison (`100m`, `64Mi`, `1G`, `2`); `None` if unparsable.
pub(super) fn quantity(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(number * scale)
}
