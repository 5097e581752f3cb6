//! The two sides of an [`Overlap`] as the shards' gates see them.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::overlap::Overlap;
use crate::router::Dispatch;
use crate::shard::gate::DispatchGate;

fn lock(overlap: &Mutex<Overlap>) -> MutexGuard<'_, Overlap> {
    // Every update leaves the overlap whole; a panic elsewhere does not make it unusable.
    overlap.lock().unwrap_or_else(|p| p.into_inner())
}

/// The old set's gate: delivers until the cut, drops after it.
pub(crate) struct OldSide(pub Arc<Mutex<Overlap>>);

impl DispatchGate for OldSide {
    fn admit(&self, shard: u32, dispatch: Dispatch) -> Option<Dispatch> {
        lock(&self.0)
            .old(shard, &dispatch, Instant::now())
            .then_some(dispatch)
    }

    fn release(&self, _shard: u32) -> Vec<Dispatch> {
        Vec::new()
    }
}

/// The new set's gate: holds until the cut, then hands back what it held and delivers.
pub(crate) struct NewSide(pub Arc<Mutex<Overlap>>);

impl DispatchGate for NewSide {
    fn admit(&self, shard: u32, dispatch: Dispatch) -> Option<Dispatch> {
        lock(&self.0).new_event(shard, dispatch, Instant::now())
    }

    fn release(&self, shard: u32) -> Vec<Dispatch> {
        lock(&self.0).release(shard)
    }
}
