//! poolflow registrar: the ASAP server side of RFC 5352.
//!
//! * [`handlespace`]: pools, PEs, selection state and timers as plain data.
//! * [`server`]: the sans-IO ASAP server: messages and clock in, [`server::Action`]s out.
//! * [`driver`]: the tokio driver (TCP and SCTP-over-UDP listeners via the
//!   `transport` crate, Server Announce, HTTP status endpoint).
//! * [`enrp`]: ENRP peering (RFC 5353), sans-IO: peer table, Presence
//!   heartbeat, Handle Table / Handle Update synchronization, checksum
//!   audit, List Request/Response, takeover of a dead registrar.
//! * [`config`]: the TOML configuration.

#![warn(missing_docs)]

pub mod config;
pub mod driver;
pub mod enrp;
pub mod handlespace;
pub mod server;

pub use config::RegistrarConfig;
pub use driver::Registrar;
pub use handlespace::{AssocId, Handlespace, HandlespaceError, HandlespaceLimits};
pub use server::{Action, Server, ServerConfig, Status};
