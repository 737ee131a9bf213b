//! exporter library.
