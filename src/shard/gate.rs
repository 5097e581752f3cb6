//! The one place a shard's dispatch can be held back on its way to the delivery: while the bot
//! runs two shard sets (resharding, `crate::reshard`), each set's shards pass their dispatches
//! through a gate that the supervisor arms; otherwise the gate is empty and costs one atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::router::Dispatch;

/// Decides, for one shard set, whether a dispatch goes on to the handlers now.
pub(crate) trait DispatchGate: Send + Sync {
    /// `Some` to deliver now; `None` if it is held (to be [`release`](Self::release)d later) or
    /// dropped (a copy the other set already delivered, or an event its handlers must not see).
    fn admit(&self, shard: u32, dispatch: Dispatch) -> Option<Dispatch>;
    /// What was held for `shard` and may now be delivered, in the order it arrived; from now on
    /// `admit` no longer holds for it.
    fn release(&self, shard: u32) -> Vec<Dispatch>;
}

/// A shard set's gate: empty unless a reshard is under way.
#[derive(Default)]
pub(crate) struct GateSlot {
    armed: AtomicBool,
    gate: RwLock<Option<Arc<dyn DispatchGate>>>,
}

impl GateSlot {
    /// Routes the set's dispatches through `gate` from now on (`None`: straight to the delivery).
    pub(crate) fn set(&self, gate: Option<Arc<dyn DispatchGate>>) {
        let armed = gate.is_some();
        *self.gate.write().unwrap_or_else(|p| p.into_inner()) = gate;
        self.armed.store(armed, Ordering::Release);
    }

    fn current(&self) -> Option<Arc<dyn DispatchGate>> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        self.gate.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// See [`DispatchGate::admit`]; `Some(dispatch)` when no gate is set.
    pub(crate) fn admit(&self, shard: u32, dispatch: Dispatch) -> Option<Dispatch> {
        match self.current() {
            None => Some(dispatch),
            Some(gate) => gate.admit(shard, dispatch),
        }
    }

    /// See [`DispatchGate::release`]; nothing when no gate is set.
    pub(crate) fn release(&self, shard: u32) -> Vec<Dispatch> {
        self.current()
            .map(|gate| gate.release(shard))
            .unwrap_or_default()
    }
}
