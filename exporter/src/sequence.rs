//! What an exporter must remember across restarts (docs/billing-continuity.md
//! "Record sequence"): per observation domain the next record sequence to
//! assign (never reused) and the last cookie received (echoed to the next
//! collector instead of an introduction).
//!
//! Its TOML form (`to_toml`, `from_toml`) is stored by the driver through
//! [`crate::state_file::StateFile`], atomically; this module does no IO.
//!
//! Sequence numbers are *reserved* ahead in blocks (see
//! [`crate::pool_user::ExporterConfig::sequence_reservation`]): the file
//! always holds a value above every sequence already handed out, so a crash
//! can skip numbers but never reuse one, which would make two different
//! records share a sequence. The restarted exporter declares what it skipped
//! or lost in memory (every sequence after its last cookie that it no longer
//! holds) in its reliability statistics, so collectors and the audit see a
//! declared loss, not an unexplained gap.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use protocol::billing::BillingCookie;
use serde::{Deserialize, Serialize};

/// Remembered state of one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainState {
    /// No sequence below this one may be assigned again.
    pub next_sequence: u64,
    /// The last cookie received for the domain, if any.
    pub last_cookie: Option<BillingCookie>,
    /// Record sequences declared never to be sent (lost in restarts),
    /// over every run: the notSentFlowTotalCount of the reliability
    /// statistics (docs/billing-continuity.md "Declared loss").
    pub not_sent: u64,
    /// Every sequence below this that was neither acknowledged nor held at
    /// a restart is counted in `not_sent` already (so a second restart
    /// before the first one's declaration is acknowledged counts it once).
    pub declared_until: u64,
}

/// Remembered state of an exporter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExporterState {
    /// The exporter id the state belongs to (a state file is never used
    /// under another id: its sequences and cookies would be wrong).
    pub exporter_id: u32,
    /// Per observation domain.
    pub domains: BTreeMap<u32, DomainState>,
}

#[derive(Serialize, Deserialize)]
struct StateFileV1 {
    version: u32,
    exporter_id: u32,
    #[serde(default)]
    domains: Vec<DomainEntry>,
}

#[derive(Serialize, Deserialize)]
struct DomainEntry {
    domain: u32,
    next_sequence: u64,
    /// The cookie's 64 bytes in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_cookie: Option<String>,
    /// Absent in files written before declared losses existed: 0.
    #[serde(default)]
    not_sent: u64,
    #[serde(default)]
    declared_until: u64,
}

impl ExporterState {
    /// Fresh state: nothing sent, no cookies.
    pub fn new(exporter_id: u32) -> Self {
        Self {
            exporter_id,
            domains: BTreeMap::new(),
        }
    }

    /// The TOML text of the state.
    pub fn to_toml(&self) -> String {
        let file = StateFileV1 {
            version: 1,
            exporter_id: self.exporter_id,
            domains: self
                .domains
                .iter()
                .map(|(&domain, state)| DomainEntry {
                    domain,
                    next_sequence: state.next_sequence,
                    last_cookie: state.last_cookie.map(|c| to_hex(&c.encode())),
                    not_sent: state.not_sent,
                    declared_until: state.declared_until,
                })
                .collect(),
        };
        toml::to_string(&file).expect("state serializes")
    }

    /// Parses [`Self::to_toml`]'s text.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let file: StateFileV1 = toml::from_str(text).context("state file is not valid TOML")?;
        if file.version != 1 {
            bail!("state file version {} unknown", file.version);
        }
        let mut domains = BTreeMap::new();
        for entry in file.domains {
            let last_cookie = match entry.last_cookie {
                Some(hex) => {
                    let bytes = from_hex(&hex)
                        .with_context(|| format!("domain {}: cookie not hex", entry.domain))?;
                    Some(
                        BillingCookie::decode(&bytes)
                            .with_context(|| format!("domain {}: bad cookie", entry.domain))?,
                    )
                }
                None => None,
            };
            domains.insert(
                entry.domain,
                DomainState {
                    next_sequence: entry.next_sequence,
                    last_cookie,
                    not_sent: entry.not_sent,
                    declared_until: entry.declared_until,
                },
            );
        }
        Ok(Self {
            exporter_id: file.exporter_id,
            domains,
        })
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        bail!("odd length or non-ASCII");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("not a hex digit"))
        .collect()
}
