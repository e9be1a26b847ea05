//! L4 policy in Istio's YAML: `PeerAuthentication` (is plaintext accepted?) and
//! `AuthorizationPolicy` (who may connect to which port), as users already write them.
//!
//! # Layout
//! - the resource types and the one validator come from `mesh_api::policy`, re-exported here;
//! - `evaluate`: choosing the policies that apply to a workload and deciding a connection;
//! - `load`: reading a directory of YAML or the controller's stream, one error per bad
//!   document, the rest applied.

mod evaluate;
mod load;

pub use evaluate::{Connection, Decision, PolicySet, Request, Targets, Workload};
pub use load::{LoadError, load_dir, parse_documents};
pub use mesh_api::policy::*;
