//! The poolflow exporter: an RSerPool pool user that streams IPFIX to the
//! collector pool with lossless failover and failback.
//!
//! - [`generate`]: the synthetic load generator (one collector, no pool);
//!   [`tls`] is its TLS client.
//! - [`relay`]: `exporter relay`, routers' IPFIX and NetFlow v9 into the
//!   pool.
//! - [`pool_user`]: the sans-IO pool user core: record sequences, cookies,
//!   replay, failover, Preferred Primary failback.
//! - [`replay`]: the per-domain replay buffer (memory window + disk spill).
//! - [`sequence`]: the state file (next record sequence, last cookie).
//! - [`config`]: the `exporter stream` TOML configuration.
//! - [`stream`]: the tokio driver of the core over `transport` and
//!   `asap_client`.

#![warn(missing_docs)]

pub mod config;
pub mod generate;
pub mod journal;
pub mod pool_user;
pub mod relay;
pub mod replay;
pub mod sequence;
pub mod stream;
pub mod tls;
