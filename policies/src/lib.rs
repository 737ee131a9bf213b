//! policies crate.
