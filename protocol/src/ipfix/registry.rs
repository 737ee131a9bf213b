//! The IANA "IPFIX Information Elements" registry (RFC 7012 section 4):
//! element ids, names, abstract data types, semantics and units.
//!
//! The table is generated at build time by `build.rs` from
//! `data/ipfix-information-elements.csv`, the registry file as IANA publishes
//! it; updating the registry means replacing that file. Only IANA elements
//! (enterprise 0) are known; enterprise-specific elements look up as `None`.
//!
//! Ids 1 to 127 are also the NetFlow version 9 field types (RFC 7012
//! section 4 keeps them compatible with RFC 3954), so the same table names
//! NetFlow v9 fields.
//!
//! Registry specifics worth knowing:
//! - `unsigned256` (RFC 9740, e.g. `tcpOptionsFull`) has no variant of its
//!   own: such elements are [`AbstractDataType::OctetArray`], their values
//!   bytes.
//! - Withdrawn rows without a name (ids 416, 419), "Reserved" and the
//!   "Assigned for NetFlow v9 compatibility" placeholders are not elements.

use super::template::IANA_ENTERPRISE;

/// Abstract data types of Information Elements (RFC 7012 section 3.1, and
/// RFC 6313 for the structured list types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbstractDataType {
    /// octetArray: bytes of any length, variable-length by nature. Also
    /// the type this table gives unsigned256 elements.
    OctetArray,
    /// unsigned8: 1-byte unsigned integer.
    Unsigned8,
    /// unsigned16: unsigned integer, 2 bytes in full size (RFC 7011 §6.2
    /// lets exporters send 1).
    Unsigned16,
    /// unsigned32: unsigned integer, 4 bytes in full size (1 to 4 on the
    /// wire with reduced-size encoding).
    Unsigned32,
    /// unsigned64: unsigned integer, 8 bytes in full size (1 to 8 on the
    /// wire); counters such as octetDeltaCount.
    Unsigned64,
    /// signed8: 1-byte two's complement integer.
    Signed8,
    /// signed16: two's complement integer, 2 bytes in full size.
    Signed16,
    /// signed32: two's complement integer, 4 bytes in full size.
    Signed32,
    /// signed64: two's complement integer, 8 bytes in full size.
    Signed64,
    /// float32: IEEE 754 single precision, 4 bytes.
    Float32,
    /// float64: IEEE 754 double precision, 8 bytes (4 as a float32 with
    /// reduced-size encoding).
    Float64,
    /// boolean: 1 byte, 1 for true and 2 for false.
    Boolean,
    /// macAddress: a 6-byte IEEE 802 MAC-48 address.
    MacAddress,
    /// string: UTF-8 text, variable-length.
    String,
    /// dateTimeSeconds: seconds since the UNIX epoch, 4 bytes.
    DateTimeSeconds,
    /// dateTimeMilliseconds: milliseconds since the UNIX epoch, 8 bytes.
    DateTimeMilliseconds,
    /// dateTimeMicroseconds: 8-byte NTP timestamp (seconds since 1900 and
    /// a 2^-32 s fraction) of microsecond precision.
    DateTimeMicroseconds,
    /// dateTimeNanoseconds: 8-byte NTP timestamp of nanosecond precision.
    DateTimeNanoseconds,
    /// ipv4Address: 4 bytes in network order.
    Ipv4Address,
    /// ipv6Address: 16 bytes in network order.
    Ipv6Address,
    /// basicList (RFC 6313): a list of values of one Information Element.
    BasicList,
    /// subTemplateList (RFC 6313): a list of records of one Template.
    SubTemplateList,
    /// subTemplateMultiList (RFC 6313): lists of records of several
    /// Templates.
    SubTemplateMultiList,
}

impl AbstractDataType {
    /// The type's name as the registry spells it (`"unsigned64"`).
    pub const fn iana_name(self) -> &'static str {
        match self {
            Self::OctetArray => "octetArray",
            Self::Unsigned8 => "unsigned8",
            Self::Unsigned16 => "unsigned16",
            Self::Unsigned32 => "unsigned32",
            Self::Unsigned64 => "unsigned64",
            Self::Signed8 => "signed8",
            Self::Signed16 => "signed16",
            Self::Signed32 => "signed32",
            Self::Signed64 => "signed64",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
            Self::Boolean => "boolean",
            Self::MacAddress => "macAddress",
            Self::String => "string",
            Self::DateTimeSeconds => "dateTimeSeconds",
            Self::DateTimeMilliseconds => "dateTimeMilliseconds",
            Self::DateTimeMicroseconds => "dateTimeMicroseconds",
            Self::DateTimeNanoseconds => "dateTimeNanoseconds",
            Self::Ipv4Address => "ipv4Address",
            Self::Ipv6Address => "ipv6Address",
            Self::BasicList => "basicList",
            Self::SubTemplateList => "subTemplateList",
            Self::SubTemplateMultiList => "subTemplateMultiList",
        }
    }

    /// The full encoded length of a fixed-size type (RFC 7011 section 6.1);
    /// `None` for variable-length types (octetArray, string, lists).
    /// Reduced-size encoding (section 6.2) may send fewer bytes.
    pub const fn natural_length(self) -> Option<u16> {
        match self {
            Self::Unsigned8 | Self::Signed8 | Self::Boolean => Some(1),
            Self::Unsigned16 | Self::Signed16 => Some(2),
            Self::Unsigned32 | Self::Signed32 | Self::Float32 | Self::DateTimeSeconds => Some(4),
            Self::Ipv4Address => Some(4),
            Self::MacAddress => Some(6),
            Self::Unsigned64
            | Self::Signed64
            | Self::Float64
            | Self::DateTimeMilliseconds
            | Self::DateTimeMicroseconds
            | Self::DateTimeNanoseconds => Some(8),
            Self::Ipv6Address => Some(16),
            Self::OctetArray
            | Self::String
            | Self::BasicList
            | Self::SubTemplateList
            | Self::SubTemplateMultiList => None,
        }
    }
}

impl std::fmt::Display for AbstractDataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.iana_name())
    }
}

/// One registered Information Element.
#[derive(Debug)]
pub struct InformationElement {
    /// Always [`IANA_ENTERPRISE`] (0) for entries of this table.
    pub enterprise: u32,
    /// ElementId: the Information Element identifier (1 to 32767; the
    /// enterprise bit of a Field Specifier is not part of it).
    pub id: u16,
    /// The registry name, camelCase (`"octetDeltaCount"`).
    pub name: &'static str,
    /// Abstract data type (RFC 7012 §3.1): decides how a field's bytes
    /// decode ([`super::value::decode_value`]).
    pub data_type: AbstractDataType,
    /// Data type semantics (RFC 7012 section 3.2): `"deltaCounter"`,
    /// `"identifier"`, `"flags"`, ... if the registry gives one.
    pub semantics: Option<&'static str>,
    /// Units (`"octets"`, `"milliseconds"`, ...) if the registry gives them.
    pub units: Option<&'static str>,
    /// Status "deprecated" in the registry: still decoded, but exporters
    /// should use the replacement the registry names.
    pub deprecated: bool,
}

include!(concat!(env!("OUT_DIR"), "/ipfix_registry.rs"));

/// The element with this enterprise number and id. O(1): a direct index.
pub fn lookup(enterprise: u32, id: u16) -> Option<&'static InformationElement> {
    if enterprise != IANA_ENTERPRISE {
        return None;
    }
    let position = *INDEX_BY_ID.get(id as usize)?;
    ELEMENTS.get(position as usize)
}

/// The IANA element with this exact (case-sensitive) name.
pub fn by_name(name: &str) -> Option<&'static InformationElement> {
    let found = INDEX_BY_NAME
        .binary_search_by(|(candidate, _)| (*candidate).cmp(name))
        .ok()?;
    ELEMENTS.get(INDEX_BY_NAME[found].1 as usize)
}

/// Every element of the registry, sorted by id.
pub fn all() -> &'static [InformationElement] {
    &ELEMENTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_elements_have_their_registry_types() {
        let cases = [
            (1, "octetDeltaCount", AbstractDataType::Unsigned64),
            (2, "packetDeltaCount", AbstractDataType::Unsigned64),
            (4, "protocolIdentifier", AbstractDataType::Unsigned8),
            (6, "tcpControlBits", AbstractDataType::Unsigned16),
            (8, "sourceIPv4Address", AbstractDataType::Ipv4Address),
            (27, "sourceIPv6Address", AbstractDataType::Ipv6Address),
            (56, "sourceMacAddress", AbstractDataType::MacAddress),
            (82, "interfaceName", AbstractDataType::String),
            (150, "flowStartSeconds", AbstractDataType::DateTimeSeconds),
            (
                152,
                "flowStartMilliseconds",
                AbstractDataType::DateTimeMilliseconds,
            ),
            (
                154,
                "flowStartMicroseconds",
                AbstractDataType::DateTimeMicroseconds,
            ),
            (
                156,
                "flowStartNanoseconds",
                AbstractDataType::DateTimeNanoseconds,
            ),
            (210, "paddingOctets", AbstractDataType::OctetArray),
            (291, "basicList", AbstractDataType::BasicList),
            (292, "subTemplateList", AbstractDataType::SubTemplateList),
            (
                293,
                "subTemplateMultiList",
                AbstractDataType::SubTemplateMultiList,
            ),
        ];
        for (id, name, data_type) in cases {
            let element = lookup(0, id).unwrap_or_else(|| panic!("id {id} missing"));
            assert_eq!(element.name, name);
            assert_eq!(element.data_type, data_type, "{name}");
            assert_eq!(by_name(name).map(|e| e.id), Some(id));
        }
    }

    #[test]
    fn index_and_table_agree_for_every_element() {
        for element in all() {
            assert_eq!(lookup(0, element.id).map(|e| e.name), Some(element.name));
            assert_eq!(by_name(element.name).map(|e| e.id), Some(element.id));
        }
        assert!(all().windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn unassigned_reserved_and_enterprise_ids_are_unknown() {
        assert!(lookup(0, 0).is_none(), "0 is Reserved");
        assert!(
            lookup(0, 105).is_none(),
            "105-127 are NetFlow v9 placeholders"
        );
        assert!(lookup(0, 32767).is_none());
        assert!(lookup(0, u16::MAX).is_none());
        assert!(lookup(9, 1).is_none(), "enterprise elements are not IANA's");
        assert!(
            by_name("OctetDeltaCount").is_none(),
            "names are case-sensitive"
        );
        assert!(by_name("").is_none());
    }

    #[test]
    fn generated_constants_follow_the_names() {
        assert_eq!(ids::OCTET_DELTA_COUNT, 1);
        assert_eq!(ids::SOURCE_IPV4_ADDRESS, 8);
        assert_eq!(ids::DESTINATION_IPV6_ADDRESS, 28);
        assert_eq!(ids::FLOW_START_SYS_UP_TIME, 22);
        assert_eq!(ids::SYSTEM_INIT_TIME_MILLISECONDS, 160);
        assert_eq!(ids::PADDING_OCTETS, 210);
    }
}
