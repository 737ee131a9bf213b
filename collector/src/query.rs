//! `collector query`: stored records as JSON lines or CSV, filtered by
//! exporter, observation domain and export time.

use std::io::Write;

use anyhow::Result;
use protocol::ipfix::registry;
use protocol::ipfix::value::decode_value;
use rusqlite::{Connection, ToSql};
use serde_json::{Map, Value, json};

use crate::record::extra_fields;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Csv,
}

/// Which records to print. Times are the messages' export times, unix
/// seconds (always present, unlike flow timestamps).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Exporter "ip" (any port) or "ip:port".
    pub exporter: Option<String>,
    pub domain: Option<u32>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<u64>,
}

const COLUMNS: [&str; 22] = [
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

fn hex(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes matching records to `out`; returns how many.
pub fn run(
    conn: &Connection,
    filter: &Filter,
    format: Format,
    out: &mut impl Write,
) -> Result<u64> {
    let mut sql = String::from(
        "SELECT e.address, e.transport, r.domain, r.template_id, r.export_time, r.message_sequence,
                r.record_index, r.received_ms, r.src_addr, r.dst_addr, r.src_port, r.dst_port,
                r.protocol, r.tcp_flags, r.tos, r.octets, r.packets, r.flow_start_ms,
                r.flow_end_ms, r.ingress_if, r.egress_if, r.extra
         FROM records r JOIN exporters e ON e.id = r.exporter_id WHERE 1=1",
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
    if let Some(limit) = filter.limit {
        sql.push_str(" LIMIT ?");
        args.push(Box::new(limit as i64));
    }
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())))?;
    let mut sink = match format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(COLUMNS)?;
            Sink::Csv(Box::new(w))
        }
        Format::Json => Sink::Json(out),
    };
    let mut count = 0u64;
    while let Some(row) = rows.next()? {
        let mut object = Map::new();
        for (i, name) in COLUMNS[..21].iter().enumerate() {
            let value: rusqlite::types::Value = row.get(i)?;
            object.insert((*name).to_owned(), sql_to_json(value));
        }
        let extra: Option<Vec<u8>> = row.get(21)?;
        let mut fields = Map::new();
        for (enterprise, id, raw) in extra_fields(extra.as_deref().unwrap_or_default()) {
            let (name, value) = describe_field(enterprise, id, raw);
            fields.insert(name, value);
        }
        match &mut sink {
            Sink::Csv(w) => {
                let mut cells: Vec<String> = COLUMNS[..21]
                    .iter()
                    .map(|c| match &object[*c] {
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
                object.insert("fields".into(), Value::Object(fields));
                serde_json::to_writer(&mut *out, &Value::Object(object))?;
                out.write_all(b"\n")?;
            }
        }
        count += 1;
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

fn sql_to_json(value: rusqlite::types::Value) -> Value {
    use rusqlite::types::Value as V;
    match value {
        V::Null => Value::Null,
        V::Integer(i) => json!(i),
        V::Real(f) => json!(f),
        V::Text(t) => json!(t),
        V::Blob(b) => json!(hex(&b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    pub exporter: String,
    pub transport: String,
    pub domain: u32,
    pub records: u64,
    pub lost_records: u64,
    pub sequence_events: u64,
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
