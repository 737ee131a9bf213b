//! The generated IANA registry as other crates see it, and typed decoding of
//! registry elements.

use protocol::ipfix::registry::{self, AbstractDataType, ids};
use protocol::ipfix::value::{Value, ValueError, decode_element};

#[test]
fn registry_holds_the_iana_elements() {
    assert!(
        registry::all().len() > 400,
        "{} elements",
        registry::all().len()
    );

    let source = registry::lookup(0, 8).expect("id 8");
    assert_eq!(source.name, "sourceIPv4Address");
    assert_eq!(source.data_type, AbstractDataType::Ipv4Address);
    assert_eq!(source.enterprise, 0);

    let octets = registry::lookup(0, 1).expect("id 1");
    assert_eq!(octets.name, "octetDeltaCount");
    assert_eq!(octets.data_type, AbstractDataType::Unsigned64);
    assert_eq!(octets.semantics, Some("deltaCounter"));
    assert_eq!(octets.units, Some("octets"));
    assert!(!octets.deprecated);

    let start = registry::by_name("flowStartMilliseconds").expect("by name");
    assert_eq!(start.id, 152);
    assert_eq!(start.data_type, AbstractDataType::DateTimeMilliseconds);
    assert_eq!(start.units, Some("milliseconds"));
}

#[test]
fn deprecated_elements_are_marked() {
    // samplingInterval (34) is deprecated in favour of samplingPacketInterval.
    let sampling = registry::lookup(0, 34).unwrap();
    assert_eq!(sampling.name, "samplingInterval");
    assert!(sampling.deprecated);
    assert!(registry::all().iter().filter(|e| e.deprecated).count() >= 10);
}

#[test]
fn unsigned256_elements_are_octet_arrays() {
    // tcpOptionsFull (RFC 9740) is unsigned256 in the registry.
    let element = registry::by_name("tcpOptionsFull").expect("tcpOptionsFull");
    assert_eq!(element.data_type, AbstractDataType::OctetArray);
}

#[test]
fn collector_column_constants_match_the_registry() {
    let constants = [
        (ids::OCTET_DELTA_COUNT, "octetDeltaCount"),
        (ids::PACKET_DELTA_COUNT, "packetDeltaCount"),
        (ids::PROTOCOL_IDENTIFIER, "protocolIdentifier"),
        (ids::IP_CLASS_OF_SERVICE, "ipClassOfService"),
        (ids::TCP_CONTROL_BITS, "tcpControlBits"),
        (ids::SOURCE_TRANSPORT_PORT, "sourceTransportPort"),
        (ids::SOURCE_IPV4_ADDRESS, "sourceIPv4Address"),
        (ids::DESTINATION_TRANSPORT_PORT, "destinationTransportPort"),
        (ids::DESTINATION_IPV4_ADDRESS, "destinationIPv4Address"),
        (ids::INGRESS_INTERFACE, "ingressInterface"),
        (ids::EGRESS_INTERFACE, "egressInterface"),
        (ids::SOURCE_IPV6_ADDRESS, "sourceIPv6Address"),
        (ids::DESTINATION_IPV6_ADDRESS, "destinationIPv6Address"),
        (ids::FLOW_START_SECONDS, "flowStartSeconds"),
        (ids::FLOW_END_SECONDS, "flowEndSeconds"),
        (ids::FLOW_START_MILLISECONDS, "flowStartMilliseconds"),
        (ids::FLOW_END_MILLISECONDS, "flowEndMilliseconds"),
        (ids::FLOW_START_MICROSECONDS, "flowStartMicroseconds"),
        (ids::FLOW_END_MICROSECONDS, "flowEndMicroseconds"),
        (ids::FLOW_START_NANOSECONDS, "flowStartNanoseconds"),
        (ids::FLOW_END_NANOSECONDS, "flowEndNanoseconds"),
        (ids::FLOW_START_SYS_UP_TIME, "flowStartSysUpTime"),
        (ids::FLOW_END_SYS_UP_TIME, "flowEndSysUpTime"),
        (
            ids::SYSTEM_INIT_TIME_MILLISECONDS,
            "systemInitTimeMilliseconds",
        ),
        (ids::OCTET_TOTAL_COUNT, "octetTotalCount"),
        (ids::PACKET_TOTAL_COUNT, "packetTotalCount"),
        (ids::PADDING_OCTETS, "paddingOctets"),
    ];
    for (id, name) in constants {
        assert_eq!(
            registry::lookup(0, id).map(|e| e.name),
            Some(name),
            "id {id}"
        );
    }
    assert_eq!(ids::FLOW_START_MILLISECONDS, 152);
    assert_eq!(ids::DESTINATION_IPV6_ADDRESS, 28);
}

#[test]
fn elements_decode_by_their_registry_type() {
    // octetDeltaCount in 4 bytes (reduced size, as NetFlow v9 exporters send it).
    assert_eq!(
        decode_element(0, ids::OCTET_DELTA_COUNT, &[0, 1, 0, 0]),
        Ok(Value::Unsigned(65_536))
    );
    // tcpControlBits (unsigned16) in one byte.
    assert_eq!(
        decode_element(0, ids::TCP_CONTROL_BITS, &[0x12]),
        Ok(Value::Unsigned(0x12))
    );
    // Three bytes are no IPv4 address.
    assert!(matches!(
        decode_element(0, ids::SOURCE_IPV4_ADDRESS, &[10, 0, 0]),
        Err(ValueError::InvalidLength { length: 3, .. })
    ));
    let raw = 1_700_000_000_123u64.to_be_bytes();
    let start = decode_element(0, ids::FLOW_START_MILLISECONDS, &raw).unwrap();
    assert_eq!(start.to_unix_millis(), Some(1_700_000_000_123));
    assert_eq!(start.to_string(), "2023-11-14T22:13:20.123Z");
}
