//! The fleet (feature `redis`) against a real `redis-server` and the fake gateway.

// The gateway tests' harness: a bot against the fake gateway, and recording handlers.
#[path = "../gateway/harness.rs"]
#[allow(dead_code)]
mod harness;
mod redis_server;

mod deploy;
mod health;
mod ownership;
mod processes;

mod sentinel;
mod stores;
mod stream;
mod tls;
