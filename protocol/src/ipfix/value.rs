//! Typed values of Information Elements (RFC 7011 section 6).
