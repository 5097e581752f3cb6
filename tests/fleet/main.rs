//! The fleet (feature `redis`) against a real `redis-server` and the fake gateway.

// The gateway tests' harness: a bot against the fake gateway, and recording handlers.
#[path = "../gateway/harness.rs"]
#[allow(dead_code)]
mod harness;
mod redis_server;

// Both run the fleet example's `--http`, which needs it built with feature metrics-endpoint.
#[cfg(feature = "metrics-endpoint")]
mod deploy;
#[cfg(feature = "metrics-endpoint")]
mod health;
mod ownership;
mod processes;

mod sentinel;
mod soak;
mod stores;
mod stream;
mod tls;
