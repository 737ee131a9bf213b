//! The `flows` virtual table: every stored data record as one SQL row with
//! typed columns, decoded from `record_blocks` as a query reads it, so that
//! `collector sql "SELECT … FROM flows …"` works on a store that keeps
//! records in blocks.
//!
//! Constraints on `export_time` (=, <, <=, >, >=) and equality on
//! `exporter`, `domain` and `billing_exporter` are pushed down: they select
//! blocks in SQL before any record is decoded (every record of a block
//! shares those values). Any other condition (addresses, ports, …) decodes
//! every record of the selected blocks and lets SQLite test it. SQLite still
//! checks the pushed-down constraints on each row, so pushing down never
//! changes a result, only the work.
//!
//! The table is eponymous: it exists on any connection [`register`] was
//! called on, read-only connections included, with nothing written to the
//! database file.

use std::collections::VecDeque;
use std::ffi::c_int;
use std::marker::PhantomData;

use rusqlite::types::Value as SqlValue;
use rusqlite::vtab::{
    Context, Filters, IndexConstraintOp, IndexInfo, VTab, VTabConnection, VTabCursor,
    eponymous_only_module,
};
use rusqlite::{Connection, ffi};

use crate::query::extra_json;
use crate::record::StoredRecord;
use crate::store::{self, BlockReader};

/// The table's name in SQL.
pub const TABLE: &str = "flows";

/// The table's columns, in order, with their SQL types.
pub const COLUMNS: [(&str, &str); 24] = [
    ("exporter", "TEXT"),
    ("transport", "TEXT"),
    ("domain", "INTEGER"),
    ("export_time", "INTEGER"),
    ("message_sequence", "INTEGER"),
    ("record_index", "INTEGER"),
    ("billing_exporter", "INTEGER"),
    ("record_sequence", "INTEGER"),
    ("received_ms", "INTEGER"),
    ("template_id", "INTEGER"),
    ("src_addr", "TEXT"),
    ("dst_addr", "TEXT"),
    ("src_port", "INTEGER"),
    ("dst_port", "INTEGER"),
    ("protocol", "INTEGER"),
    ("tcp_flags", "INTEGER"),
    ("tos", "INTEGER"),
    ("octets", "INTEGER"),
    ("packets", "INTEGER"),
    ("flow_start_ms", "INTEGER"),
    ("flow_end_ms", "INTEGER"),
    ("ingress_if", "INTEGER"),
    ("egress_if", "INTEGER"),
    ("fields", "TEXT"),
];

/// Blocks decoded at a time by the cursor: bounds the memory a scan holds
/// (a block has about 30 records).
const BLOCKS_PER_PAGE: usize = 64;

/// Makes the `flows` table available on `conn`.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_module(TABLE, eponymous_only_module::<FlowTable>(), None)
}

/// A pushed-down condition on a block column, as SQL over `record_blocks r`
/// joined with `exporters e`.
fn pushed_down(column: c_int, op: IndexConstraintOp) -> Option<&'static str> {
    use IndexConstraintOp::*;
    let name = COLUMNS.get(usize::try_from(column).ok()?)?.0;
    Some(match (name, op) {
        ("export_time", SQLITE_INDEX_CONSTRAINT_EQ) => "r.export_time = ?",
        ("export_time", SQLITE_INDEX_CONSTRAINT_GT) => "r.export_time > ?",
        ("export_time", SQLITE_INDEX_CONSTRAINT_GE) => "r.export_time >= ?",
        ("export_time", SQLITE_INDEX_CONSTRAINT_LT) => "r.export_time < ?",
        ("export_time", SQLITE_INDEX_CONSTRAINT_LE) => "r.export_time <= ?",
        ("exporter", SQLITE_INDEX_CONSTRAINT_EQ) => "e.address = ?",
        ("domain", SQLITE_INDEX_CONSTRAINT_EQ) => "r.domain = ?",
        ("billing_exporter", SQLITE_INDEX_CONSTRAINT_EQ) => "r.billing_exporter = ?",
        _ => return None,
    })
}

/// One connection's instance of the table.
#[repr(C)]
struct FlowTable {
    /// SQLite's part; must come first.
    base: ffi::sqlite3_vtab,
    /// The same database connection, to read the blocks from.
    conn: Connection,
}

unsafe impl<'vtab> VTab<'vtab> for FlowTable {
    type Aux = ();
    type Cursor = FlowCursor<'vtab>;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        // SAFETY: SQLite disconnects the table (dropping this `Connection`)
        // before it closes the connection, and a `Connection` made from a
        // handle never closes it. The cursor prepares its statements per
        // page and finalizes them before returning to SQLite, so none is
        // left open when the owning connection closes.
        let conn = unsafe { Connection::from_handle(db.handle())? };
        let columns: Vec<String> = COLUMNS
            .iter()
            .map(|(name, kind)| format!("{name} {kind}"))
            .collect();
        let schema = format!("CREATE TABLE x({})", columns.join(", "));
        Ok((
            schema,
            Self {
                base: ffi::sqlite3_vtab::default(),
                conn,
            },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<()> {
        let usable: Vec<(usize, &'static str)> = info
            .constraints()
            .enumerate()
            .filter(|(_, c)| c.is_usable())
            .filter_map(|(i, c)| Some((i, pushed_down(c.column(), c.operator())?)))
            .collect();
        for (argv, (i, _)) in usable.iter().enumerate() {
            // Not omitted: SQLite re-checks each row, so a comparison with
            // a value of another type behaves exactly as on a plain table.
            info.constraint_usage(*i).set_argv_index(argv as c_int + 1);
        }
        let conditions: Vec<&str> = usable.iter().map(|(_, sql)| *sql).collect();
        info.set_idx_str(&conditions.join(" AND "));
        // Fewer blocks to decode with each condition; the exact numbers
        // only need to rank plans.
        let narrowing = 10f64.powi(usable.len().min(6) as i32);
        info.set_estimated_cost(1e9 / narrowing);
        info.set_estimated_rows((1e9 / narrowing) as i64);
        Ok(())
    }

    fn open(&'vtab mut self) -> rusqlite::Result<FlowCursor<'vtab>> {
        Ok(FlowCursor {
            base: ffi::sqlite3_vtab_cursor::default(),
            conn: &self.conn,
            blocks: VecDeque::new(),
            rows: VecDeque::new(),
            current: None,
            block_reader: BlockReader::new(&self.conn),
            columns: store::block_columns(&self.conn)?,
            rowid: 0,
            phantom: PhantomData,
        })
    }
}

/// A decoded record and its billing position.
struct FlowRow {
    record: StoredRecord,
    billing_exporter: Option<u32>,
    record_sequence: Option<i64>,
}

/// A scan over the blocks the pushed-down conditions select, in storage
/// order: their ids are selected once (8 bytes a block), then the blocks
/// are read by id and decoded a page at a time. One selection, not a query
/// per page: a per-page query resuming after the last id would have SQLite
/// re-sort every remaining match whenever it selects through an index.
#[repr(C)]
struct FlowCursor<'vtab> {
    /// SQLite's part; must come first.
    base: ffi::sqlite3_vtab_cursor,
    conn: &'vtab Connection,
    /// Ids of the selected blocks not read yet.
    blocks: VecDeque<i64>,
    /// Decoded records of the page not returned yet.
    rows: VecDeque<FlowRow>,
    current: Option<FlowRow>,
    /// Decodes the blocks read, each template once.
    block_reader: BlockReader,
    /// [`store::block_columns`] of this store, asked once per scan.
    columns: String,
    rowid: i64,
    phantom: PhantomData<&'vtab FlowTable>,
}

impl FlowCursor<'_> {
    /// Moves to the next record, reading pages until one has a record or
    /// the blocks run out.
    fn advance(&mut self) -> rusqlite::Result<()> {
        while self.rows.is_empty() && !self.blocks.is_empty() {
            self.read_page()?;
        }
        self.current = self.rows.pop_front();
        self.rowid += 1;
        Ok(())
    }

    /// The ids of the blocks the pushed-down `conditions` select.
    fn select_blocks(&mut self, conditions: &str, args: Vec<SqlValue>) -> rusqlite::Result<()> {
        let mut sql = String::from(
            "SELECT r.id FROM record_blocks r JOIN exporters e ON e.id = r.exporter_id",
        );
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(conditions);
        }
        sql.push_str(" ORDER BY r.id");
        // Not cached: no statement may outlive this call (see `connect`).
        let mut stmt = self.conn.prepare(&sql)?;
        let ids = stmt.query_map(rusqlite::params_from_iter(args), |row| row.get(0))?;
        self.blocks = ids.collect::<rusqlite::Result<_>>()?;
        Ok(())
    }

    fn read_page(&mut self) -> rusqlite::Result<()> {
        // Not cached: no statement may outlive this call (see `connect`).
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {}, r.billing_exporter, r.first_record_sequence FROM {} WHERE r.id = ?1",
            self.columns,
            store::BLOCK_TABLES
        ))?;
        let page = self.blocks.len().min(BLOCKS_PER_PAGE);
        for id in self.blocks.drain(..page) {
            let mut rows = stmt.query([id])?;
            // Gone since the selection only if the store was replaced.
            let Some(row) = rows.next()? else { continue };
            let first_record_index: u32 = row.get(9)?;
            let billing_exporter: Option<u32> = row.get(15)?;
            let first_record_sequence: Option<i64> = row.get(16)?;
            let decoded = self.block_reader.decode(row, |record| {
                let offset = i64::from(record.record_index - first_record_index);
                self.rows.push_back(FlowRow {
                    record_sequence: first_record_sequence.map(|first| first + offset),
                    billing_exporter,
                    record,
                });
            })?;
            if let Err(template_ref) = decoded {
                return Err(rusqlite::Error::ModuleError(format!(
                    "stored template {template_ref} is damaged"
                )));
            }
        }
        Ok(())
    }
}

unsafe impl VTabCursor for FlowCursor<'_> {
    fn filter(
        &mut self,
        _idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        let values = (0..args.len())
            .map(|i| args.get::<SqlValue>(i))
            .collect::<rusqlite::Result<_>>()?;
        self.rows.clear();
        self.select_blocks(idx_str.unwrap_or_default(), values)?;
        self.rowid = 0;
        self.advance()
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        self.advance()
    }

    fn eof(&self) -> bool {
        self.current.is_none()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        let Some(row) = &self.current else {
            return ctx.set_result(&SqlValue::Null);
        };
        let r = &row.record;
        let f = &r.fields;
        let int = |v: Option<i64>| v.map_or(SqlValue::Null, SqlValue::Integer);
        let text = |a: Option<std::net::IpAddr>| a.map_or(SqlValue::Null, |a| a.to_string().into());
        // SQLite integers are signed 64-bit: larger counters saturate.
        let counter = |v: Option<u64>| int(v.map(|v| v.min(i64::MAX as u64) as i64));
        let value = match COLUMNS.get(i as usize).map(|(name, _)| *name) {
            Some("exporter") => SqlValue::Text(r.exporter.clone()),
            Some("transport") => SqlValue::Text(r.transport.to_owned()),
            Some("domain") => SqlValue::Integer(r.domain.into()),
            Some("export_time") => SqlValue::Integer(r.export_time.into()),
            Some("message_sequence") => SqlValue::Integer(r.message_sequence.into()),
            Some("record_index") => SqlValue::Integer(r.record_index.into()),
            Some("billing_exporter") => int(row.billing_exporter.map(i64::from)),
            Some("record_sequence") => int(row.record_sequence),
            Some("received_ms") => SqlValue::Integer(r.received_ms),
            Some("template_id") => SqlValue::Integer(r.template_id.into()),
            Some("src_addr") => text(f.src_addr),
            Some("dst_addr") => text(f.dst_addr),
            Some("src_port") => int(f.src_port.map(i64::from)),
            Some("dst_port") => int(f.dst_port.map(i64::from)),
            Some("protocol") => int(f.protocol.map(i64::from)),
            Some("tcp_flags") => int(f.tcp_flags.map(i64::from)),
            Some("tos") => int(f.tos.map(i64::from)),
            Some("octets") => counter(f.octets),
            Some("packets") => counter(f.packets),
            Some("flow_start_ms") => int(f.flow_start_ms),
            Some("flow_end_ms") => int(f.flow_end_ms),
            Some("ingress_if") => int(f.ingress_if.map(i64::from)),
            Some("egress_if") => int(f.egress_if.map(i64::from)),
            Some("fields") => {
                SqlValue::Text(serde_json::Value::Object(extra_json(&r.extra)).to_string())
            }
            _ => SqlValue::Null,
        };
        ctx.set_result(&value)
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.rowid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column_index(name: &str) -> c_int {
        COLUMNS
            .iter()
            .position(|(column, _)| *column == name)
            .expect("a declared column") as c_int
    }

    #[test]
    fn only_block_columns_are_pushed_down() {
        use IndexConstraintOp::*;
        let export_time = column_index("export_time");
        assert_eq!(
            pushed_down(export_time, SQLITE_INDEX_CONSTRAINT_GE),
            Some("r.export_time >= ?")
        );
        assert_eq!(
            pushed_down(column_index("exporter"), SQLITE_INDEX_CONSTRAINT_EQ),
            Some("e.address = ?")
        );
        // Per-record columns and other operators stay with SQLite.
        assert_eq!(
            pushed_down(column_index("src_addr"), SQLITE_INDEX_CONSTRAINT_EQ),
            None
        );
        assert_eq!(
            pushed_down(column_index("exporter"), SQLITE_INDEX_CONSTRAINT_LIKE),
            None
        );
        assert_eq!(pushed_down(-1, SQLITE_INDEX_CONSTRAINT_EQ), None);
    }
}
