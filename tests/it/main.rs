//! Integration tests: the real binaries, a real origin stub, real `redis-server` and Prometheus.

mod batch;
mod cluster;
mod config;
mod disk;
mod fleet_bus;
mod hardening;
mod harness;
mod hostile;
mod http_caching;
mod items;
mod loadtest;
mod observability;
mod ops;
mod origin;
mod otlp;
mod proxy;
mod redis;
mod resilience;
mod rollout;
mod tags;
mod tier_contract;
