//! NetFlow version 9 (RFC 3954) decoding.
