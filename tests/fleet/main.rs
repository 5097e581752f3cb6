//! The fleet (feature `redis`) against a real `redis-server` and the fake gateway.

#[path = "../gateway/harness.rs"]
#[allow(dead_code)]
mod harness;
mod redis_server;

mod ownership;

mod stores;
