//! Sans-IO wire formats for poolflow: no sockets, no tokio, only bytes in and
//! values out (and back). Modules mirror the protocol documents:
//!
//! - [`ipfix`]: IPFIX, RFC 7011 (messages, sets, templates, records), with the
//!   IANA Information Element registry (RFC 7012).
//! - [`netflow_v9`]: Cisco NetFlow version 9, RFC 3954 (input of the relay).
//! - [`rserpool`]: Reliable Server Pooling: common parameters (RFC 5354),
//!   ASAP (RFC 5352) and ENRP (RFC 5353).
//! - [`signing`]: Ed25519 keys (RFC 8032) in PKCS#8 PEM, the one signature
//!   scheme of pool membership proofs and billing cookies.
//! - [`billing`]: the billing cookie, the value of the ASAP Cookie
//!   parameter (RFC 5354 §3.13) in poolflow's cookie protocol
//!   (docs/billing-continuity.md).
//!
//! Where this crate sits among the others: docs/architecture.md.

#![warn(missing_docs)]

pub mod billing;
pub mod ipfix;
pub mod netflow_v9;
pub mod rserpool;
pub mod signing;
