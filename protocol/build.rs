//! Generates the IANA Information Element table (`ipfix_registry.rs` in
//! OUT_DIR) from `data/ipfix-information-elements.csv`, the registry as IANA
//! publishes it. `src/ipfix/registry.rs` includes the result.
//!
//! Rows that are not one assigned element (ranges such as "530-32767
//! Unassigned", "Reserved", the "Assigned for NetFlow v9 compatibility"
//! placeholders and the withdrawn rows without a name) carry no data type and
//! are left out.

use std::collections::{BTreeMap, HashSet};
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

const DATA_FILE: &str = "data/ipfix-information-elements.csv";

struct Element {
    id: u16,
    name: String,
    data_type: &'static str,
    semantics: Option<String>,
    units: Option<String>,
    deprecated: bool,
}

/// Maps an abstract data type name of the registry (RFC 7012 section 3.1,
/// RFC 6313 for the lists) to the variant of `AbstractDataType`.
fn data_type_variant(name: &str) -> Option<&'static str> {
    Some(match name {
        "octetArray" => "OctetArray",
        "unsigned8" => "Unsigned8",
        "unsigned16" => "Unsigned16",
        "unsigned32" => "Unsigned32",
        "unsigned64" => "Unsigned64",
        "signed8" => "Signed8",
        "signed16" => "Signed16",
        "signed32" => "Signed32",
        "signed64" => "Signed64",
        "float32" => "Float32",
        "float64" => "Float64",
        "boolean" => "Boolean",
        "macAddress" => "MacAddress",
        "string" => "String",
        "dateTimeSeconds" => "DateTimeSeconds",
        "dateTimeMilliseconds" => "DateTimeMilliseconds",
        "dateTimeMicroseconds" => "DateTimeMicroseconds",
        "dateTimeNanoseconds" => "DateTimeNanoseconds",
        "ipv4Address" => "Ipv4Address",
        "ipv6Address" => "Ipv6Address",
        "basicList" => "BasicList",
        "subTemplateList" => "SubTemplateList",
        "subTemplateMultiList" => "SubTemplateMultiList",
        // RFC 9740 added unsigned256 (32-byte bit masks such as
        // tcpOptionsFull). No integer type holds it, so its values are kept
        // as bytes, which is also how they are displayed (hex).
        "unsigned256" => "OctetArray",
        _ => return None,
    })
}

/// camelCase element name to a SCREAMING_SNAKE constant name. An underscore
/// goes before an upper-case letter that follows a lower-case letter or a
/// digit ("sourceIPv4Address" -> SOURCE_IPV4_ADDRESS), and before the last
/// letter of an acronym that starts a word ("postNATSource" ->
/// POST_NAT_SOURCE), except in "IPv4"/"IPv6" style tokens where the
/// lower-case run is followed by a digit.
fn constant_name(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next = chars.get(i + 1).copied();
            let after_next = chars.get(i + 2).copied();
            let word_after_acronym = prev.is_ascii_uppercase()
                && next.is_some_and(|n| n.is_ascii_lowercase())
                && !after_next.is_some_and(|n| n.is_ascii_digit());
            if prev.is_ascii_lowercase() || prev.is_ascii_digit() || word_after_acronym {
                out.push('_');
            }
        }
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push('_');
        }
    }
    out
}

fn non_empty(field: &str) -> Option<String> {
    let trimmed = field.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

fn read_elements() -> Vec<Element> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(DATA_FILE)
        .unwrap_or_else(|e| panic!("cannot open {DATA_FILE}: {e}"));
    let headers = reader.headers().expect("CSV header row").clone();
    let column = |wanted: &[&str]| {
        headers
            .iter()
            .position(|h| wanted.contains(&h.trim()))
            .unwrap_or_else(|| panic!("{DATA_FILE}: no column named {wanted:?}"))
    };
    // IANA renamed "Data Type" to "Abstract Data Type" at some point; accept
    // both so an older or newer copy of the registry can be dropped in.
    let id_col = column(&["ElementID"]);
    let name_col = column(&["Name"]);
    let type_col = column(&["Abstract Data Type", "Data Type"]);
    let semantics_col = column(&["Data Type Semantics"]);
    let status_col = column(&["Status"]);
    let units_col = column(&["Units"]);

    let mut elements = BTreeMap::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.unwrap_or_else(|e| panic!("{DATA_FILE} row {}: {e}", row + 2));
        let get = |col: usize| record.get(col).unwrap_or("").trim();
        // Ranges ("105-127") and placeholders are not elements.
        let Ok(id) = get(id_col).parse::<u16>() else {
            continue;
        };
        let name = get(name_col);
        let type_name = get(type_col);
        if name.is_empty() || type_name.is_empty() {
            continue;
        }
        let data_type = data_type_variant(type_name).unwrap_or_else(|| {
            println!(
                "cargo:warning={DATA_FILE}: element {id} ({name}) has unknown data type \
                 {type_name:?}; treated as octetArray"
            );
            "OctetArray"
        });
        let status = get(status_col);
        let element = Element {
            id,
            name: name.to_owned(),
            data_type,
            semantics: non_empty(get(semantics_col)),
            units: non_empty(get(units_col)),
            deprecated: status.eq_ignore_ascii_case("deprecated")
                || status.eq_ignore_ascii_case("obsolete"),
        };
        if elements.insert(id, element).is_some() {
            panic!("{DATA_FILE}: element id {id} appears twice");
        }
    }
    elements.into_values().collect()
}

fn main() {
    println!("cargo:rerun-if-changed={DATA_FILE}");
    println!("cargo:rerun-if-changed=build.rs");

    let elements = read_elements();
    assert!(
        elements.len() > 400,
        "{DATA_FILE} holds only {} elements: not the IANA registry?",
        elements.len()
    );

    let mut code = String::new();
    code.push_str(
        "// Generated by build.rs from data/ipfix-information-elements.csv. Do not edit.\n\n",
    );

    // The table, sorted by id.
    writeln!(
        code,
        "static ELEMENTS: [InformationElement; {}] = [",
        elements.len()
    )
    .unwrap();
    for e in &elements {
        writeln!(
            code,
            "    InformationElement {{ enterprise: 0, id: {}, name: {:?}, data_type: AbstractDataType::{}, semantics: {:?}, units: {:?}, deprecated: {} }},",
            e.id, e.name, e.data_type, e.semantics, e.units, e.deprecated
        )
        .unwrap();
    }
    code.push_str("];\n\n");

    // Direct index from id to table position: O(1) lookup on the hot path.
    let max_id = elements.last().map_or(0, |e| e.id) as usize;
    let mut index = vec![u16::MAX; max_id + 1];
    for (pos, e) in elements.iter().enumerate() {
        index[e.id as usize] = pos as u16;
    }
    writeln!(
        code,
        "/// Position in `ELEMENTS` by element id; `u16::MAX` if unassigned."
    )
    .unwrap();
    writeln!(code, "static INDEX_BY_ID: [u16; {}] = [", index.len()).unwrap();
    for chunk in index.chunks(16) {
        let line: Vec<String> = chunk.iter().map(|v| v.to_string()).collect();
        writeln!(code, "    {},", line.join(", ")).unwrap();
    }
    code.push_str("];\n\n");

    // Names sorted for binary search.
    let mut by_name: Vec<(&str, usize)> = elements
        .iter()
        .enumerate()
        .map(|(pos, e)| (e.name.as_str(), pos))
        .collect();
    by_name.sort_unstable();
    for pair in by_name.windows(2) {
        assert!(
            pair[0].0 != pair[1].0,
            "duplicate element name {}",
            pair[0].0
        );
    }
    writeln!(
        code,
        "/// (name, position in `ELEMENTS`), sorted by name.\nstatic INDEX_BY_NAME: [(&str, u16); {}] = [",
        by_name.len()
    )
    .unwrap();
    for (name, pos) in &by_name {
        writeln!(code, "    ({name:?}, {pos}),").unwrap();
    }
    code.push_str("];\n\n");

    // One constant per element.
    code.push_str(
        "/// Element ids of the IANA registry, named after the element\n\
         /// (camelCase to SCREAMING_SNAKE: `sourceIPv4Address` is\n\
         /// [`ids::SOURCE_IPV4_ADDRESS`]).\n\
         pub mod ids {\n",
    );
    let mut seen = HashSet::new();
    for e in &elements {
        let constant = constant_name(&e.name);
        assert!(
            seen.insert(constant.clone()),
            "two elements map to the constant {constant}"
        );
        writeln!(code, "    /// `{}`", e.name).unwrap();
        if e.deprecated {
            writeln!(code, "    /// (deprecated in the registry)").unwrap();
        }
        writeln!(code, "    pub const {constant}: u16 = {};", e.id).unwrap();
    }
    code.push_str("}\n");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("ipfix_registry.rs");
    fs::write(&out, code).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
