//! Header edits a route or a destination makes on requests and responses.

use http::{HeaderName, HeaderValue};
use mesh_controller::resources::virtual_service::HeaderOperations;

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
        let pair = |(name, value): (&String, &String)| {
            Ok::<_, String>((
                HeaderName::try_from(name.as_str()).map_err(|e| format!("header {name}: {e}"))?,
                HeaderValue::try_from(value.as_str())
                    .map_err(|e| format!("header {name} value: {e}"))?,
            ))
        };
        Ok(HeaderOps {
            set: ops.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: ops.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: ops
                .remove
                .iter()
                .map(|n| HeaderName::try_from(n.as_str()).map_err(|e| format!("header {n}: {e}")))
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
