//! IPFIX (RFC 7011): message codec, templates scoped per transport session and
//! observation domain, and the Information Element registry (RFC 7012).

pub mod registry;
pub mod template;
pub mod value;

pub use template::{FieldSpecifier, IANA_ENTERPRISE, Template, VARIABLE_LENGTH};
