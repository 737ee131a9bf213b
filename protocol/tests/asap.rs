//! ASAP codec (RFC 5352) and RFC 5354 parameter tests: round trips for every
//! message type and parameter, hand-built golden bytes, malformed input, the
//! unknown-parameter rules, and "never panics" on arbitrary bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use protocol::rserpool::asap::Message;
use protocol::rserpool::params::{self, Parameter, cause_code, param_type};
use protocol::rserpool::{
    DecodeError, ErrorCause, Limits, OperationError, PoolElement, PoolHandle, SelectionPolicy,
    ServerInformation, TransportAddress, TransportKind, TransportUse, UnknownParameterAction,
};

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn pool_handle() -> impl Strategy<Value = PoolHandle> {
    prop::collection::vec(any::<u8>(), 0..=32).prop_map(PoolHandle)
}

fn ip_address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<[u8; 16]>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn transport_use() -> impl Strategy<Value = TransportUse> {
    prop_oneof![
        Just(TransportUse::DataOnly),
        Just(TransportUse::DataPlusControl)
    ]
}

fn transport() -> impl Strategy<Value = TransportAddress> {
    let sctp = (
        transport_use(),
        any::<u16>(),
        prop::collection::vec(ip_address(), 1..4),
    )
        .prop_map(|(usage, port, addresses)| TransportAddress {
            kind: TransportKind::Sctp(usage),
            port,
            addresses,
        });
    let single_kind = prop_oneof![
        transport_use().prop_map(TransportKind::Tcp),
        Just(TransportKind::Udp),
        Just(TransportKind::UdpLite),
        any::<u32>().prop_map(|service_code| TransportKind::Dccp { service_code }),
    ];
    let single = (single_kind, any::<u16>(), ip_address()).prop_map(|(kind, port, address)| {
        TransportAddress {
            kind,
            port,
            addresses: vec![address],
        }
    });
    prop_oneof![sctp, single]
}

fn policy() -> impl Strategy<Value = SelectionPolicy> {
    (any::<u32>(), prop::collection::vec(any::<u8>(), 0..13))
        .prop_map(|(policy_type, value)| SelectionPolicy { policy_type, value })
}

fn pool_element() -> impl Strategy<Value = PoolElement> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<i32>(),
        transport(),
        policy(),
        prop::option::of(transport()),
    )
        .prop_map(
            |(pe_identifier, home, registration_life, user_transport, policy, asap_transport)| {
                PoolElement {
                    pe_identifier,
                    home_enrp_server_identifier: home,
                    registration_life,
                    user_transport,
                    policy,
                    asap_transport,
                }
            },
        )
}

fn operation_error() -> impl Strategy<Value = OperationError> {
    prop::collection::vec(
        (any::<u16>(), prop::collection::vec(any::<u8>(), 0..11))
            .prop_map(|(code, info)| ErrorCause { code, info }),
        1..4,
    )
    .prop_map(|causes| OperationError { causes })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

fn parameter() -> impl Strategy<Value = Parameter> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| Parameter::Ipv4Address(a.into())),
        any::<[u8; 16]>().prop_map(|a| Parameter::Ipv6Address(a.into())),
        transport().prop_map(Parameter::Transport),
        policy().prop_map(Parameter::SelectionPolicy),
        pool_handle().prop_map(Parameter::PoolHandle),
        pool_element().prop_map(Parameter::PoolElement),
        (any::<u32>(), transport()).prop_map(|(server_identifier, transport)| {
            Parameter::ServerInformation(ServerInformation {
                server_identifier,
                transport,
            })
        }),
        operation_error().prop_map(Parameter::OperationError),
        bytes().prop_map(Parameter::Cookie),
        any::<u32>().prop_map(Parameter::PeIdentifier),
        any::<u16>().prop_map(Parameter::PeChecksum),
        any::<u32>().prop_map(|items| Parameter::HandleResolutionOption { items }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (pool_handle(), pool_element()).prop_map(|(pool_handle, pool_element)| {
            Message::Registration {
                pool_handle,
                pool_element,
                membership: None,
            }
        }),
        (pool_handle(), any::<u32>()).prop_map(|(pool_handle, pe_identifier)| {
            Message::Deregistration {
                pool_handle,
                pe_identifier,
                membership: None,
            }
        }),
        (
            any::<bool>(),
            pool_handle(),
            any::<u32>(),
            prop::option::of(operation_error())
        )
            .prop_map(|(reject, pool_handle, pe_identifier, error)| {
                Message::RegistrationResponse {
                    reject,
                    pool_handle,
                    pe_identifier,
                    error,
                }
            }),
        (
            pool_handle(),
            any::<u32>(),
            prop::option::of(operation_error())
        )
            .prop_map(|(pool_handle, pe_identifier, error)| {
                Message::DeregistrationResponse {
                    pool_handle,
                    pe_identifier,
                    error,
                }
            }),
        (pool_handle(), prop::option::of(any::<u32>()))
            .prop_map(|(pool_handle, items)| Message::HandleResolution { pool_handle, items }),
        (
            any::<bool>(),
            pool_handle(),
            prop::option::of(policy()),
            prop::collection::vec(pool_element(), 0..4),
            prop::option::of(operation_error()),
        )
            .prop_map(|(reject, pool_handle, policy, pool_elements, error)| {
                Message::HandleResolutionResponse {
                    reject,
                    pool_handle,
                    policy,
                    pool_elements,
                    error,
                }
            }),
        (
            any::<bool>(),
            any::<u32>(),
            pool_handle(),
            prop::option::of(any::<u32>())
        )
            .prop_map(|(home, server_identifier, pool_handle, pe_identifier)| {
                Message::EndpointKeepAlive {
                    home,
                    server_identifier,
                    pool_handle,
                    pe_identifier,
                }
            }),
        (pool_handle(), any::<u32>()).prop_map(|(pool_handle, pe_identifier)| {
            Message::EndpointKeepAliveAck {
                pool_handle,
                pe_identifier,
            }
        }),
        (pool_handle(), any::<u32>()).prop_map(|(pool_handle, pe_identifier)| {
            Message::EndpointUnreachable {
                pool_handle,
                pe_identifier,
            }
        }),
        (any::<u32>(), prop::collection::vec(transport(), 0..3)).prop_map(
            |(server_identifier, transports)| Message::ServerAnnounce {
                server_identifier,
                transports,
            }
        ),
        bytes().prop_map(|cookie| Message::Cookie { cookie }),
        bytes().prop_map(|cookie| Message::CookieEcho { cookie }),
        (
            pool_handle(),
            prop::option::of(policy()),
            prop::collection::vec(pool_element(), 0..4)
        )
            .prop_map(|(pool_handle, policy, pool_elements)| {
                Message::BusinessCard {
                    pool_handle,
                    policy,
                    pool_elements,
                }
            }),
        operation_error().prop_map(|error| Message::Error { error }),
    ]
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn sample_pool_element() -> PoolElement {
    PoolElement {
        pe_identifier: 0x1234_5678,
        home_enrp_server_identifier: 0,
        registration_life: 30_000,
        user_transport: TransportAddress {
            kind: TransportKind::Sctp(TransportUse::DataPlusControl),
            port: 4739,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
        },
        policy: SelectionPolicy {
            policy_type: 0x0000_0001,
            value: vec![],
        },
        asap_transport: None,
    }
}

/// A message body built by hand: header with the right length around `body`.
fn raw_message(message_type: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let length = u16::try_from(4 + body.len()).expect("small test message");
    let mut out = vec![message_type, flags];
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn raw_tlv(tlv_type: u16, value: &[u8]) -> Vec<u8> {
    let length = u16::try_from(4 + value.len()).expect("small test TLV");
    let mut out = tlv_type.to_be_bytes().to_vec();
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
    out
}

fn handle_tlv(handle: &str) -> Vec<u8> {
    raw_tlv(param_type::POOL_HANDLE, handle.as_bytes())
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(message in message()) {
        let bytes = message.to_bytes();
        // Header length is the whole message; everything is 4-byte aligned.
        prop_assert_eq!(usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), bytes.len());
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(bytes[0], message.message_type());
        prop_assert_eq!(Message::decode(&bytes)?, message);
    }

    #[test]
    fn every_parameter_round_trips_with_padding(parameter in parameter()) {
        let mut bytes = Vec::new();
        parameter.encode(&mut bytes);
        let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        prop_assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), parameter.param_type());
        // The length counts header and value but not the padding, and the
        // padding (zeros) brings the TLV to a multiple of 4.
        prop_assert_eq!(bytes.len(), length + (4 - length % 4) % 4);
        prop_assert!(bytes[length..].iter().all(|&b| b == 0));
        prop_assert_eq!(Parameter::decode(&bytes)?, parameter.clone());
        // The last TLV of a container may come without its padding.
        prop_assert_eq!(Parameter::decode(&bytes[..length])?, parameter);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::decode(&bytes);
        let _ = Parameter::decode(&bytes);
        let _ = params::decode_parameter_list(&bytes, &Limits::default());
    }

    #[test]
    fn arbitrary_body_behind_a_valid_header_never_panics(
        message_type in 0u8..16,
        flags in any::<u8>(),
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let _ = Message::decode(&raw_message(message_type, flags, &body));
    }

    #[test]
    fn corrupted_messages_never_panic(
        message in message(),
        position in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = message.to_bytes();
        let at = position.index(bytes.len());
        bytes[at] = value;
        let _ = Message::decode(&bytes);
        let _ = Message::decode(&bytes[..cut.index(bytes.len() + 1)]);
    }
}

// ---------------------------------------------------------------------------
// Golden bytes, built by hand from the RFC 5352 / RFC 5354 layouts
// ---------------------------------------------------------------------------

#[test]
fn deregistration_matches_hand_built_bytes() {
    let message = Message::Deregistration {
        pool_handle: "ipfix".into(),
        pe_identifier: 0xdead_beef,
        membership: None,
    };
    let expected = [
        0x02, 0x00, 0x00, 0x18, // type 2, flags 0, length 24
        0x00, 0x09, 0x00, 0x09, b'i', b'p', b'f', b'i', b'x', 0, 0, 0, // pool handle + pad
        0x00, 0x0e, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef, // PE identifier
    ];
    assert_eq!(message.to_bytes(), expected);
    assert_eq!(Message::decode(&expected).unwrap(), message);
}

#[test]
fn keep_alive_carries_server_id_before_parameters_and_home_flag() {
    let message = Message::EndpointKeepAlive {
        home: true,
        server_identifier: 0x0102_0304,
        pool_handle: "p".into(),
        pe_identifier: None,
    };
    let expected = [
        0x07, 0x01, 0x00, 0x10, // type 7, H flag, length 16
        0x01, 0x02, 0x03, 0x04, // server identifier
        0x00, 0x09, 0x00, 0x05, b'p', 0, 0, 0, // pool handle
    ];
    assert_eq!(message.to_bytes(), expected);
    assert_eq!(Message::decode(&expected).unwrap(), message);
}

#[test]
fn registration_matches_hand_built_bytes() {
    let message = Message::Registration {
        pool_handle: "ab".into(),
        pool_element: sample_pool_element(),
        membership: None,
    };
    let mut expected = raw_message(0x01, 0, &[]);
    let mut body = handle_tlv("ab");
    let mut pe_value = vec![0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0, 0, 0x75, 0x30];
    let mut sctp_value = vec![0x12, 0x83, 0x00, 0x01]; // port 4739, data plus control
    sctp_value.extend(raw_tlv(param_type::IPV4_ADDRESS, &[10, 0, 0, 1]));
    pe_value.extend(raw_tlv(param_type::SCTP_TRANSPORT, &sctp_value));
    pe_value.extend(raw_tlv(
        param_type::POOL_MEMBER_SELECTION_POLICY,
        &[0, 0, 0, 1],
    ));
    body.extend(raw_tlv(param_type::POOL_ELEMENT, &pe_value));
    expected.extend(&body);
    let length = u16::try_from(expected.len()).unwrap();
    expected[2..4].copy_from_slice(&length.to_be_bytes());
    assert_eq!(message.to_bytes(), expected);
    assert_eq!(Message::decode(&expected).unwrap(), message);
}

#[test]
fn dccp_transport_has_reserved_word_then_32_bit_service_code() {
    let transport = Parameter::Transport(TransportAddress {
        kind: TransportKind::Dccp {
            service_code: 0x1122_3344,
        },
        port: 7,
        addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    });
    let mut bytes = Vec::new();
    transport.encode(&mut bytes);
    assert_eq!(
        bytes,
        [
            0x00, 0x03, 0x00, 0x14, 0x00, 0x07, 0x00, 0x00, 0x11, 0x22, 0x33, 0x44, 0x00, 0x01,
            0x00, 0x08, 127, 0, 0, 1
        ]
    );
}

#[test]
fn pe_checksum_is_six_bytes_plus_padding() {
    let mut bytes = Vec::new();
    Parameter::PeChecksum(0xabcd).encode(&mut bytes);
    assert_eq!(bytes, [0x00, 0x0f, 0x00, 0x06, 0xab, 0xcd, 0, 0]);
}

#[test]
fn handle_resolution_option_is_sent_as_0x803f() {
    let message = Message::HandleResolution {
        pool_handle: "p".into(),
        items: Some(3),
    };
    let bytes = message.to_bytes();
    assert_eq!(&bytes[12..20], &[0x80, 0x3f, 0x00, 0x08, 0, 0, 0, 3]);
}

#[test]
fn constants_match_the_rfcs() {
    use protocol::rserpool::*;
    assert_eq!(ASAP_SCTP_PPID, 11);
    assert_eq!(ENRP_SCTP_PPID, 12);
    assert_eq!(ASAP_PORT, 3863);
    assert_eq!(ENRP_PORT, 9901);
    assert_eq!(asap::msg_type::REGISTRATION, 0x01);
    assert_eq!(asap::msg_type::ERROR, 0x0e);
    assert_eq!(param_type::PE_CHECKSUM, 0x0f);
    assert_eq!(param_type::HANDLE_RESOLUTION_OPTION, 0x803f);
}

// ---------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------

#[test]
fn truncated_header_is_reported() {
    assert_eq!(
        Message::decode(&[0x02, 0x00]),
        Err(DecodeError::Truncated {
            what: "message header"
        })
    );
}

#[test]
fn length_beyond_the_bytes_is_a_bad_length() {
    let mut bytes = Message::Cookie { cookie: vec![1; 8] }.to_bytes();
    bytes.truncate(bytes.len() - 4);
    assert!(matches!(
        Message::decode(&bytes),
        Err(DecodeError::BadMessageLength { .. })
    ));
    assert!(matches!(
        Message::decode(&[0x0b, 0, 0, 2]),
        Err(DecodeError::BadMessageLength { length: 2, .. })
    ));
}

#[test]
fn trailing_garbage_is_rejected_but_padding_is_not() {
    let mut bytes = Message::Cookie { cookie: vec![7] }.to_bytes();
    // A sender that left the last padding out of the message length.
    let unpadded = bytes.len() - 3;
    bytes[2..4].copy_from_slice(&u16::try_from(unpadded).unwrap().to_be_bytes());
    assert_eq!(
        Message::decode(&bytes).unwrap(),
        Message::Cookie { cookie: vec![7] }
    );
    bytes.extend_from_slice(&[0; 4]);
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::TrailingBytes { extra: 7 })
    );
}

#[test]
fn unknown_message_type_is_named() {
    assert_eq!(
        Message::decode(&raw_message(0x0f, 0, &[])),
        Err(DecodeError::UnknownMessageType(0x0f))
    );
    assert_eq!(
        Message::decode(&raw_message(0x00, 0, &[])),
        Err(DecodeError::UnknownMessageType(0x00))
    );
}

#[test]
fn parameter_overrun_is_detected() {
    let mut body = handle_tlv("pool");
    body.extend_from_slice(&[0x00, 0x0e, 0x00, 0x40, 0, 0, 0, 1]); // claims 64 bytes
    assert_eq!(
        Message::decode(&raw_message(0x02, 0, &body)),
        Err(DecodeError::ParameterOverrun {
            param_type: param_type::PE_IDENTIFIER,
            length: 0x40,
            available: 8,
        })
    );
}

#[test]
fn parameter_length_below_header_is_bad() {
    let body = [0x00, 0x09, 0x00, 0x02, 0, 0, 0, 0];
    assert_eq!(
        Message::decode(&raw_message(0x05, 0, &body)),
        Err(DecodeError::BadParameterLength {
            param_type: param_type::POOL_HANDLE,
            length: 2
        })
    );
}

#[test]
fn missing_mandatory_parameter_is_named() {
    let body = handle_tlv("pool");
    assert_eq!(
        Message::decode(&raw_message(0x02, 0, &body)),
        Err(DecodeError::MissingParameter {
            context: "ASAP Deregistration",
            parameter: "PE identifier"
        })
    );
    assert_eq!(
        Message::decode(&raw_message(0x0b, 0, &[])),
        Err(DecodeError::MissingParameter {
            context: "ASAP Cookie",
            parameter: "cookie"
        })
    );
}

#[test]
fn duplicate_or_foreign_parameter_is_unexpected() {
    let mut body = handle_tlv("pool");
    body.extend(raw_tlv(param_type::PE_IDENTIFIER, &[0, 0, 0, 1]));
    body.extend(raw_tlv(param_type::PE_IDENTIFIER, &[0, 0, 0, 2]));
    assert_eq!(
        Message::decode(&raw_message(0x02, 0, &body)),
        Err(DecodeError::UnexpectedParameter {
            context: "ASAP Deregistration",
            param_type: param_type::PE_IDENTIFIER
        })
    );
}

#[test]
fn pool_handle_longer_than_the_limit_is_rejected() {
    let long = "x".repeat(33);
    let body = handle_tlv(&long);
    assert_eq!(
        Message::decode(&raw_message(0x05, 0, &body)),
        Err(DecodeError::PoolHandleTooLong {
            length: 33,
            max: 32
        })
    );
    let generous = Limits {
        max_pool_handle_len: 64,
        ..Limits::default()
    };
    let decoded = Message::decode_with(&raw_message(0x05, 0, &body), &generous).unwrap();
    assert_eq!(
        decoded.message,
        Message::HandleResolution {
            pool_handle: long.as_str().into(),
            items: None
        }
    );
}

#[test]
fn oversized_message_and_too_many_parameters_are_rejected() {
    let message = Message::Cookie {
        cookie: vec![0; 200],
    };
    let small = Limits {
        max_message_size: 100,
        ..Limits::default()
    };
    assert_eq!(
        Message::decode_with(&message.to_bytes(), &small),
        Err(DecodeError::MessageTooLarge {
            length: 208,
            max: 100
        })
    );

    let card = Message::BusinessCard {
        pool_handle: "p".into(),
        policy: None,
        pool_elements: vec![sample_pool_element(); 5],
    };
    // Each PE counts itself, its transport, its address and its policy.
    let few = Limits {
        max_parameters: 10,
        ..Limits::default()
    };
    assert_eq!(
        Message::decode_with(&card.to_bytes(), &few),
        Err(DecodeError::TooManyParameters { max: 10 })
    );
    assert_eq!(Message::decode(&card.to_bytes()).unwrap(), card);
}

#[test]
fn fixed_size_values_must_have_their_size() {
    let body = raw_tlv(param_type::IPV4_ADDRESS, &[1, 2, 3]);
    assert_eq!(
        Parameter::decode(&body),
        Err(DecodeError::WrongValueLength {
            param_type: param_type::IPV4_ADDRESS,
            expected: 4,
            actual: 3
        })
    );
}

#[test]
fn transport_address_count_and_use_are_checked() {
    // TCP with two addresses: only SCTP may be multi-homed.
    let mut value = vec![0x00, 0x50, 0x00, 0x00];
    value.extend(raw_tlv(param_type::IPV4_ADDRESS, &[1, 1, 1, 1]));
    value.extend(raw_tlv(param_type::IPV4_ADDRESS, &[2, 2, 2, 2]));
    assert_eq!(
        Parameter::decode(&raw_tlv(param_type::TCP_TRANSPORT, &value)),
        Err(DecodeError::BadAddressCount {
            transport: "TCP",
            count: 2
        })
    );
    // SCTP without any address.
    assert_eq!(
        Parameter::decode(&raw_tlv(param_type::SCTP_TRANSPORT, &[0, 1, 0, 0])),
        Err(DecodeError::BadAddressCount {
            transport: "SCTP",
            count: 0
        })
    );
    // Transport use 2 is not defined.
    let mut value = vec![0x00, 0x50, 0x00, 0x02];
    value.extend(raw_tlv(param_type::IPV4_ADDRESS, &[1, 1, 1, 1]));
    assert_eq!(
        Parameter::decode(&raw_tlv(param_type::SCTP_TRANSPORT, &value)),
        Err(DecodeError::InvalidValue {
            what: "transport use",
            value: 2
        })
    );
}

#[test]
fn pool_element_without_policy_is_missing_a_parameter() {
    let mut value = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut udp = vec![0x00, 0x35, 0x00, 0x00];
    udp.extend(raw_tlv(param_type::IPV4_ADDRESS, &[1, 1, 1, 1]));
    value.extend(raw_tlv(param_type::UDP_TRANSPORT, &udp));
    assert_eq!(
        Parameter::decode(&raw_tlv(param_type::POOL_ELEMENT, &value)),
        Err(DecodeError::MissingParameter {
            context: "pool element",
            parameter: "member selection policy"
        })
    );
}

#[test]
fn rsplib_error_causes_are_tolerated() {
    let error = OperationError {
        causes: vec![
            ErrorCause {
                code: cause_code::RSPLIB_INVALID_MESSAGE,
                info: vec![],
            },
            ErrorCause {
                code: cause_code::RSPLIB_INVALID_VALUE,
                info: vec![1, 2, 3],
            },
        ],
    };
    let message = Message::Error { error };
    assert_eq!(Message::decode(&message.to_bytes()).unwrap(), message);
}

// ---------------------------------------------------------------------------
// Unknown parameters (RFC 5354 §2)
// ---------------------------------------------------------------------------

fn deregistration_with_unknown(unknown_type: u16) -> Vec<u8> {
    let mut body = handle_tlv("pool");
    body.extend(raw_tlv(unknown_type, &[9, 9, 9]));
    body.extend(raw_tlv(param_type::PE_IDENTIFIER, &[0, 0, 0, 5]));
    raw_message(0x02, 0, &body)
}

#[test]
fn unknown_parameter_action_comes_from_the_two_high_bits() {
    assert_eq!(
        UnknownParameterAction::of_type(0x0123),
        UnknownParameterAction::StopAndDiscard
    );
    assert_eq!(
        UnknownParameterAction::of_type(0x4123),
        UnknownParameterAction::StopDiscardAndReport
    );
    assert_eq!(
        UnknownParameterAction::of_type(0x8123),
        UnknownParameterAction::Skip
    );
    assert_eq!(
        UnknownParameterAction::of_type(0xc123),
        UnknownParameterAction::SkipAndReport
    );
}

#[test]
fn unknown_parameter_00_stops_silently() {
    match Message::decode(&deregistration_with_unknown(0x0123)) {
        Err(DecodeError::UnrecognizedParameter { parameter }) => {
            assert_eq!(parameter.param_type, 0x0123);
            assert!(!parameter.action().reports());
        }
        other => panic!("expected a stop, got {other:?}"),
    }
}

#[test]
fn unknown_parameter_01_stops_and_reports_the_tlv() {
    match Message::decode(&deregistration_with_unknown(0x4123)) {
        Err(DecodeError::UnrecognizedParameter { parameter }) => {
            assert!(parameter.action().reports());
            // The TLV as received, without padding, ready for the cause.
            assert_eq!(parameter.tlv, [0x41, 0x23, 0x00, 0x07, 9, 9, 9]);
            let cause = ErrorCause::unrecognized_parameter(&parameter);
            assert_eq!(cause.code, cause_code::UNRECOGNIZED_PARAMETER);
        }
        other => panic!("expected a stop, got {other:?}"),
    }
}

#[test]
fn unknown_parameter_10_is_skipped_silently() {
    let decoded =
        Message::decode_with(&deregistration_with_unknown(0x8123), &Limits::default()).unwrap();
    assert_eq!(
        decoded.message,
        Message::Deregistration {
            pool_handle: "pool".into(),
            pe_identifier: 5,
            membership: None,
        }
    );
    assert_eq!(decoded.unrecognized.len(), 1);
    assert!(decoded.report_causes().is_empty());
}

#[test]
fn unknown_parameter_11_is_skipped_and_reported() {
    let decoded =
        Message::decode_with(&deregistration_with_unknown(0xc123), &Limits::default()).unwrap();
    assert_eq!(
        decoded.message,
        Message::Deregistration {
            pool_handle: "pool".into(),
            pe_identifier: 5,
            membership: None,
        }
    );
    assert_eq!(
        decoded.report_causes(),
        vec![ErrorCause {
            code: cause_code::UNRECOGNIZED_PARAMETER,
            info: vec![0xc1, 0x23, 0x00, 0x07, 9, 9, 9],
        }]
    );
}

#[test]
fn unknown_parameter_nested_in_a_pool_element_follows_the_same_rules() {
    let registration = Message::Registration {
        pool_handle: "p".into(),
        pool_element: sample_pool_element(),
        membership: None,
    };
    let clean = registration.to_bytes();
    // Append a skip-and-report TLV inside the Pool Element (the last TLV).
    let extra = raw_tlv(0xc0ff, &[1, 2, 3, 4]);
    let pe_start = 12; // header 4 + pool handle TLV 8
    let mut bytes = clean.clone();
    bytes.extend(&extra);
    let pe_length = u16::from_be_bytes([bytes[pe_start + 2], bytes[pe_start + 3]]);
    let new_pe_length = pe_length + u16::try_from(extra.len()).unwrap();
    bytes[pe_start + 2..pe_start + 4].copy_from_slice(&new_pe_length.to_be_bytes());
    let total = u16::try_from(bytes.len()).unwrap();
    bytes[2..4].copy_from_slice(&total.to_be_bytes());
    let decoded = Message::decode_with(&bytes, &Limits::default()).unwrap();
    assert_eq!(decoded.message, registration);
    assert_eq!(decoded.report_causes().len(), 1);
}

#[test]
fn oversized_encode_fails_cleanly() {
    let message = Message::Cookie {
        cookie: vec![0; 70_000],
    };
    let mut out = vec![1, 2, 3];
    assert!(message.try_encode(&mut out).is_err());
    assert_eq!(out, [1, 2, 3]);
}
