//! `collector query --top N --by FIELD` and `--bin DURATION`: sums over the
//! records a [`Filter`] selects, in the manner of nfdump's top-N statistics
//! (`-s srcip/bytes`) and its time-binned totals.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::ControlFlow;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use rusqlite::Connection;
use serde_json::{Map, Value, json};

use crate::query::{Filter, Format, for_each_record};
use crate::record::StoredRecord;

/// The field records are grouped by for a top-N list (named as the
/// column: `src_addr`, `dst_port`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum TopBy {
    /// Source address.
    SrcAddr,
    /// Destination address.
    DstAddr,
    /// Source port.
    SrcPort,
    /// Destination port.
    DstPort,
    /// IP protocol number.
    Protocol,
    /// Exporting process ("ip:port").
    Exporter,
}

impl TopBy {
    /// The column name in the output (as in `collector query`'s records).
    pub fn column(self) -> &'static str {
        match self {
            Self::SrcAddr => "src_addr",
            Self::DstAddr => "dst_addr",
            Self::SrcPort => "src_port",
            Self::DstPort => "dst_port",
            Self::Protocol => "protocol",
            Self::Exporter => "exporter",
        }
    }

    /// The record's value of this field; `Null` when its template lacks it
    /// (such records form a group of their own).
    fn key(self, r: &StoredRecord) -> Value {
        let f = &r.fields;
        let text = |a: Option<std::net::IpAddr>| a.map_or(Value::Null, |a| json!(a.to_string()));
        let number = |n: Option<u16>| n.map_or(Value::Null, |n| json!(n));
        match self {
            Self::SrcAddr => text(f.src_addr),
            Self::DstAddr => text(f.dst_addr),
            Self::SrcPort => number(f.src_port),
            Self::DstPort => number(f.dst_port),
            Self::Protocol => number(f.protocol.map(u16::from)),
            Self::Exporter => json!(r.exporter),
        }
    }
}

/// What a top-N list is ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopOrder {
    /// Octets (octetDeltaCount or octetTotalCount).
    #[value(alias = "octets")]
    Bytes,
    /// Packets.
    Packets,
    /// Records (flows).
    #[value(alias = "records")]
    Flows,
}

/// Sums over a group of records. A record without an octet or packet count
/// adds to `flows` only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Records.
    pub flows: u64,
    /// Sum of packet counts.
    pub packets: u64,
    /// Sum of octet counts.
    pub octets: u64,
}

impl Totals {
    fn add(&mut self, r: &StoredRecord) {
        self.flows += 1;
        self.packets = self.packets.saturating_add(r.fields.packets.unwrap_or(0));
        self.octets = self.octets.saturating_add(r.fields.octets.unwrap_or(0));
    }

    fn rank(&self, order: TopOrder) -> u64 {
        match order {
            TopOrder::Bytes => self.octets,
            TopOrder::Packets => self.packets,
            TopOrder::Flows => self.flows,
        }
    }

    fn json_into(&self, object: &mut Map<String, Value>) {
        object.insert("flows".into(), json!(self.flows));
        object.insert("packets".into(), json!(self.packets));
        object.insert("octets".into(), json!(self.octets));
    }
}

/// The `n` groups with the highest `order`, highest first; ties go to the
/// smaller key so the list is the same on every run.
pub fn top(
    conn: &Connection,
    filter: &Filter,
    by: TopBy,
    order: TopOrder,
    n: usize,
) -> Result<Vec<(Value, Totals)>> {
    let mut groups: HashMap<String, (Value, Totals)> = HashMap::new();
    for_each_record(conn, filter, |r| {
        let key = by.key(r);
        // serde_json values do not hash; their text does, uniquely.
        let (_, totals) = groups
            .entry(key.to_string())
            .or_insert_with(|| (key, Totals::default()));
        totals.add(r);
        Ok(ControlFlow::Continue(()))
    })?;
    let mut ranked: Vec<(Value, Totals)> = groups.into_values().collect();
    ranked.sort_by(|(ka, a), (kb, b)| {
        b.rank(order)
            .cmp(&a.rank(order))
            .then_with(|| key_order(ka, kb))
    });
    ranked.truncate(n);
    Ok(ranked)
}

/// Numbers by value, text by text, missing values last.
fn key_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_u64().cmp(&y.as_u64()),
        (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
        (Value::Null, _) => std::cmp::Ordering::Greater,
        (_, Value::Null) => std::cmp::Ordering::Less,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Totals per time bin of `width`, oldest first, only bins with records.
/// A record falls in the bin of its flow start; a record whose template
/// carries no flow start, in the bin of its message's export time.
pub fn bins(conn: &Connection, filter: &Filter, width: Duration) -> Result<Vec<(i64, Totals)>> {
    let width_ms = width.as_millis();
    anyhow::ensure!(
        width_ms >= 1000 && width_ms % 1000 == 0,
        "a bin must be whole seconds, at least 1s (got {width:?})"
    );
    let width_ms = i64::try_from(width_ms).unwrap_or(i64::MAX);
    let mut sums: BTreeMap<i64, Totals> = BTreeMap::new();
    for_each_record(conn, filter, |r| {
        let at_ms = r
            .fields
            .flow_start_ms
            .unwrap_or(i64::from(r.export_time) * 1000);
        let bin_start_s = at_ms.div_euclid(width_ms) * (width_ms / 1000);
        sums.entry(bin_start_s).or_default().add(r);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(sums.into_iter().collect())
}

/// Prints a top-N list: one line per group with the key, flows, packets and
/// octets.
pub fn write_top(
    rows: &[(Value, Totals)],
    by: TopBy,
    format: Format,
    out: &mut impl Write,
) -> Result<()> {
    let lines = rows.iter().map(|(key, totals)| {
        let mut object = Map::new();
        object.insert(by.column().into(), key.clone());
        totals.json_into(&mut object);
        object
    });
    write_objects(
        &[by.column(), "flows", "packets", "octets"],
        lines,
        format,
        out,
    )
}

/// Prints time bins: start (unix seconds and RFC 3339, UTC) and totals.
pub fn write_bins(rows: &[(i64, Totals)], format: Format, out: &mut impl Write) -> Result<()> {
    let lines = rows.iter().map(|(start, totals)| {
        let mut object = Map::new();
        object.insert("bin_start".into(), json!(start));
        let time = u64::try_from(*start)
            .ok()
            .map(|s| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)));
        object.insert(
            "time".into(),
            time.map_or(Value::Null, |t| json!(t.to_string())),
        );
        object.insert("records".into(), json!(totals.flows));
        object.insert("packets".into(), json!(totals.packets));
        object.insert("octets".into(), json!(totals.octets));
        object
    });
    write_objects(
        &["bin_start", "time", "records", "packets", "octets"],
        lines,
        format,
        out,
    )
}

fn write_objects(
    columns: &[&str],
    lines: impl Iterator<Item = Map<String, Value>>,
    format: Format,
    out: &mut impl Write,
) -> Result<()> {
    match format {
        Format::Json => {
            for object in lines {
                serde_json::to_writer(&mut *out, &Value::Object(object))?;
                out.write_all(b"\n")?;
            }
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(columns)?;
            for object in lines {
                w.write_record(columns.iter().map(|c| match &object[*c] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }))?;
            }
            w.flush()?;
        }
    }
    Ok(())
}
