//! `collector query`: stored records as JSON lines or CSV, filtered by
//! exporter, observation domain and export time (on blocks, before
//! decoding) and by addresses or prefixes, ports and protocol (on each
//! decoded record). [`for_each_record`] is the selection that
//! aggregation (`collector query --top`, `--bin`) sums too.

use std::io::Write;
use std::ops::ControlFlow;

use anyhow::Result;
use protocol::ipfix::registry;
use protocol::ipfix::value::decode_value;
use rusqlite::{Connection, ToSql};
use serde_json::{Map, Value, json};

use crate::prefix::IpPrefix;
use crate::record::{FlowFields, StoredRecord, extra_fields};
use crate::store::{self, BlockReader};

/// Output format of `collector query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// CSV with a header line.
    Csv,
}

/// Which records to print. Times are the messages' export times, unix
/// seconds (always present, unlike flow timestamps).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Exporter "ip" (any port) or "ip:port".
    pub exporter: Option<String>,
    /// Observation domain id.
    pub domain: Option<u32>,
    /// Export time at or after, unix seconds.
    pub since: Option<i64>,
    /// Export time before, unix seconds.
    pub until: Option<i64>,
    /// At most this many records.
    pub limit: Option<u64>,
    /// Source address in this prefix.
    pub src: Option<IpPrefix>,
    /// Destination address in this prefix.
    pub dst: Option<IpPrefix>,
    /// Source or destination address in this prefix.
    pub addr: Option<IpPrefix>,
    /// Source port.
    pub src_port: Option<u16>,
    /// Destination port.
    pub dst_port: Option<u16>,
    /// Source or destination port.
    pub port: Option<u16>,
    /// IP protocol number (protocolIdentifier).
    pub protocol: Option<u8>,
}

impl Filter {
    /// Whether a decoded record passes the per-record conditions (address,
    /// port, protocol). A record without the field never matches a
    /// condition on it.
    pub fn matches(&self, f: &FlowFields) -> bool {
        let in_prefix = |prefix: &IpPrefix, addr: Option<std::net::IpAddr>| {
            addr.is_some_and(|a| prefix.contains(a))
        };
        self.src.as_ref().is_none_or(|p| in_prefix(p, f.src_addr))
            && self.dst.as_ref().is_none_or(|p| in_prefix(p, f.dst_addr))
            && self
                .addr
                .as_ref()
                .is_none_or(|p| in_prefix(p, f.src_addr) || in_prefix(p, f.dst_addr))
            && self.src_port.is_none_or(|p| f.src_port == Some(p))
            && self.dst_port.is_none_or(|p| f.dst_port == Some(p))
            && self
                .port
                .is_none_or(|p| f.src_port == Some(p) || f.dst_port == Some(p))
            && self.protocol.is_none_or(|p| f.protocol == Some(p))
    }
}

/// A protocol by its usual name (tcp, udp, icmp, ipv6-icmp, sctp, gre, esp)
/// or its IANA number (0 to 255).
pub fn parse_protocol(text: &str) -> Result<u8, String> {
    let number = match text.to_ascii_lowercase().as_str() {
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        "gre" => 47,
        "esp" => 50,
        "ipv6-icmp" | "icmpv6" => 58,
        "sctp" => 132,
        other => other.parse::<u8>().map_err(|_| {
            format!(
                "`{text}` is not a protocol: give a number from 0 to 255 or one of \
                 tcp, udp, icmp, ipv6-icmp, sctp, gre, esp"
            )
        })?,
    };
    Ok(number)
}

/// Column names of `collector query` output, in order.
pub const COLUMNS: [&str; 22] = [
    "exporter",
    "transport",
    "domain",
    "template_id",
    "export_time",
    "message_sequence",
    "record_index",
    "received_ms",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol",
    "tcp_flags",
    "tos",
    "octets",
    "packets",
    "flow_start_ms",
    "flow_end_ms",
    "ingress_if",
    "egress_if",
    "fields",
];

/// Name and JSON value of an `extra` field: the IANA name and typed value
/// when the registry knows the element, else `e<PEN>.<id>` and hex.
pub fn describe_field(enterprise: u32, id: u16, raw: &[u8]) -> (String, Value) {
    let Some(ie) = registry::lookup(enterprise, id) else {
        return (format!("e{enterprise}.{id}"), json!(hex(raw)));
    };
    let value = match decode_value(ie.data_type, raw) {
        Ok(v) => match v.as_u64() {
            Some(n) => json!(n),
            None => json!(v.to_string()),
        },
        // Keep the bytes visible rather than hide a malformed value.
        Err(_) => json!(hex(raw)),
    };
    (ie.name.to_owned(), value)
}

/// The fields without a typed column, as a JSON object of IANA names and
/// typed values (see [`describe_field`]).
pub fn extra_json(extra: &[u8]) -> Map<String, Value> {
    extra_fields(extra)
        .map(|(enterprise, id, raw)| describe_field(enterprise, id, raw))
        .collect()
}

fn hex(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Calls `each` with every stored record that passes `filter` (its limit
/// aside), in storage order, until `each` breaks. Blocks are selected by
/// exporter, domain and time in SQL; only their records are decoded.
pub fn for_each_record(
    conn: &Connection,
    filter: &Filter,
    mut each: impl FnMut(&StoredRecord) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut sql = format!(
        "SELECT {} FROM {} WHERE 1=1",
        store::block_columns(conn)?,
        store::BLOCK_TABLES
    );
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    if let Some(exporter) = &filter.exporter {
        if exporter.contains(':')
            && !exporter.starts_with('[')
            && exporter.matches(':').count() == 1
            || exporter.starts_with('[')
        {
            sql.push_str(" AND e.address = ?");
            args.push(Box::new(exporter.clone()));
        } else {
            // Any port of this address: "ip:" prefix (IPv6 addresses are
            // stored bracketed, "[ip]:port").
            let prefix = if exporter.contains(':') {
                format!("[{exporter}]:")
            } else {
                format!("{exporter}:")
            };
            sql.push_str(" AND substr(e.address, 1, length(?)) = ?");
            args.push(Box::new(prefix.clone()));
            args.push(Box::new(prefix));
        }
    }
    if let Some(domain) = filter.domain {
        sql.push_str(" AND r.domain = ?");
        args.push(Box::new(domain));
    }
    if let Some(since) = filter.since {
        sql.push_str(" AND r.export_time >= ?");
        args.push(Box::new(since));
    }
    if let Some(until) = filter.until {
        sql.push_str(" AND r.export_time < ?");
        args.push(Box::new(until));
    }
    sql.push_str(" ORDER BY r.id");
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())))?;
    let mut blocks = BlockReader::new(conn);
    let mut outcome: Result<ControlFlow<()>> = Ok(ControlFlow::Continue(()));
    while let Some(row) = rows.next()? {
        let decoded = blocks.decode(row, |record| {
            if matches!(outcome, Ok(ControlFlow::Continue(()))) && filter.matches(&record.fields) {
                outcome = each(&record);
            }
        })?;
        if let Err(template_ref) = decoded {
            anyhow::bail!("stored template {template_ref} is damaged");
        }
        if !matches!(outcome, Ok(ControlFlow::Continue(()))) {
            break;
        }
    }
    outcome.map(|_| ())
}

/// Writes matching records to `out`; returns how many.
pub fn run(
    conn: &Connection,
    filter: &Filter,
    format: Format,
    out: &mut impl Write,
) -> Result<u64> {
    let mut sink = match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(COLUMNS)?;
            Sink::Csv(Box::new(w))
        }
        Format::Json => Sink::Json(out),
    };
    let limit = filter.limit.unwrap_or(u64::MAX);
    let mut count = 0u64;
    if limit > 0 {
        for_each_record(conn, filter, |record| {
            write_record(&mut sink, record)?;
            count += 1;
            Ok(if count >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
    }
    if let Sink::Csv(mut w) = sink {
        w.flush()?;
    }
    Ok(count)
}

enum Sink<'a, W: Write> {
    Csv(Box<csv::Writer<&'a mut W>>),
    Json(&'a mut W),
}

/// One record as a JSON object (CSV cells are made from it), columns in
/// [`COLUMNS`] order.
fn write_record<W: Write>(sink: &mut Sink<'_, W>, r: &StoredRecord) -> Result<()> {
    let f = &r.fields;
    let text = |a: Option<std::net::IpAddr>| a.map_or(Value::Null, |a| json!(a.to_string()));
    let int = |v: Option<i64>| v.map_or(Value::Null, |v| json!(v));
    // SQLite integers are signed 64-bit: counters beyond saturate, as the
    // store always showed them.
    let counter = |v: Option<u64>| int(v.map(|v| v.min(i64::MAX as u64) as i64));
    let values: [Value; 21] = [
        json!(r.exporter),
        json!(r.transport),
        json!(r.domain),
        json!(r.template_id),
        json!(r.export_time),
        json!(r.message_sequence),
        json!(r.record_index),
        json!(r.received_ms),
        text(f.src_addr),
        text(f.dst_addr),
        int(f.src_port.map(i64::from)),
        int(f.dst_port.map(i64::from)),
        int(f.protocol.map(i64::from)),
        int(f.tcp_flags.map(i64::from)),
        int(f.tos.map(i64::from)),
        counter(f.octets),
        counter(f.packets),
        int(f.flow_start_ms),
        int(f.flow_end_ms),
        int(f.ingress_if.map(i64::from)),
        int(f.egress_if.map(i64::from)),
    ];
    let fields = extra_json(&r.extra);
    match sink {
        Sink::Csv(w) => {
            let mut cells: Vec<String> = values
                .iter()
                .map(|v| match v {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            cells.push(if fields.is_empty() {
                String::new()
            } else {
                Value::Object(fields).to_string()
            });
            w.write_record(&cells)?;
        }
        Sink::Json(out) => {
            let mut object: Map<String, Value> = COLUMNS[..21]
                .iter()
                .map(|c| (*c).to_owned())
                .zip(values)
                .collect();
            object.insert("fields".into(), Value::Object(fields));
            serde_json::to_writer(&mut **out, &Value::Object(object))?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_by_name_or_number() {
        assert_eq!(parse_protocol("tcp"), Ok(6));
        assert_eq!(parse_protocol("UDP"), Ok(17));
        assert_eq!(parse_protocol("ipv6-icmp"), Ok(58));
        assert_eq!(parse_protocol("132"), Ok(132));
        assert!(
            parse_protocol("256")
                .unwrap_err()
                .contains("not a protocol")
        );
        assert!(parse_protocol("tcpx").is_err());
    }

    #[test]
    fn known_elements_get_their_iana_name_and_typed_value() {
        assert_eq!(
            describe_field(0, 82, b"eth0"),
            ("interfaceName".into(), json!("eth0"))
        );
        assert_eq!(
            describe_field(0, 136, &[1]),
            ("flowEndReason".into(), json!(1))
        );
        assert_eq!(
            describe_field(29305, 7, &[0xab, 0xcd]),
            ("e29305.7".into(), json!("abcd"))
        );
        // A value of the wrong size for its type stays visible as hex.
        assert_eq!(describe_field(0, 8, &[1, 2, 3]).1, json!("010203"));
    }
}

/// One line of `collector stats`: what an exporter's domain delivered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainSummary {
    /// "ip:port" of the exporting process.
    pub exporter: String,
    /// Transport label: udp, tcp, sctp.
    pub transport: String,
    /// Observation domain id.
    pub domain: u32,
    /// Data records stored.
    pub records: u64,
    /// Records lost in sequence gaps.
    pub lost_records: u64,
    /// Gaps, late messages and resyncs.
    pub sequence_events: u64,
    /// Last message sequence number seen.
    pub last_sequence: Option<u32>,
}

/// Per exporter and observation domain: records stored, records lost
/// according to IPFIX sequence numbers, and sequence anomalies.
pub fn domain_summaries(conn: &Connection) -> Result<Vec<DomainSummary>> {
    let mut stmt = conn.prepare(
        "SELECT e.address, e.transport, s.domain, s.records, s.lost_records,
                s.sequence_events, s.last_sequence
         FROM domain_stats s JOIN exporters e ON e.id = s.exporter_id
         ORDER BY e.address, s.domain",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(DomainSummary {
            exporter: r.get(0)?,
            transport: r.get(1)?,
            domain: r.get(2)?,
            records: r.get::<_, i64>(3)? as u64,
            lost_records: r.get::<_, i64>(4)? as u64,
            sequence_events: r.get::<_, i64>(5)? as u64,
            last_sequence: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
