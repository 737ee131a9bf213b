//! collector library.
