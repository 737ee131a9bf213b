//! registrar library.
