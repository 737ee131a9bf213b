//! Writes the seed corpus `fuzz/corpus/<target>/seed-*` from real messages
//! built with our encoders (the same messages the tshark golden tests check
//! field by field). Run from `fuzz/`: `cargo run --example make_corpus`.
//! The fuzzer grows the corpus from these; only the seeds are checked in.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use protocol::billing::BillingCookie;
use protocol::ipfix::encode::put_variable_length;
use protocol::ipfix::flow::{FlowRecord, flow_template};
use protocol::ipfix::{FieldSpecifier, MessageWriter, Template, VARIABLE_LENGTH};
use protocol::rserpool::enrp::{self, Body, PoolEntry, UpdateAction};
use protocol::rserpool::{
    ErrorCause, OperationError, PoolElement, PoolHandle, SelectionPolicy, ServerInformation,
    TransportAddress, TransportKind, TransportUse, asap, params::cause_code,
};

const KEY: &[u8] = b"the pool key of the fuzz target";

fn main() {
    let root = Path::new("corpus");
    let ipfix = ipfix_messages();
    // ipfix_session: control byte (UDP, TCP, SCTP) + the messages in a row.
    for (i, control) in [0u8, 1, 2, 0x45].into_iter().enumerate() {
        let mut seed = vec![control];
        for message in &ipfix {
            seed.extend_from_slice(message);
        }
        write(root, "ipfix_session", i, &seed);
    }
    for (i, message) in ipfix.iter().enumerate() {
        write(root, "ipfix_roundtrip", i, message);
    }
    // netflow_v9: control byte + length-prefixed packets.
    let mut seed = vec![0x10];
    for packet in v9_packets() {
        seed.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        seed.extend_from_slice(&packet);
    }
    write(root, "netflow_v9", 0, &seed);
    for (i, message) in asap_messages().iter().enumerate() {
        write(root, "asap", i, &message.to_bytes());
    }
    for (i, message) in enrp_messages().iter().enumerate() {
        write(root, "enrp", i, &message.to_bytes());
    }
    let signed = BillingCookie::sign(KEY, 7, 1, 41_999, 0xc011, 1_700_000_000_000);
    let intro = BillingCookie::introduction(7, 1);
    let cookie_seeds: Vec<Vec<u8>> = vec![
        [&[0u8][..], &signed.encode()[..]].concat(),
        [&[0u8][..], &intro.encode()[..]].concat(),
        [&[1u8][..], &signed.encode()[..30]].concat(),
        [&[2u8][..], &signed.cookie_echo_message_bytes()].concat(),
        [&[2u8][..], &signed.cookie_message_bytes()].concat(),
        [
            &[3u8][..],
            &0x0000_0001_ffff_fff0u64.to_be_bytes(),
            &0xffff_fff8u32.to_be_bytes(),
            &0x0000_0004u32.to_be_bytes(),
            &0xffff_fffcu32.to_be_bytes(),
        ]
        .concat(),
    ];
    for (i, seed) in cookie_seeds.iter().enumerate() {
        write(root, "billing_cookie", i, seed);
    }
    for (i, seed) in collector_scripts().iter().enumerate() {
        write(root, "collector_session", i, seed);
    }
}

fn write(root: &Path, target: &str, i: usize, bytes: &[u8]) {
    let dir = root.join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{i:02}")), bytes).unwrap();
}

fn options_template() -> Template {
    Template::new(
        257,
        1,
        vec![
            FieldSpecifier::iana(149, 4), // observationDomainId (scope)
            FieldSpecifier::iana(41, 8),  // exportedMessageTotalCount
            FieldSpecifier::iana(42, 8),  // exportedFlowRecordTotalCount
        ],
    )
}

fn varlen_template() -> Template {
    Template::new(
        258,
        0,
        vec![
            FieldSpecifier::iana(82, VARIABLE_LENGTH), // interfaceName
            FieldSpecifier::enterprise(29305, 12, 4),
            FieldSpecifier::iana(10, 4), // ingressInterface
        ],
    )
}

/// A session's worth of messages: templates, flow records, an options
/// record, variable-length and enterprise fields, a withdrawal.
fn ipfix_messages() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = MessageWriter::new(1400);
    let mut sequence = 0u32;
    writer.start(1, 1_700_000_000, sequence);
    writer.add_template(&flow_template()).unwrap();
    writer.add_template(&options_template()).unwrap();
    writer.add_template(&varlen_template()).unwrap();
    for n in 0..3 {
        FlowRecord::synthetic(n, 1_700_000_000_000)
            .write_to(&mut writer)
            .unwrap();
    }
    sequence += writer.data_records();
    out.push(writer.finish().to_vec());

    writer.start(1, 1_700_000_001, sequence);
    let mut record = Vec::new();
    record.extend_from_slice(&1u32.to_be_bytes());
    record.extend_from_slice(&1000u64.to_be_bytes());
    record.extend_from_slice(&29_000u64.to_be_bytes());
    writer.add_record(257, &record).unwrap();
    for name in [
        "eth0",
        "a-rather-long-interface-name-for-the-three-byte-prefix",
    ] {
        let mut record = Vec::new();
        put_variable_length(&mut record, name.as_bytes());
        record.extend_from_slice(&7u32.to_be_bytes());
        record.extend_from_slice(&3u32.to_be_bytes());
        writer.add_record(258, &record).unwrap();
    }
    sequence += writer.data_records();
    out.push(writer.finish().to_vec());

    // A gap of 5 records, then the withdrawal (valid over TCP and SCTP).
    sequence += 5;
    writer.start(1, 1_700_000_002, sequence);
    for n in 3..5 {
        FlowRecord::synthetic(n, 1_700_000_000_000)
            .write_to(&mut writer)
            .unwrap();
    }
    writer.add_withdrawal(258, false).unwrap();
    out.push(writer.finish().to_vec());

    // Another domain with the flow template.
    writer.start(2, 1_700_000_003, 0);
    writer.add_template(&flow_template()).unwrap();
    FlowRecord::synthetic(9, 1_700_000_000_000)
        .write_to(&mut writer)
        .unwrap();
    out.push(writer.finish().to_vec());
    out
}

fn v9_flowset(id: u16, body: &[u8]) -> Vec<u8> {
    let padded = (4 + body.len()).div_ceil(4) * 4;
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(padded as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(padded, 0);
    out
}

fn v9_packet(count: u16, sequence: u32, flowsets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&9u16.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&360_000u32.to_be_bytes());
    out.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&42u32.to_be_bytes()); // source id
    for set in flowsets {
        out.extend_from_slice(set);
    }
    out
}

fn v9_pairs(out: &mut Vec<u8>, fields: &[(u16, u16)]) {
    for &(field_type, length) in fields {
        out.extend_from_slice(&field_type.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
    }
}

/// A template, an options template and data for both (RFC 3954).
fn v9_packets() -> Vec<Vec<u8>> {
    let fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4)];
    let mut template = Vec::new();
    template.extend_from_slice(&256u16.to_be_bytes());
    template.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    v9_pairs(&mut template, &fields);
    let mut options = Vec::new();
    options.extend_from_slice(&257u16.to_be_bytes());
    options.extend_from_slice(&4u16.to_be_bytes()); // scope bytes
    options.extend_from_slice(&8u16.to_be_bytes()); // option bytes
    v9_pairs(&mut options, &[(1, 4)]); // scope: System
    v9_pairs(&mut options, &[(41, 4), (42, 4)]);
    let mut flows = Vec::new();
    for n in 0u8..3 {
        flows.extend_from_slice(&[10, 0, 0, n, 192, 168, 0, n, 4, 0, 0, 80, 6]);
        flows.extend_from_slice(&(1500u32 * u32::from(n + 1)).to_be_bytes());
        flows.extend_from_slice(&3u32.to_be_bytes());
    }
    let mut option_record = Vec::new();
    option_record.extend_from_slice(&[192, 0, 2, 1]);
    option_record.extend_from_slice(&100u32.to_be_bytes());
    option_record.extend_from_slice(&290u32.to_be_bytes());
    vec![
        v9_packet(
            5,
            0,
            &[
                v9_flowset(0, &template),
                v9_flowset(1, &options),
                v9_flowset(256, &flows),
            ],
        ),
        v9_packet(
            4,
            1,
            &[v9_flowset(256, &flows), v9_flowset(257, &option_record)],
        ),
    ]
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
            policy_type: 0x0000_0005,
            value: 10u32.to_be_bytes().to_vec(),
        },
        asap_transport: Some(sctp(3863, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))])),
    }
}

fn multihomed_collector() -> PoolElement {
    PoolElement {
        pe_identifier: 0x42,
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
            policy_type: 0x4000_0001,
            value: 0x4000_0000u32.to_be_bytes().to_vec(),
        },
        asap_transport: None,
    }
}

fn error(code: u16) -> OperationError {
    OperationError {
        causes: vec![ErrorCause { code, info: vec![] }],
    }
}

/// One message of every ASAP type (as in protocol/tests/rserpool_tshark.rs).
fn asap_messages() -> Vec<asap::Message> {
    let handle = PoolHandle::from("billing-collectors");
    let v4 = |last: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, last));
    let cookie = BillingCookie::sign(KEY, 7, 1, 41_999, 0xc011, 1_700_000_000_000);
    vec![
        asap::Message::Registration {
            pool_handle: handle.clone(),
            pool_element: multihomed_collector(),
            membership: None,
        },
        asap::Message::Deregistration {
            pool_handle: handle.clone(),
            pe_identifier: 0x42,
            membership: None,
        },
        asap::Message::RegistrationResponse {
            reject: true,
            pool_handle: handle.clone(),
            pe_identifier: 0x42,
            error: Some(error(cause_code::NON_UNIQUE_PE_IDENTIFIER)),
        },
        asap::Message::DeregistrationResponse {
            pool_handle: handle.clone(),
            pe_identifier: 0x42,
            error: None,
        },
        asap::Message::HandleResolution {
            pool_handle: handle.clone(),
            items: Some(3),
        },
        asap::Message::HandleResolutionResponse {
            reject: false,
            pool_handle: handle.clone(),
            policy: Some(SelectionPolicy {
                policy_type: 1,
                value: vec![],
            }),
            pool_elements: vec![
                collector(7, TransportKind::Tcp(TransportUse::DataOnly), v4(7)),
                collector(8, TransportKind::Udp, v4(8)),
                collector(9, TransportKind::UdpLite, v4(9)),
                collector(
                    10,
                    TransportKind::Dccp {
                        service_code: 0x4950_4658,
                    },
                    v4(11),
                ),
            ],
            error: None,
        },
        asap::Message::EndpointKeepAlive {
            home: true,
            server_identifier: 0x0a01,
            pool_handle: handle.clone(),
            pe_identifier: Some(0x42),
        },
        asap::Message::EndpointKeepAliveAck {
            pool_handle: handle.clone(),
            pe_identifier: 0x42,
        },
        asap::Message::EndpointUnreachable {
            pool_handle: handle.clone(),
            pe_identifier: 0x43,
        },
        asap::Message::ServerAnnounce {
            server_identifier: 0x0a01,
            transports: vec![sctp(3863, vec![v4(1)])],
        },
        cookie.to_cookie_message(),
        cookie.to_cookie_echo_message(),
        asap::Message::BusinessCard {
            pool_handle: handle,
            policy: None,
            pool_elements: vec![multihomed_collector()],
        },
        asap::Message::Error {
            error: error(cause_code::UNKNOWN_POOL_HANDLE),
        },
    ]
}

/// One message of every ENRP type.
fn enrp_messages() -> Vec<enrp::Message> {
    let handle = PoolHandle::from("billing-collectors");
    let peer = ServerInformation {
        server_identifier: 0x0b02,
        transport: sctp(9901, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))]),
    };
    let message = |body: Body| enrp::Message {
        sender_server_id: 0x0a01,
        receiver_server_id: 0x0b02,
        body,
    };
    vec![
        message(Body::Presence {
            reply_required: true,
            pe_checksum: 0x1234,
            server_information: Some(peer.clone()),
        }),
        message(Body::HandleTableRequest {
            own_children_only: true,
        }),
        message(Body::HandleTableResponse {
            reject: false,
            more_to_send: true,
            pool_entries: vec![PoolEntry {
                pool_handle: handle.clone(),
                pool_elements: vec![multihomed_collector()],
                memberships: Vec::new(),
            }],
        }),
        message(Body::HandleUpdate {
            takeover_suggested: false,
            action: UpdateAction::DeletePe,
            pool_handle: handle,
            pool_element: multihomed_collector(),
            membership: None,
        }),
        message(Body::ListRequest),
        message(Body::ListResponse {
            reject: false,
            servers: vec![peer],
        }),
        message(Body::InitTakeover {
            target_server_id: 0x0c03,
        }),
        message(Body::InitTakeoverAck {
            target_server_id: 0x0c03,
        }),
        message(Body::TakeoverServer {
            target_server_id: 0x0c03,
        }),
        message(Body::Error {
            error: error(cause_code::UNKNOWN_POOL_HANDLE),
        }),
    ]
}

/// Operation scripts for the collector_session target (see its header):
/// 0 = IPFIX message, 1 = introduction, 2 = signed echo, 4 = commit.
fn collector_scripts() -> Vec<Vec<u8>> {
    let chunk = |op: u8, bytes: &[u8]| {
        let mut out = vec![op];
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
        out
    };
    // Billing messages: record sequence in the header, domain 1.
    let billing_message = |sequence: u32, first: u64, records: u64, template: bool| {
        let mut writer = MessageWriter::new(1400);
        writer.start(1, 1_700_000_000, sequence);
        if template {
            writer.add_template(&flow_template()).unwrap();
        }
        for n in first..first + records {
            FlowRecord::synthetic(n, 1_700_000_000_000)
                .write_to(&mut writer)
                .unwrap();
        }
        writer.finish().to_vec()
    };
    let introduction = [1u8, 0, 1];
    let mut signed = vec![2u8, 0, 1];
    signed.extend_from_slice(&2u64.to_be_bytes());
    signed.extend_from_slice(&0xc0ffu32.to_be_bytes());
    let mut first = introduction.to_vec();
    first.extend(chunk(0, &billing_message(0, 0, 3, true)));
    first.push(4);
    first.extend(chunk(0, &billing_message(3, 3, 4, false)));
    first.push(4);
    // Failover: a cookie from another collector through 2, replay from 3
    // (records 3.. again), then new ones.
    let mut second = signed.clone();
    second.extend(chunk(0, &billing_message(3, 3, 5, true)));
    second.push(4);
    second.extend(chunk(0, &billing_message(8, 8, 2, false)));
    second.extend(chunk(0, &billing_message(6, 6, 4, false)));
    second.push(4);
    vec![first, second]
}
