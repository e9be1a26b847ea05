//! One unit of a shared count, held while it lives: a connection in its cluster's
//! connections (the `maxConnections` limit) or in its worker's load. Dropping it takes it
//! off, however its holder ends.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

pub struct Counted(Option<Arc<AtomicUsize>>);

impl Counted {
    /// Adds one to `count`; `None` counts nowhere.
    pub fn take(count: Option<Arc<AtomicUsize>>) -> Self {
        if let Some(count) = &count {
            count.fetch_add(1, Ordering::AcqRel);
        }
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
