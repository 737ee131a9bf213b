//! IPFIX (RFC 7011): message codec, templates scoped per transport session and
//! observation domain, and the Information Element registry (RFC 7012).

pub mod encode;
pub mod flow;
pub mod message;
pub mod registry;
pub mod reliability;
pub mod session;
pub mod template;
pub mod value;

pub use encode::{MessageFull, MessageWriter};
pub use message::{DecodeError, Message, MessageHeader, record_fields};
pub use session::{
    DataRecord, MessageReport, SequenceCheck, Session, SessionConfig, TransportKind,
};
pub use template::{FieldSpecifier, IANA_ENTERPRISE, Template, VARIABLE_LENGTH};
