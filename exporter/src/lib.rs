//! The poolflow exporter: an RSerPool pool user that streams IPFIX to the
//! collector pool with lossless failover and failback.
//!
//! - [`generate`]: the synthetic load generator (one collector, no pool);
//!   [`tls`] is its TLS client.
//! - [`relay`]: `exporter relay`, routers' IPFIX and NetFlow v9 into the
//!   pool.
//! - [`pool_user`]: the sans-IO pool user core: record sequences, cookies,
//!   replay, failover, Preferred Primary failback.
//! - [`replay`]: the per-domain replay buffer (memory window; what goes
//!   past it is asked of the spill as requests), sans-IO.
//! - [`spill`]: the driver's spill store performing those requests on
//!   segment files.
//! - [`sequence`]: what the exporter remembers (next record sequence, last
//!   cookie); [`state_file`] stores it.
//! - [`config`]: the `exporter stream` TOML configuration.
//! - [`stream`]: the tokio driver of the core over `transport` and
//!   `asap_client`; its input comes through a [`record_queue`].

#![warn(missing_docs)]

pub mod config;
pub mod generate;
pub mod journal;
pub mod pool_user;
mod record_file;
pub mod record_queue;
pub mod relay;
pub mod replay;
pub mod sequence;
pub mod spill;
pub mod state_file;
pub mod stream;
pub mod tls;
