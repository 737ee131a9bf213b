//! Golden test against Wireshark: every ASAP and ENRP message type we encode
//! is written into a pcap (Ethernet/IPv4/UDP to port 3863 for ASAP, 9901 for
//! ENRP — the UDP ports Wireshark 4.0 registers both dissectors on), then
//! `tshark` must dissect each frame with the expected message type and key
//! field values, and report no malformed packet and no expert error.
//!
//! Skips (with a message) when tshark is not installed. Set
//! `POOLFLOW_KEEP_PCAP=1` to keep the pcap for a look in Wireshark.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::rserpool::enrp::{self, Body, PoolEntry, UpdateAction};
use protocol::rserpool::{
    ASAP_PORT, ENRP_PORT, ErrorCause, OperationError, PoolElement, PoolHandle, SelectionPolicy,
    ServerInformation, TransportAddress, TransportKind, TransportUse, asap, params::cause_code,
};

const TSHARK: &str = "/usr/bin/tshark";

// ---------------------------------------------------------------------------
// pcap writing
// ---------------------------------------------------------------------------

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One Ethernet/IPv4/UDP frame carrying `payload` to `dst_port`.
fn udp_frame(payload: &[u8], src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    frame.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4

    let udp_length = 8 + payload.len();
    let ip_length = 20 + udp_length;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&u16::try_from(ip_length).unwrap().to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0]); // id 1, don't fragment
    ip.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum placeholder
    ip.extend_from_slice(&[192, 0, 2, 1]);
    ip.extend_from_slice(&[192, 0, 2, 2]);
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);

    frame.extend_from_slice(&src_port.to_be_bytes());
    frame.extend_from_slice(&dst_port.to_be_bytes());
    frame.extend_from_slice(&u16::try_from(udp_length).unwrap().to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    frame.extend_from_slice(payload);
    frame
}

/// A classic pcap file (microsecond timestamps, Ethernet link type).
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut file = Vec::new();
    file.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    file.extend_from_slice(&2u16.to_le_bytes());
    file.extend_from_slice(&4u16.to_le_bytes());
    file.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    file.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    file.extend_from_slice(&65_535u32.to_le_bytes()); // snaplen
    file.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (index, frame) in frames.iter().enumerate() {
        let length = u32::try_from(frame.len()).unwrap();
        file.extend_from_slice(&(1_700_000_000u32 + u32::try_from(index).unwrap()).to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(&length.to_le_bytes());
        file.extend_from_slice(&length.to_le_bytes());
        file.extend_from_slice(frame);
    }
    std::fs::write(path, file).expect("write pcap");
}

fn pcap_path() -> PathBuf {
    let dir = std::env::temp_dir();
    dir.join(format!("poolflow-rserpool-{}.pcap", std::process::id()))
}

fn tshark(args: &[&str]) -> String {
    let output = Command::new(TSHARK)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .expect("run tshark");
    assert!(
        output.status.success(),
        "tshark {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("tshark prints UTF-8")
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sctp(port: u16, addresses: Vec<IpAddr>) -> TransportAddress {
    TransportAddress {
        kind: TransportKind::Sctp(TransportUse::DataPlusControl),
        port,
        addresses,
    }
}

fn collector(pe_identifier: u32, kind: TransportKind, address: IpAddr) -> PoolElement {
    PoolElement {
        pe_identifier,
        home_enrp_server_identifier: 0x0000_0a01,
        registration_life: 30_000,
        user_transport: TransportAddress {
            kind,
            port: 4739,
            addresses: vec![address],
        },
        policy: SelectionPolicy {
            policy_type: 0x0000_0005, // Priority (RSPLIB/Wireshark numbering)
            value: 10u32.to_be_bytes().to_vec(),
        },
        asap_transport: Some(sctp(3863, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))])),
    }
}

fn multihomed_collector() -> PoolElement {
    PoolElement {
        pe_identifier: 0x0000_0042,
        home_enrp_server_identifier: 0,
        registration_life: 15_000,
        user_transport: sctp(
            4739,
            vec![
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 42)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42)),
            ],
        ),
        policy: SelectionPolicy {
            policy_type: 0x4000_0001, // Least Used, load 25 %
            value: 0x4000_0000u32.to_be_bytes().to_vec(),
        },
        asap_transport: None,
    }
}

fn unknown_pool_handle_error() -> OperationError {
    OperationError {
        causes: vec![ErrorCause {
            code: cause_code::UNKNOWN_POOL_HANDLE,
            info: vec![],
        }],
    }
}

/// Expected tshark fields of one frame: (field name, value) pairs.
type Expectation = Vec<(&'static str, String)>;

fn asap_cases() -> Vec<(asap::Message, Expectation)> {
    let handle = PoolHandle::from("ipfix-collectors");
    let handle_hex = hex(handle.as_bytes());
    let tcp_pe = collector(
        0x0000_0007,
        TransportKind::Tcp(TransportUse::DataOnly),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
    );
    let udp_pe = collector(
        0x0000_0008,
        TransportKind::Udp,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8)),
    );
    let udplite_pe = collector(
        0x0000_0009,
        TransportKind::UdpLite,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
    );
    let dccp_pe = collector(
        0x0000_000a,
        TransportKind::Dccp {
            service_code: 0x4950_4658,
        },
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)),
    );
    let cookie = b"exporter=7;domain=1;seq=123456".to_vec();
    vec![
        (
            asap::Message::Registration {
                pool_handle: handle.clone(),
                pool_element: multihomed_collector(),
                membership: None,
            },
            vec![
                ("asap.message_type", "1".into()),
                ("asap.pool_handle_pool_handle", handle_hex.clone()),
                ("asap.pool_element_pe_identifier", "0x00000042".into()),
                ("asap.pool_element_registration_life", "15000".into()),
                ("asap.sctp_transport_port", "4739".into()),
                ("asap.ipv4_address", "192.0.2.42".into()),
                ("asap.ipv6_address", "2001:db8::42".into()),
                (
                    "asap.pool_member_selection_policy_type",
                    "0x40000001".into(),
                ),
            ],
        ),
        (
            asap::Message::Deregistration {
                pool_handle: handle.clone(),
                pe_identifier: 0x42,
                membership: None,
            },
            vec![
                ("asap.message_type", "2".into()),
                ("asap.pool_handle_pool_handle", handle_hex.clone()),
                ("asap.pe_identifier", "0x00000042".into()),
            ],
        ),
        (
            asap::Message::RegistrationResponse {
                reject: true,
                pool_handle: handle.clone(),
                pe_identifier: 0x42,
                error: Some(OperationError {
                    causes: vec![ErrorCause {
                        code: cause_code::NON_UNIQUE_PE_IDENTIFIER,
                        info: vec![],
                    }],
                }),
            },
            vec![
                ("asap.message_type", "3".into()),
                ("asap.r_bit", "1".into()),
                ("asap.pe_identifier", "0x00000042".into()),
                ("asap.cause_code", "0x0004".into()),
            ],
        ),
        (
            asap::Message::DeregistrationResponse {
                pool_handle: handle.clone(),
                pe_identifier: 0x42,
                error: None,
            },
            vec![
                ("asap.message_type", "4".into()),
                ("asap.pool_handle_pool_handle", handle_hex.clone()),
                ("asap.pe_identifier", "0x00000042".into()),
            ],
        ),
        (
            asap::Message::HandleResolution {
                pool_handle: handle.clone(),
                items: Some(3),
            },
            vec![
                ("asap.message_type", "5".into()),
                ("asap.pool_handle_pool_handle", handle_hex.clone()),
                ("asap.hropt_items", "3".into()),
            ],
        ),
        (
            asap::Message::HandleResolutionResponse {
                reject: false,
                pool_handle: handle.clone(),
                // Round Robin: the one policy without policy-specific data.
                policy: Some(SelectionPolicy {
                    policy_type: 0x0000_0001,
                    value: vec![],
                }),
                pool_elements: vec![tcp_pe, udp_pe, udplite_pe, dccp_pe],
                error: None,
            },
            vec![
                ("asap.message_type", "6".into()),
                ("asap.pool_handle_pool_handle", handle_hex.clone()),
                (
                    "asap.pool_element_pe_identifier",
                    "0x00000007,0x00000008,0x00000009,0x0000000a".into(),
                ),
                ("asap.tcp_transport_port", "4739".into()),
                ("asap.udp_transport_port", "4739".into()),
                ("asap.udp_lite_transport_port", "4739".into()),
                ("asap.dccp_transport_port", "4739".into()),
                (
                    "asap.pool_member_selection_policy_priority",
                    "10,10,10,10".into(),
                ),
            ],
        ),
        (
            asap::Message::EndpointKeepAlive {
                home: true,
                server_identifier: 0x0000_0a01,
                pool_handle: handle.clone(),
                pe_identifier: Some(0x42),
            },
            vec![
                ("asap.message_type", "7".into()),
                ("asap.h_bit", "1".into()),
                ("asap.server_identifier", "0x00000a01".into()),
                ("asap.pool_handle_pool_handle", handle_hex.clone()),
                ("asap.pe_identifier", "0x00000042".into()),
            ],
        ),
        (
            asap::Message::EndpointKeepAliveAck {
                pool_handle: handle.clone(),
                pe_identifier: 0x42,
            },
            vec![
                ("asap.message_type", "8".into()),
                ("asap.pe_identifier", "0x00000042".into()),
            ],
        ),
        (
            asap::Message::EndpointUnreachable {
                pool_handle: handle.clone(),
                pe_identifier: 0x43,
            },
            vec![
                ("asap.message_type", "9".into()),
                ("asap.pe_identifier", "0x00000043".into()),
            ],
        ),
        (
            asap::Message::ServerAnnounce {
                server_identifier: 0x0000_0a01,
                transports: vec![sctp(3863, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))])],
            },
            vec![
                ("asap.message_type", "10".into()),
                ("asap.server_identifier", "0x00000a01".into()),
                ("asap.sctp_transport_port", "3863".into()),
                ("asap.ipv4_address", "192.0.2.1".into()),
            ],
        ),
        (
            asap::Message::Cookie {
                cookie: cookie.clone(),
            },
            vec![
                ("asap.message_type", "11".into()),
                ("asap.cookie", hex(&cookie)),
            ],
        ),
        (
            asap::Message::CookieEcho {
                cookie: cookie.clone(),
            },
            vec![
                ("asap.message_type", "12".into()),
                ("asap.cookie", hex(&cookie)),
            ],
        ),
        (
            asap::Message::BusinessCard {
                pool_handle: handle.clone(),
                policy: None,
                pool_elements: vec![multihomed_collector()],
            },
            vec![
                ("asap.message_type", "13".into()),
                ("asap.pool_handle_pool_handle", handle_hex.clone()),
                ("asap.pool_element_pe_identifier", "0x00000042".into()),
            ],
        ),
        (
            asap::Message::Error {
                error: unknown_pool_handle_error(),
            },
            vec![
                ("asap.message_type", "14".into()),
                ("asap.cause_code", "0x0009".into()),
            ],
        ),
    ]
}

fn enrp_cases() -> Vec<(enrp::Message, Expectation)> {
    let handle = PoolHandle::from("ipfix-collectors");
    let handle_hex = hex(handle.as_bytes());
    let peer = ServerInformation {
        server_identifier: 0x0000_0b02,
        transport: sctp(9901, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))]),
    };
    let message = |body: Body| enrp::Message {
        sender_server_id: 0x0000_0a01,
        receiver_server_id: 0x0000_0b02,
        body,
    };
    let ids = || {
        vec![
            ("enrp.sender_servers_id", "0x00000a01".to_string()),
            ("enrp.receiver_servers_id", "0x00000b02".to_string()),
        ]
    };
    let with_ids = |message_type: u8, more: Vec<(&'static str, String)>| {
        let mut fields = vec![("enrp.message_type", message_type.to_string())];
        fields.extend(ids());
        fields.extend(more);
        fields
    };
    vec![
        (
            message(Body::Presence {
                reply_required: true,
                pe_checksum: 0x1234,
                server_information: Some(peer.clone()),
            }),
            with_ids(
                1,
                vec![
                    ("enrp.r_bit", "1".into()),
                    ("enrp.pe_checksum", "0x1234".into()),
                    (
                        "enrp.server_information_server_identifier",
                        "0x00000b02".into(),
                    ),
                ],
            ),
        ),
        (
            message(Body::HandleTableRequest {
                own_children_only: true,
            }),
            with_ids(2, vec![("enrp.w_bit", "1".into())]),
        ),
        (
            message(Body::HandleTableResponse {
                reject: false,
                more_to_send: true,
                pool_entries: vec![PoolEntry {
                    pool_handle: handle.clone(),
                    pool_elements: vec![multihomed_collector()],
                    memberships: Vec::new(),
                }],
            }),
            with_ids(
                3,
                vec![
                    ("enrp.m_bit", "1".into()),
                    ("enrp.r_bit", "0".into()),
                    ("enrp.pool_handle_pool_handle", handle_hex.clone()),
                    ("enrp.pool_element_pe_identifier", "0x00000042".into()),
                ],
            ),
        ),
        (
            message(Body::HandleUpdate {
                takeover_suggested: false,
                action: UpdateAction::DeletePe,
                pool_handle: handle.clone(),
                pool_element: multihomed_collector(),
                membership: None,
            }),
            with_ids(
                4,
                vec![
                    ("enrp.update_action", "1".into()),
                    ("enrp.pool_handle_pool_handle", handle_hex.clone()),
                    ("enrp.pool_element_pe_identifier", "0x00000042".into()),
                ],
            ),
        ),
        (message(Body::ListRequest), with_ids(5, vec![])),
        (
            message(Body::ListResponse {
                reject: false,
                servers: vec![peer],
            }),
            with_ids(
                6,
                vec![(
                    "enrp.server_information_server_identifier",
                    "0x00000b02".into(),
                )],
            ),
        ),
        (
            message(Body::InitTakeover {
                target_server_id: 0x0000_0c03,
            }),
            with_ids(7, vec![("enrp.target_servers_id", "0x00000c03".into())]),
        ),
        (
            message(Body::InitTakeoverAck {
                target_server_id: 0x0000_0c03,
            }),
            with_ids(8, vec![("enrp.target_servers_id", "0x00000c03".into())]),
        ),
        (
            message(Body::TakeoverServer {
                target_server_id: 0x0000_0c03,
            }),
            with_ids(9, vec![("enrp.target_servers_id", "0x00000c03".into())]),
        ),
        (
            message(Body::Error {
                error: unknown_pool_handle_error(),
            }),
            with_ids(10, vec![("enrp.cause_code", "0x0009".into())]),
        ),
    ]
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn tshark_dissects_every_asap_and_enrp_message() {
    if !Path::new(TSHARK).exists() {
        eprintln!("SKIPPED: {TSHARK} not found; install tshark to run the Wireshark golden test");
        return;
    }

    let asap = asap_cases();
    let enrp = enrp_cases();
    let mut frames = Vec::new();
    let mut expectations = Vec::new();
    for (message, expected) in &asap {
        // Our codec reads back what it wrote before Wireshark gets a look.
        let bytes = message.to_bytes();
        assert_eq!(&asap::Message::decode(&bytes).unwrap(), message);
        frames.push(udp_frame(&bytes, 40_000, ASAP_PORT));
        expectations.push(expected.clone());
    }
    for (message, expected) in &enrp {
        let bytes = message.to_bytes();
        assert_eq!(&enrp::Message::decode(&bytes).unwrap(), message);
        frames.push(udp_frame(&bytes, ENRP_PORT, ENRP_PORT));
        expectations.push(expected.clone());
    }
    // One message with poolflow's authentication parameter (type 0xBF01,
    // skip-if-unknown): Wireshark must read it as an ordinary Presence with
    // one unknown parameter, not as malformed.
    let (presence, mut expected) = enrp[0].clone();
    let mut signed = presence.to_bytes();
    enrp::auth::sign(&mut signed, 1, b"pool key", 1_700_000_000_000_000).unwrap();
    assert_eq!(enrp::Message::decode(&signed).unwrap(), presence);
    frames.push(udp_frame(&signed, ENRP_PORT, ENRP_PORT));
    expected.push((
        "enrp.parameter_type",
        "0x000f,0x000b,0x0004,0x0001,0xbf01".into(),
    ));
    expectations.push(expected);
    // A Registration with poolflow's membership proof (type 0xBF02,
    // skip-if-unknown): an ordinary Registration to Wireshark, the proof
    // one unknown parameter after the Pool Element.
    let member_key = protocol::signing::SigningKey::from_bytes(&[2; 32]);
    let member_handle = PoolHandle::from("ipfix-collectors");
    let certificate = protocol::rserpool::membership::MemberCertificate::issue(
        &protocol::signing::SigningKey::from_bytes(&[1; 32]),
        &member_handle,
        &member_key.verifying_key(),
        1_700_000_000,
        1_800_000_000,
    );
    let proof = protocol::rserpool::membership::MembershipProof::sign_registration(
        &member_key,
        &certificate,
        &member_handle,
        &multihomed_collector(),
        1_750_000_000_000,
    );
    let proven = asap::Message::Registration {
        pool_handle: member_handle.clone(),
        pool_element: multihomed_collector(),
        membership: Some(Box::new(proof)),
    };
    let bytes = proven.to_bytes();
    assert_eq!(asap::Message::decode(&bytes).unwrap(), proven);
    // ASAP frames come first in the capture: put it after the last one.
    frames.insert(asap.len(), udp_frame(&bytes, 40_000, ASAP_PORT));
    expectations.insert(
        asap.len(),
        vec![
            ("asap.message_type", "1".into()),
            ("asap.pool_element_pe_identifier", "0x00000042".into()),
            (
                "asap.parameter_type",
                "0x0009,0x000a,0x0004,0x0001,0x0002,0x0008,0xbf02".into(),
            ),
        ],
    );
    let asap_frames = asap.len() + 1;
    let enrp_frames = enrp.len() + 1;
    let path = pcap_path();
    write_pcap(&path, &frames);
    let file = path.to_str().expect("UTF-8 temp path");

    // No malformed packet, no expert info of severity error.
    let problems = tshark(&[
        "-r",
        file,
        "-Y",
        "_ws.malformed || _ws.expert.severity >= error",
    ]);
    assert!(
        problems.trim().is_empty(),
        "tshark flags problems:\n{problems}"
    );

    // Every frame is dissected as ASAP or ENRP, in order.
    let protocols = tshark(&["-r", file, "-T", "fields", "-e", "_ws.col.Protocol"]);
    let protocols: Vec<&str> = protocols.lines().collect();
    let expected_protocols: Vec<&str> = std::iter::repeat_n("ASAP", asap_frames)
        .chain(std::iter::repeat_n("ENRP", enrp_frames))
        .collect();
    assert_eq!(protocols, expected_protocols);

    // Key fields per frame.
    for (index, expected) in expectations.iter().enumerate() {
        let frame = format!("frame.number == {}", index + 1);
        let mut args = vec!["-r", file, "-Y", frame.as_str(), "-T", "fields"];
        args.extend(["-E", "separator=|", "-E", "aggregator=,"]);
        for (field, _) in expected {
            args.extend(["-e", field]);
        }
        let output = tshark(&args);
        let values: Vec<&str> = output.trim_end_matches('\n').split('|').collect();
        for ((field, want), got) in expected.iter().zip(&values) {
            assert_eq!(
                got,
                want,
                "frame {}: field {field} is {got:?}, expected {want:?}",
                index + 1
            );
        }
        assert_eq!(values.len(), expected.len(), "frame {}", index + 1);
    }

    if std::env::var_os("POOLFLOW_KEEP_PCAP").is_some() {
        eprintln!("pcap kept at {file}");
    } else {
        let _ = std::fs::remove_file(&path);
    }
}
