//! Header edits a route or a destination makes on requests and responses.

use http::{HeaderName, HeaderValue};
use mesh_api::virtual_service::HeaderOperations;

/// Header edits: set replaces, add appends, remove deletes.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub(super) fn compile(ops: Option<&HeaderOperations>) -> Result<Self, String> {
        let Some(ops) = ops else {
            return Ok(HeaderOps::default());
        };
        let pair = |(name, value): (&String, &String)| header(name, value);
        Ok(HeaderOps {
            set: ops.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: ops.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: ops
                .remove
                .iter()
                .map(|n| header_name(n))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A header name, with the name in the error.
pub(super) fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::try_from(name).map_err(|e| format!("header {name}: {e}"))
}

/// A header name and value, with the name in the error.
pub(super) fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let value = HeaderValue::try_from(value).map_err(|e| format!("header {name} value: {e}"))?;
    Ok((header_name(name)?, value))
}
