//! Interop: Wireshark's IPFIX dissector (tshark) decodes the messages our
//! encoder writes, with the field values we put in and without errors.

use std::fs::File;
use std::net::SocketAddrV4;
use std::process::Command;

use poolflow_tests::pcap::{self, Packet, Transport};
use poolflow_tests::{require_tool, run_ok};
use protocol::ipfix::encode::put_variable_length;
use protocol::ipfix::flow::{FlowRecord, flow_template};
use protocol::ipfix::{FieldSpecifier, MessageWriter, Template, VARIABLE_LENGTH};

const BASE_MS: u64 = 1_763_700_000_000;

fn packet(payload: Vec<u8>, n: u64) -> Packet {
    Packet {
        src: SocketAddrV4::new([127, 0, 0, 1].into(), 40000),
        dst: SocketAddrV4::new([127, 0, 0, 1].into(), 4739),
        transport: Transport::Udp,
        time_us: BASE_MS * 1000 + n,
        payload,
    }
}

fn tshark_fields(
    tshark: &std::path::Path,
    file: &std::path::Path,
    fields: &[&str],
) -> Vec<Vec<String>> {
    let mut cmd = Command::new(tshark);
    cmd.args(["-n", "-r"]).arg(file).args([
        "-d",
        "udp.port==4739,cflow",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    run_ok(&mut cmd)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

#[test]
fn tshark_decodes_our_flow_records_field_by_field() {
    let Some(tshark) = require_tool("tshark") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ipfix.pcap");
    let mut w = MessageWriter::new(1400);
    let mut packets = Vec::new();
    let mut sent = Vec::new();
    let mut n = 0u64;
    for message in 0..3u32 {
        w.start(77, (BASE_MS / 1000) as u32, n as u32);
        w.add_template(&flow_template()).unwrap();
        loop {
            let flow = FlowRecord::synthetic(n, BASE_MS);
            if flow.write_to(&mut w).is_err() {
                break;
            }
            sent.push(flow);
            n += 1;
        }
        packets.push(packet(w.finish().to_vec(), message as u64));
    }
    pcap::write(&mut File::create(&file).unwrap(), &packets).unwrap();

    let rows = tshark_fields(
        &tshark,
        &file,
        &[
            "cflow.version",
            "cflow.od_id",
            "cflow.sequence",
            "cflow.srcaddr",
            "cflow.dstaddr",
            "cflow.srcport",
            "cflow.dstport",
            "cflow.protocol",
            "cflow.octets",
            "cflow.packets",
        ],
    );
    assert_eq!(rows.len(), 3, "one line per packet: {rows:?}");
    let mut decoded = 0usize;
    for row in &rows {
        assert_eq!(row[0], "10");
        assert_eq!(row[1], "77");
        let src: Vec<&str> = row[3].split('|').collect();
        for (i, addr) in src.iter().enumerate() {
            let flow = &sent[decoded + i];
            assert_eq!(*addr, flow.source.to_string());
            assert_eq!(
                row[4].split('|').nth(i).unwrap(),
                flow.destination.to_string()
            );
            assert_eq!(
                row[5].split('|').nth(i).unwrap(),
                flow.source_port.to_string()
            );
            assert_eq!(
                row[6].split('|').nth(i).unwrap(),
                flow.destination_port.to_string()
            );
            assert_eq!(row[7].split('|').nth(i).unwrap(), flow.protocol.to_string());
            assert_eq!(row[8].split('|').nth(i).unwrap(), flow.octets.to_string());
            assert_eq!(row[9].split('|').nth(i).unwrap(), flow.packets.to_string());
        }
        // The sequence number counts the records of the earlier messages.
        assert_eq!(row[2], decoded.to_string());
        decoded += src.len();
    }
    assert_eq!(decoded, sent.len());

    let problems = run_ok(Command::new(&tshark).args(["-n", "-r"]).arg(&file).args([
        "-d",
        "udp.port==4739,cflow",
        "-Y",
        "_ws.malformed || _ws.expert.severity >= error",
    ]));
    assert!(
        problems.trim().is_empty(),
        "tshark found errors:\n{problems}"
    );
}

#[test]
fn tshark_accepts_options_enterprise_and_variable_length_records() {
    let Some(tshark) = require_tool("tshark") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ipfix-extra.pcap");
    let options = Template::new(
        300,
        1,
        vec![
            FieldSpecifier::iana(149, 4), // observationDomainId (scope)
            FieldSpecifier::iana(41, 8),  // exportedMessageTotalCount
            FieldSpecifier::iana(42, 8),  // exportedFlowRecordTotalCount
        ],
    );
    let varlen = Template::new(
        301,
        0,
        vec![
            FieldSpecifier::iana(8, 4),                // sourceIPv4Address
            FieldSpecifier::iana(82, VARIABLE_LENGTH), // interfaceName
            FieldSpecifier::enterprise(29305, 12, 4),  // an enterprise element
        ],
    );
    let mut w = MessageWriter::new(1400);
    w.start(5, (BASE_MS / 1000) as u32, 0);
    w.add_template(&options).unwrap();
    w.add_template(&varlen).unwrap();
    let mut rec = Vec::new();
    rec.extend_from_slice(&5u32.to_be_bytes());
    rec.extend_from_slice(&1234u64.to_be_bytes());
    rec.extend_from_slice(&5678u64.to_be_bytes());
    w.add_record(300, &rec).unwrap();
    let mut rec = vec![198, 51, 100, 7];
    put_variable_length(&mut rec, b"ge-0/0/1");
    rec.extend_from_slice(&[0, 0, 0, 42]);
    w.add_record(301, &rec).unwrap();
    pcap::write(
        &mut File::create(&file).unwrap(),
        &[packet(w.finish().to_vec(), 0)],
    )
    .unwrap();

    let rows = tshark_fields(
        &tshark,
        &file,
        &["cflow.template_id", "cflow.srcaddr", "cflow.if_name"],
    );
    assert_eq!(rows.len(), 1);
    let templates: Vec<&str> = rows[0][0].split('|').collect();
    assert!(
        templates.contains(&"300") && templates.contains(&"301"),
        "{rows:?}"
    );
    assert_eq!(rows[0][1], "198.51.100.7");
    assert_eq!(rows[0][2], "ge-0/0/1");
    let problems = run_ok(Command::new(&tshark).args(["-n", "-r"]).arg(&file).args([
        "-d",
        "udp.port==4739,cflow",
        "-Y",
        "_ws.malformed || _ws.expert.severity >= error",
    ]));
    assert!(
        problems.trim().is_empty(),
        "tshark found errors:\n{problems}"
    );
}

#[test]
fn tshark_decodes_our_reliability_statistics() {
    use protocol::ipfix::reliability::{self, ReliabilityStatistics};
    let Some(tshark) = require_tool("tshark") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ipfix-reliability.pcap");
    let stats = [
        ReliabilityStatistics {
            exporting_process_id: 7,
            observation_domain_id: 1,
            exported_messages: 1_234,
            exported_records: 41_265,
            not_sent_records: 78_735,
            system_init_ms: BASE_MS,
            observation_ms: BASE_MS + 2_500,
        },
        ReliabilityStatistics {
            exporting_process_id: 7,
            observation_domain_id: 2,
            exported_messages: 9,
            exported_records: 300,
            not_sent_records: 0,
            system_init_ms: BASE_MS,
            observation_ms: BASE_MS + 2_500,
        },
    ];
    let mut w = MessageWriter::new(1400);
    let (bytes, n) =
        reliability::encode_message(&mut w, (BASE_MS / 1000) as u32, 0, true, &stats).unwrap();
    assert_eq!(n, 2);
    pcap::write(&mut File::create(&file).unwrap(), &[packet(bytes, 0)]).unwrap();
    let rows = tshark_fields(
        &tshark,
        &file,
        &[
            "cflow.od_id",
            "cflow.template_ipfix_scope_field_count",
            "cflow.flow_exporter",
            "cflow.packetsexp",
            "cflow.flowsexp",
            "cflow.notsent_flows",
        ],
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    // Header domain: the statistics' own (0xFFFFFFFF).
    assert_eq!(
        row[0].split('|').next().unwrap(),
        u32::MAX.to_string(),
        "{row:?}"
    );
    assert_eq!(row[1], "2", "two scope fields: {row:?}");
    assert_eq!(row[2], "7|7", "exportingProcessId: {row:?}");
    assert_eq!(row[3], "1234|9", "exportedMessageTotalCount: {row:?}");
    assert_eq!(row[4], "41265|300", "exportedFlowRecordTotalCount: {row:?}");
    assert_eq!(row[5], "78735|0", "notSentFlowTotalCount: {row:?}");
    let problems = run_ok(Command::new(&tshark).args(["-n", "-r"]).arg(&file).args([
        "-d",
        "udp.port==4739,cflow",
        "-Y",
        "_ws.malformed || _ws.expert.severity >= error",
    ]));
    assert!(
        problems.trim().is_empty(),
        "tshark found errors:\n{problems}"
    );
}
