//! Request matches (`HTTPMatchRequest`): every condition given must hold. Regexes must match
//! the whole value (RE2 full match, as Envoy applies them); a header condition on a header
//! sent several times holds if any of its values fits.

use std::collections::BTreeMap;

use mesh_api::{common::StringMatch, virtual_service::HttpMatchRequest};

#[derive(Clone, Debug)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    /// The Gateway API's `PathPrefix`: whole path segments (`/foo` fits `/foo` and `/foo/x`,
    /// not `/foobar`); kept without a trailing slash.
    PathPrefix(String),
    Regex(regex::Regex),
}

impl StrMatch {
    pub fn compile(m: &StringMatch) -> Result<Self, String> {
        match (&m.exact, &m.prefix, &m.regex) {
            (Some(exact), None, None) => Ok(StrMatch::Exact(exact.clone())),
            (None, Some(prefix), None) => Ok(StrMatch::Prefix(prefix.clone())),
            (None, None, Some(pattern)) => regex::Regex::new(&format!("^(?:{pattern})$"))
                .map(StrMatch::Regex)
                .map_err(|e| format!("regex {pattern:?}: {e}")),
            _ => Err("a string match needs exactly one of exact, prefix, regex".to_owned()),
        }
    }

    pub fn fits(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(exact) => value == exact,
            StrMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StrMatch::PathPrefix(prefix) => value
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            StrMatch::Regex(regex) => regex.is_match(value),
        }
    }

    fn fits_ignoring_case(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(exact) => value.eq_ignore_ascii_case(exact),
            StrMatch::Prefix(prefix) => value
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
            StrMatch::PathPrefix(_) => self.fits(&value.to_ascii_lowercase()),
            StrMatch::Regex(regex) => regex.is_match(&value.to_ascii_lowercase()),
        }
    }
}

/// What a match looks at in a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The port the request was sent to.
    pub port: u16,
    /// The client workload's labels and namespace, when known.
    pub source_labels: Option<&'a BTreeMap<String, String>>,
    pub source_namespace: Option<&'a str>,
}

#[derive(Clone, Debug, Default)]
pub struct Match {
    pub uri: Option<StrMatch>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StrMatch>,
    pub method: Option<StrMatch>,
    pub authority: Option<StrMatch>,
    pub headers: Vec<(http::HeaderName, StrMatch)>,
    pub without_headers: Vec<(http::HeaderName, StrMatch)>,
    pub query: Vec<(String, StrMatch)>,
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
}

fn header_matches(
    map: &BTreeMap<String, StringMatch>,
) -> Result<Vec<(http::HeaderName, StrMatch)>, String> {
    map.iter()
        .map(|(name, m)| {
            let name = http::HeaderName::try_from(name.as_str())
                .map_err(|e| format!("header name {name:?}: {e}"))?;
            Ok((name, StrMatch::compile(m)?))
        })
        .collect()
}

impl Match {
    pub fn compile(m: &HttpMatchRequest) -> Result<Self, String> {
        let optional = |m: &Option<StringMatch>| m.as_ref().map(StrMatch::compile).transpose();
        Ok(Match {
            uri: optional(&m.uri)?,
            ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
            scheme: optional(&m.scheme)?,
            method: optional(&m.method)?,
            authority: optional(&m.authority)?,
            headers: header_matches(&m.headers)?,
            without_headers: header_matches(&m.without_headers)?,
            query: m
                .query_params
                .iter()
                .map(|(k, v)| Ok::<_, String>((k.clone(), StrMatch::compile(v)?)))
                .collect::<Result<_, _>>()?,
            port: m.port.and_then(|p| u16::try_from(p).ok()),
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.clone(),
        })
    }

    /// The prefix (or exact path) this match matched on, for `rewrite.uri`.
    pub fn uri_prefix(&self) -> Option<&str> {
        match &self.uri {
            Some(StrMatch::Prefix(prefix) | StrMatch::PathPrefix(prefix)) => Some(prefix),
            _ => None,
        }
    }

    pub fn fits(&self, request: &RequestView<'_>) -> bool {
        let uri_fits = self.uri.as_ref().is_none_or(|m| {
            if self.ignore_uri_case {
                m.fits_ignoring_case(request.path)
            } else {
                m.fits(request.path)
            }
        });
        uri_fits
            && self.scheme.as_ref().is_none_or(|m| m.fits(request.scheme))
            && self.method.as_ref().is_none_or(|m| m.fits(request.method))
            && self
                .authority
                .as_ref()
                .is_none_or(|m| m.fits(request.authority))
            && self.port.is_none_or(|p| p == request.port)
            && self
                .headers
                .iter()
                .all(|(name, m)| any_value(request.headers, name, m))
            && !self
                .without_headers
                .iter()
                .any(|(name, m)| any_value(request.headers, name, m))
            && self
                .query
                .iter()
                .all(|(key, m)| query_values(request.query, key).any(|value| m.fits(&value)))
            && (self.source_labels.is_empty()
                || request.source_labels.is_some_and(|labels| {
                    self.source_labels
                        .iter()
                        .all(|(k, v)| labels.get(k) == Some(v))
                }))
            && self
                .source_namespace
                .as_ref()
                .is_none_or(|ns| request.source_namespace == Some(ns.as_str()))
    }
}

fn any_value(headers: &http::HeaderMap, name: &http::HeaderName, m: &StrMatch) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|value| value.to_str().is_ok_and(|v| m.fits(v)))
}

/// The values of `key` in a query string, percent-decoded.
fn query_values<'a>(query: Option<&'a str>, key: &'a str) -> impl Iterator<Item = String> + 'a {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == key).then(|| percent_decode(v))
        })
}

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
