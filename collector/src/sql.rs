//! `collector sql`: one SQL statement over a store, read-only, with the
//! decoded records as the `flows` table (`crate::flow_table`) beside the
//! store's own tables, printed as an aligned table, CSV or JSON lines.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::Connection;
use rusqlite::types::ValueRef;
use serde_json::{Map, Value, json};

use crate::flow_table;
use crate::store::Store;

/// Output format of `collector sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqlFormat {
    /// Columns aligned under a header, for a terminal.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row.
    Json,
}

/// Opens `database` read-only with the `flows` table registered.
pub fn open(database: &Path) -> Result<Connection> {
    let conn = Store::open_read_only(database)?;
    flow_table::register(&conn).context("registering the flows table")?;
    Ok(conn)
}

/// Runs `statement` (exactly one) on `conn` and writes its rows to `out`;
/// returns how many. A statement that does not parse, names an unknown
/// table or column, or tries to write is an error that says so.
pub fn run(
    conn: &Connection,
    statement: &str,
    format: SqlFormat,
    out: &mut impl Write,
) -> Result<u64> {
    let mut stmt = conn.prepare(statement).map_err(|e| match e {
        rusqlite::Error::MultipleStatement => {
            anyhow::anyhow!("give one SQL statement at a time")
        }
        other => anyhow::anyhow!("bad SQL statement: {other}"),
    })?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let mut rows = stmt.query([]).map_err(running_error)?;
    let mut sink = match format {
        // Aligning needs every width: the rows are kept (add LIMIT for
        // large results, or use CSV or JSON, which stream).
        SqlFormat::Table => RowSink::Table(Vec::new()),
        SqlFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut *out);
            w.write_record(&columns)?;
            RowSink::Csv(Box::new(w))
        }
        SqlFormat::Json => RowSink::Json(&mut *out),
    };
    let mut count = 0u64;
    while let Some(row) = rows.next().map_err(running_error)? {
        count += 1;
        let values: Vec<Value> = (0..columns.len())
            .map(|i| row.get_ref(i).map(json_value))
            .collect::<rusqlite::Result<_>>()?;
        match &mut sink {
            RowSink::Table(rows) => rows.push(values.iter().map(cell).collect()),
            RowSink::Csv(w) => w.write_record(values.iter().map(cell))?,
            RowSink::Json(w) => {
                let object: Map<String, Value> = columns.iter().cloned().zip(values).collect();
                serde_json::to_writer(&mut **w, &Value::Object(object))?;
                w.write_all(b"\n")?;
            }
        }
    }
    let table = sink.finish()?;
    if let Some(rows) = table {
        write_table(&columns, &rows, out)?;
    }
    Ok(count)
}

/// An error SQLite gave while running the statement, said for an operator.
fn running_error(error: rusqlite::Error) -> anyhow::Error {
    match error {
        // SQLite prepares an empty (or comments-only) statement into
        // nothing, and running nothing is a misuse to it.
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ApiMisuse => {
            anyhow::anyhow!("no SQL statement given (empty, or only comments)")
        }
        other => anyhow::Error::new(other).context("running the SQL statement"),
    }
}

enum RowSink<'a, W: Write> {
    Table(Vec<Vec<String>>),
    Csv(Box<csv::Writer<&'a mut W>>),
    Json(&'a mut W),
}

impl<W: Write> RowSink<'_, W> {
    /// Flushes what streams; returns the rows a table still has to print.
    fn finish(self) -> Result<Option<Vec<Vec<String>>>> {
        match self {
            Self::Table(rows) => Ok(Some(rows)),
            Self::Csv(mut w) => {
                w.flush()?;
                Ok(None)
            }
            Self::Json(w) => {
                w.flush()?;
                Ok(None)
            }
        }
    }
}

/// A SQLite value as JSON: blobs as lowercase hex.
fn json_value(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => json!(n),
        ValueRef::Real(x) => json!(x),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

/// A value as a table or CSV cell: NULL is empty.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn write_table(columns: &[String], rows: &[Vec<String>], out: &mut impl Write) -> Result<()> {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(columns))?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", line(&rule))?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}
