//! A gate that stops the actor from polling its websocket while handlers are behind, so unread
//! frames stay in the socket (and with Discord) instead of in memory.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_util::Stream;

/// Shared between the actor and the stream it reads.
#[derive(Debug, Default)]
pub struct PauseGate {
    paused: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl PauseGate {
    /// Stops or restarts reading.
    pub fn set_paused(&self, paused: bool) {
        self.paused.set(paused);
        if !paused {
            if let Some(waker) = self.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    /// Whether reading is stopped.
    pub fn is_paused(&self) -> bool {
        self.paused.get()
    }
}

/// A stream that yields nothing while its gate is paused.
pub struct Pausable<S> {
    inner: S,
    gate: Rc<PauseGate>,
}

impl<S> Pausable<S> {
    /// Wraps `inner` behind `gate`.
    pub fn new(inner: S, gate: Rc<PauseGate>) -> Self {
        Self { inner, gate }
    }
}

impl<S: Stream + Unpin> Stream for Pausable<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.gate.is_paused() {
            *self.gate.waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[actix_rt::test]
    async fn yields_nothing_while_paused_and_resumes_where_it_stopped() {
        let gate = Rc::new(PauseGate::default());
        let mut stream = Pausable::new(futures_util::stream::iter(1..=3), gate.clone());
        assert_eq!(stream.next().await, Some(1));
        gate.set_paused(true);
        assert_eq!(
            futures_util::FutureExt::now_or_never(stream.next()),
            None,
            "paused"
        );
        gate.set_paused(false);
        assert_eq!(stream.collect::<Vec<_>>().await, [2, 3]);
    }
}
