//! transport crate.
