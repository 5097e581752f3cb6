//! End-to-end tests: the real client over real websockets against the fake gateway.

mod harness;

mod close_codes;
mod commands;
mod config;
mod delivery;
mod examples;
mod heartbeat;
mod identify;
mod lifecycle;
mod operations;
mod reliability;
mod reshard;
mod resume;
mod routing;
mod tls;
mod transport;
