//! The poolflow exporter. Today: the synthetic load generator
//! ([`generate`]). The pool user (ASAP resolution, failover, cookies,
//! failback) and the relay arrive with their issues.

pub mod generate;
