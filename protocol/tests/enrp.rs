//! ENRP codec tests (RFC 5353): round trips for every message type, golden
//! bytes built by hand, malformed input, and "never panics".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use protocol::rserpool::enrp::{self, Body, Message, PoolEntry, UpdateAction};
use protocol::rserpool::params::param_type;
use protocol::rserpool::{
    DecodeError, ErrorCause, Limits, OperationError, PoolElement, PoolHandle, SelectionPolicy,
    ServerInformation, TransportAddress, TransportKind, TransportUse,
};

fn pool_handle() -> impl Strategy<Value = PoolHandle> {
    prop::collection::vec(any::<u8>(), 0..=32).prop_map(PoolHandle)
}

fn ip_address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<[u8; 16]>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn sctp_transport() -> impl Strategy<Value = TransportAddress> {
    (
        prop_oneof![
            Just(TransportUse::DataOnly),
            Just(TransportUse::DataPlusControl)
        ],
        any::<u16>(),
        prop::collection::vec(ip_address(), 1..4),
    )
        .prop_map(|(usage, port, addresses)| TransportAddress {
            kind: TransportKind::Sctp(usage),
            port,
            addresses,
        })
}

fn user_transport() -> impl Strategy<Value = TransportAddress> {
    let single = (
        prop_oneof![
            Just(TransportKind::Tcp(TransportUse::DataOnly)),
            Just(TransportKind::Udp),
            Just(TransportKind::UdpLite),
            any::<u32>().prop_map(|service_code| TransportKind::Dccp { service_code }),
        ],
        any::<u16>(),
        ip_address(),
    )
        .prop_map(|(kind, port, address)| TransportAddress {
            kind,
            port,
            addresses: vec![address],
        });
    prop_oneof![sctp_transport(), single]
}

fn pool_element() -> impl Strategy<Value = PoolElement> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<i32>(),
        user_transport(),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..9)),
        prop::option::of(sctp_transport()),
    )
        .prop_map(
            |(pe_identifier, home, registration_life, user_transport, policy, asap_transport)| {
                PoolElement {
                    pe_identifier,
                    home_enrp_server_identifier: home,
                    registration_life,
                    user_transport,
                    policy: SelectionPolicy {
                        policy_type: policy.0,
                        value: policy.1,
                    },
                    asap_transport,
                }
            },
        )
}

fn server_information() -> impl Strategy<Value = ServerInformation> {
    (any::<u32>(), sctp_transport()).prop_map(|(server_identifier, transport)| ServerInformation {
        server_identifier,
        transport,
    })
}

fn operation_error() -> impl Strategy<Value = OperationError> {
    prop::collection::vec(
        (any::<u16>(), prop::collection::vec(any::<u8>(), 0..11))
            .prop_map(|(code, info)| ErrorCause { code, info }),
        1..4,
    )
    .prop_map(|causes| OperationError { causes })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (
            any::<bool>(),
            any::<u16>(),
            prop::option::of(server_information())
        )
            .prop_map(
                |(reply_required, pe_checksum, server_information)| Body::Presence {
                    reply_required,
                    pe_checksum,
                    server_information,
                }
            ),
        any::<bool>().prop_map(|own_children_only| Body::HandleTableRequest { own_children_only }),
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(
                (pool_handle(), prop::collection::vec(pool_element(), 1..3)).prop_map(
                    |(pool_handle, pool_elements)| PoolEntry {
                        pool_handle,
                        pool_elements,
                        memberships: Vec::new(),
                    }
                ),
                0..3,
            ),
        )
            .prop_map(
                |(reject, more_to_send, pool_entries)| Body::HandleTableResponse {
                    reject,
                    more_to_send,
                    pool_entries,
                }
            ),
        (
            any::<bool>(),
            prop_oneof![Just(UpdateAction::AddPe), Just(UpdateAction::DeletePe)],
            pool_handle(),
            pool_element(),
        )
            .prop_map(|(takeover_suggested, action, pool_handle, pool_element)| {
                Body::HandleUpdate {
                    takeover_suggested,
                    action,
                    pool_handle,
                    pool_element,
                    membership: None,
                }
            }),
        Just(Body::ListRequest),
        (
            any::<bool>(),
            prop::collection::vec(server_information(), 0..4)
        )
            .prop_map(|(reject, servers)| Body::ListResponse { reject, servers }),
        any::<u32>().prop_map(|target_server_id| Body::InitTakeover { target_server_id }),
        any::<u32>().prop_map(|target_server_id| Body::InitTakeoverAck { target_server_id }),
        any::<u32>().prop_map(|target_server_id| Body::TakeoverServer { target_server_id }),
        operation_error().prop_map(|error| Body::Error { error }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u32>(), any::<u32>(), body()).prop_map(|(sender, receiver, body)| Message {
        sender_server_id: sender,
        receiver_server_id: receiver,
        body,
    })
}

fn raw_message(message_type: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let length = u16::try_from(4 + body.len()).expect("small test message");
    let mut out = vec![message_type, flags];
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(body);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(message in message()) {
        let bytes = message.to_bytes();
        prop_assert_eq!(usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), bytes.len());
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(bytes[0], message.message_type());
        // Sender and receiver IDs follow the header in every message.
        prop_assert_eq!(&bytes[4..8], &message.sender_server_id.to_be_bytes());
        prop_assert_eq!(&bytes[8..12], &message.receiver_server_id.to_be_bytes());
        prop_assert_eq!(Message::decode(&bytes)?, message);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn arbitrary_body_behind_a_valid_header_never_panics(
        message_type in 0u8..12,
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

#[test]
fn init_takeover_matches_hand_built_bytes() {
    let message = Message {
        sender_server_id: 1,
        receiver_server_id: 2,
        body: Body::InitTakeover {
            target_server_id: 0xcafe_f00d,
        },
    };
    let expected = [
        0x07, 0x00, 0x00, 0x10, 0, 0, 0, 1, 0, 0, 0, 2, 0xca, 0xfe, 0xf0, 0x0d,
    ];
    assert_eq!(message.to_bytes(), expected);
    assert_eq!(Message::decode(&expected).unwrap(), message);
}

#[test]
fn presence_matches_hand_built_bytes() {
    let message = Message {
        sender_server_id: 0x11,
        receiver_server_id: 0,
        body: Body::Presence {
            reply_required: true,
            pe_checksum: 0xbeef,
            server_information: None,
        },
    };
    let expected = [
        0x01, 0x01, 0x00, 0x14, // type 1, R flag, length 20
        0, 0, 0, 0x11, 0, 0, 0, 0, // sender, receiver
        0x00, 0x0f, 0x00, 0x06, 0xbe, 0xef, 0, 0, // PE checksum + pad
    ];
    assert_eq!(message.to_bytes(), expected);
    assert_eq!(Message::decode(&expected).unwrap(), message);
}

#[test]
fn handle_table_response_flags_are_r_0x01_and_m_0x02() {
    let message = Message {
        sender_server_id: 1,
        receiver_server_id: 2,
        body: Body::HandleTableResponse {
            reject: false,
            more_to_send: true,
            pool_entries: vec![],
        },
    };
    assert_eq!(
        message.to_bytes()[1],
        enrp::flags::HANDLE_TABLE_RESPONSE_MORE_TO_SEND
    );
    assert_eq!(enrp::flags::HANDLE_TABLE_RESPONSE_MORE_TO_SEND, 0x02);
    assert_eq!(enrp::flags::HANDLE_TABLE_RESPONSE_REJECT, 0x01);
}

#[test]
fn handle_update_has_action_and_reserved_before_parameters() {
    let pool_element = PoolElement {
        pe_identifier: 9,
        home_enrp_server_identifier: 1,
        registration_life: -1,
        user_transport: TransportAddress {
            kind: TransportKind::Udp,
            port: 4739,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
        },
        policy: SelectionPolicy {
            policy_type: 5,
            value: vec![0, 0, 0, 7],
        },
        asap_transport: None,
    };
    let message = Message {
        sender_server_id: 1,
        receiver_server_id: 2,
        body: Body::HandleUpdate {
            takeover_suggested: false,
            action: UpdateAction::DeletePe,
            pool_handle: "p".into(),
            pool_element,
            membership: None,
        },
    };
    let bytes = message.to_bytes();
    assert_eq!(&bytes[12..16], &[0x00, 0x01, 0x00, 0x00]);
    assert_eq!(&bytes[16..18], &param_type::POOL_HANDLE.to_be_bytes());
    assert_eq!(Message::decode(&bytes).unwrap(), message);

    // Update action 2 is not defined by RFC 5353.
    let mut bad = bytes.clone();
    bad[13] = 2;
    assert_eq!(
        Message::decode(&bad),
        Err(DecodeError::InvalidValue {
            what: "update action",
            value: 2
        })
    );
}

#[test]
fn truncated_server_ids_are_reported() {
    assert_eq!(
        Message::decode(&raw_message(0x05, 0, &[0, 0, 0, 1])),
        Err(DecodeError::Truncated {
            what: "receiving server's ID"
        })
    );
    assert_eq!(
        Message::decode(&raw_message(0x07, 0, &[0, 0, 0, 1, 0, 0, 0, 2])),
        Err(DecodeError::Truncated {
            what: "target server's ID"
        })
    );
}

#[test]
fn unknown_message_type_is_named() {
    assert_eq!(
        Message::decode(&raw_message(0x0b, 0, &[0; 8])),
        Err(DecodeError::UnknownMessageType(0x0b))
    );
}

#[test]
fn presence_without_checksum_is_missing_a_parameter() {
    assert_eq!(
        Message::decode(&raw_message(0x01, 0, &[0; 8])),
        Err(DecodeError::MissingParameter {
            context: "ENRP Presence",
            parameter: "PE checksum"
        })
    );
}

#[test]
fn pool_element_before_any_pool_handle_is_rejected() {
    let message = Message {
        sender_server_id: 1,
        receiver_server_id: 2,
        body: Body::HandleUpdate {
            takeover_suggested: false,
            action: UpdateAction::AddPe,
            pool_handle: "p".into(),
            pool_element: PoolElement {
                pe_identifier: 1,
                home_enrp_server_identifier: 1,
                registration_life: 1,
                user_transport: TransportAddress {
                    kind: TransportKind::Udp,
                    port: 1,
                    addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                },
                policy: SelectionPolicy {
                    policy_type: 1,
                    value: vec![],
                },
                asap_transport: None,
            },
            membership: None,
        },
    };
    // Reuse the Pool Element TLV of a Handle Update (after action, reserved
    // and the 8-byte pool handle) as a Handle Table Response body.
    let update = message.to_bytes();
    let pe_tlv = &update[24..];
    let mut body = vec![0, 0, 0, 1, 0, 0, 0, 2];
    body.extend_from_slice(pe_tlv);
    assert_eq!(
        Message::decode(&raw_message(0x03, 0, &body)),
        Err(DecodeError::MissingParameter {
            context: "ENRP Handle Table Response",
            parameter: "pool handle before pool element"
        })
    );
}

#[test]
fn unknown_skip_parameter_in_list_response_is_collected() {
    let mut body = vec![0, 0, 0, 1, 0, 0, 0, 2];
    body.extend_from_slice(&[0x80, 0x42, 0x00, 0x04]);
    let decoded = Message::decode_with(&raw_message(0x06, 0x01, &body), &Limits::default())
        .expect("a skippable unknown parameter does not stop decoding");
    assert_eq!(
        decoded.message.body,
        Body::ListResponse {
            reject: true,
            servers: vec![]
        }
    );
    assert_eq!(decoded.unrecognized.len(), 1);
    assert_eq!(decoded.unrecognized[0].param_type, 0x8042);
}
