//! The fleet (feature `redis`) against a real `redis-server` and the fake gateway.

mod redis_server;

mod stores;
