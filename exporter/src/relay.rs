//! `exporter relay`: ordinary routers send IPFIX (RFC 7011) or NetFlow v9
//! (RFC 3954) over UDP or TCP to the relay, and the relay forwards every
//! data record into the collector pool through the pool user core
//! ([`crate::stream`]), so record sequences, the replay buffer, cookies,
//! failover and failback apply to routers' records exactly as to
//! `exporter stream`'s. This is how an operator points routers at a pool
//! handle: routers know one static address, the relay knows the pool.
//!
//! Decoding (sans-IO, [`RouterSession`]):
//! - The version field tells IPFIX (10) from NetFlow v9 (9). Templates are
//!   scoped as RFC 7011 section 8 asks: one session per transport session
//!   (UDP: the router's address and port; TCP: the connection), and inside
//!   it per observation domain (v9: source id), by
//!   `protocol::ipfix::Session` and `protocol::netflow_v9::Session`. Both
//!   carry the per-session limits (templates, domains); the listeners add
//!   the limits on UDP sessions and TCP connections.
//! - NetFlow v9 over TCP is refused (counted, connection closed): a v9
//!   header has no length, so a byte stream of v9 packets cannot be framed.
//! - Bad input is counted by reason (`poolflow_relay_decode_errors_total`),
//!   logged with the peer (rate limited), and never ends a UDP session; a
//!   TCP connection whose framing is lost is closed (RFC 7011 10.4).
//!
//! Template remapping ([`TemplateRegistry`]): records go out under
//! relay-owned template ids, one per distinct *forwarded layout* (scope
//! count and field specifiers), whichever router or router template id it
//! came from. Routers' ids therefore never collide (two routers' 256 become
//! different relay ids when their layouts differ, and share one when they
//! are equal), and the id of a layout never changes: the table is written
//! to the template file (atomically) before the first record of a new
//! layout is handed on, and loaded at start, so a replay after a restart
//! announces the very templates its records were numbered under. A router
//! that redefines a template id gets the new layout's relay id for its
//! later records; records already buffered keep theirs. The pool user core
//! learns templates at run time (`Exporter::add_template`) and announces
//! them on every association before data that uses them.
//!
//! Which router a record came from: every forwarded layout ends with
//! originalExporterIPv4Address (IE 403) or originalExporterIPv6Address
//! (IE 404) holding the router's source address as the relay saw it, and
//! the record keeps the router's observation domain (v9: source id). These
//! elements were made for exactly this (RFC 7119 section 4.1: the address
//! of an Original Exporter as seen by an IPFIX Mediator), where
//! exporterIPv4Address (130) names the Exporting Process of the message
//! (here the relay) and may already be in a router's template (a v9 System
//! scope becomes 130). A per-record element survives everything downstream
//! (queries, audits, a replay to another collector); an observation-domain
//! renumbering per router would have needed its own persisted table and
//! would have broken the routers' own domain numbering. The domain stays
//! the router's, so billing sequences are per (relay, router domain).
//! NetFlow v9 records with sysUpTime times (FIRST_SWITCHED 22,
//! LAST_SWITCHED 21) also gain systemInitTimeMilliseconds (IE 160) from
//! the packet header (UNIX seconds x 1000 - sysUpTime), which IPFIX needs
//! to make those times absolute and which the v9 header would otherwise
//! take with it.
//!
//! Back-pressure: listeners hand records to the pool user through a
//! bounded queue. It fills when the replay buffer is full (no collector
//! takes records fast enough). UDP routers cannot be paused: a UDP record
//! that finds the queue full is dropped and counted
//! (`poolflow_relay_dropped_records_total{reason="backpressure"}`) and
//! logged. A TCP connection waits instead, stops reading, and its router
//! is paused by TCP flow control.
//!
//! Stopping (SIGTERM): the listeners stop reading at once and the pool user
//! drains what it took. What a router sent over TCP that the relay had not
//! read yet is lost, as with any IPFIX collector that stops (IPFIX over TCP
//! has no application acknowledgement); UDP routers keep sending into the
//! void. Run a relay under a supervisor that restarts it.
//!
//! Metrics: `poolflow_relay_received_messages_total{protocol,transport}`,
//! `poolflow_relay_received_records_total{protocol}`,
//! `poolflow_relay_forwarded_records_total`,
//! `poolflow_relay_dropped_records_total{reason}`,
//! `poolflow_relay_decode_errors_total{protocol,reason}`,
//! `poolflow_relay_input_lost_records_total` (IPFIX sequence gaps between
//! routers and relay), `poolflow_relay_input_lost_packets_total` (NetFlow
//! v9 gaps count packets), `poolflow_relay_sessions{transport}`,
//! `poolflow_relay_templates`, plus the pool user's `poolflow_exporter_*`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use protocol::ipfix::registry::ids;
use protocol::ipfix::{self, FieldSpecifier, IANA_ENTERPRISE, Template, TransportKind};
use protocol::netflow_v9;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::{RelayConfig, StreamConfig};
use crate::stream::{InputRecord, RecordClass, StreamReport, StreamSettings, TemplateSource};

/// Smallest relay template id (RFC 7011: data set ids start at 256).
pub const FIRST_RELAY_TEMPLATE_ID: u16 = 256;
/// IPFIX message and set headers around a record in a forwarded message.
const MESSAGE_OVERHEAD: usize = 16 + 4;
/// How often a UDP listener forgets idle sessions and expired templates.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
/// A UDP listener checks for a stop this often while no datagram comes.
const UDP_POLL_INTERVAL: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// Template registry

/// Why a record got no relay template id.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `max_templates` distinct layouts are defined already.
    #[error("relay template limit of {0} reached")]
    Limit(usize),
    /// The template file could not be written: the id is not handed out,
    /// because a record numbered under an unpersisted id could not be
    /// replayed faithfully after a restart.
    #[error("writing the template file: {0}")]
    Io(#[from] io::Error),
}

/// The relay's templates: forwarded layout → relay template id, in the
/// order they were first seen, persisted in a text file (one template a
/// line: `id scope_count enterprise/element/length ...`).
#[derive(Debug)]
pub struct TemplateRegistry {
    by_layout: HashMap<(u16, Vec<FieldSpecifier>), u16>,
    templates: Vec<Template>,
    max_templates: usize,
    file: Option<PathBuf>,
}

impl TemplateRegistry {
    /// A registry that is not persisted (tests, tools).
    pub fn in_memory(max_templates: usize) -> Self {
        Self {
            by_layout: HashMap::new(),
            templates: Vec::new(),
            max_templates,
            file: None,
        }
    }

    /// Loads the table from `path` (absent: empty) and persists new
    /// entries there.
    pub fn open(path: &Path, max_templates: usize) -> anyhow::Result<Self> {
        let mut registry = Self::in_memory(max_templates);
        match fs::read_to_string(path) {
            Ok(text) => {
                for template in parse_templates(&text)
                    .with_context(|| format!("in template file {}", path.display()))?
                {
                    registry.by_layout.insert(
                        (template.scope_field_count, template.fields.clone()),
                        template.id,
                    );
                    registry.templates.push(template);
                }
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        }
        registry.file = Some(path.to_path_buf());
        Ok(registry)
    }

    /// Every template, in id order.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// The template of a relay id.
    pub fn get(&self, template_id: u16) -> Option<&Template> {
        let index = template_id.checked_sub(FIRST_RELAY_TEMPLATE_ID)? as usize;
        self.templates.get(index)
    }

    /// The relay id of a forwarded layout, defining (and persisting) a new
    /// one the first time a layout is seen.
    pub fn relay_id(
        &mut self,
        scope_field_count: u16,
        fields: &[FieldSpecifier],
    ) -> Result<u16, RegistryError> {
        if let Some(&id) = self.by_layout.get(&(scope_field_count, fields.to_vec())) {
            return Ok(id);
        }
        let limit = self.max_templates.min(usize::from(u16::MAX - 255));
        if self.templates.len() >= limit {
            return Err(RegistryError::Limit(limit));
        }
        let id = FIRST_RELAY_TEMPLATE_ID + self.templates.len() as u16;
        self.templates
            .push(Template::new(id, scope_field_count, fields.to_vec()));
        if let Some(path) = &self.file
            && let Err(error) = write_atomically(path, &format_templates(&self.templates))
        {
            self.templates.pop();
            return Err(RegistryError::Io(error));
        }
        self.by_layout
            .insert((scope_field_count, fields.to_vec()), id);
        Ok(id)
    }
}

fn format_templates(templates: &[Template]) -> String {
    let mut text = String::from(
        "# poolflow relay templates: id scope_field_count enterprise/element/length ...\n",
    );
    for t in templates {
        text.push_str(&format!("{} {}", t.id, t.scope_field_count));
        for f in &t.fields {
            text.push_str(&format!(" {}/{}/{}", f.enterprise, f.id, f.length));
        }
        text.push('\n');
    }
    text
}

fn parse_templates(text: &str) -> anyhow::Result<Vec<Template>> {
    let mut templates = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parse = || -> anyhow::Result<Template> {
            let mut words = line.split_whitespace();
            let id: u16 = words.next().context("no id")?.parse()?;
            let scope: u16 = words.next().context("no scope count")?.parse()?;
            let fields = words
                .map(|word| {
                    let mut parts = word.split('/');
                    let mut next = || parts.next().context("field is not e/id/length");
                    Ok(FieldSpecifier::enterprise(
                        next()?.parse()?,
                        next()?.parse()?,
                        next()?.parse()?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if fields.is_empty() || usize::from(scope) > fields.len() {
                bail!("bad field or scope count");
            }
            Ok(Template::new(id, scope, fields))
        };
        let template = parse().with_context(|| format!("line {}", n + 1))?;
        // Ids are dense from 256: the line order is the id order.
        let expected = FIRST_RELAY_TEMPLATE_ID as usize + templates.len();
        if usize::from(template.id) != expected {
            bail!(
                "line {}: template id {}, expected {expected}",
                n + 1,
                template.id
            );
        }
        templates.push(template);
    }
    Ok(templates)
}

/// Writes FILE.tmp, fsyncs, renames over FILE and fsyncs the directory.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// The registry shared by the listeners and the pool user.
#[derive(Debug, Clone)]
pub struct SharedRegistry(Arc<Mutex<TemplateRegistry>>);

impl SharedRegistry {
    /// Shares `registry`.
    pub fn new(registry: TemplateRegistry) -> Self {
        Self(Arc::new(Mutex::new(registry)))
    }

    /// The registry; a panic elsewhere while holding it leaves the table
    /// consistent (entries are added whole), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, TemplateRegistry> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TemplateSource for SharedRegistry {
    fn template(&self, template_id: u16) -> Option<Template> {
        self.lock().get(template_id).cloned()
    }
}

// ---------------------------------------------------------------------------
// Forwarded layouts

/// The forwarded layout of a router's template (already in IPFIX form; for
/// NetFlow v9 that is `V9Template::to_ipfix`, whose field types 1..127 are
/// the IANA element ids): the router's fields, then
/// systemInitTimeMilliseconds if `with_init_time`, then the router address.
pub fn forwarded_layout(
    router_template: &Template,
    router: IpAddr,
    with_init_time: bool,
) -> (u16, Vec<FieldSpecifier>) {
    let mut fields = router_template.fields.clone();
    if with_init_time {
        fields.push(FieldSpecifier::iana(ids::SYSTEM_INIT_TIME_MILLISECONDS, 8));
    }
    fields.push(match router {
        IpAddr::V4(_) => FieldSpecifier::iana(ids::ORIGINAL_EXPORTER_IPV4_ADDRESS, 4),
        IpAddr::V6(_) => FieldSpecifier::iana(ids::ORIGINAL_EXPORTER_IPV6_ADDRESS, 16),
    });
    (router_template.scope_field_count, fields)
}

/// Whether NetFlow v9 records of this template carry sysUpTime-relative
/// times that need systemInitTimeMilliseconds.
fn has_uptime_times(template: &Template) -> bool {
    template.fields.iter().any(|f| {
        f.enterprise == IANA_ENTERPRISE
            && (f.id == ids::FLOW_START_SYS_UP_TIME || f.id == ids::FLOW_END_SYS_UP_TIME)
    })
}

/// Appends the relay's fields to a router's record bytes.
fn forwarded_record(router_bytes: &[u8], init_ms: Option<u64>, router: IpAddr) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(router_bytes.len() + 8 + 16);
    bytes.extend_from_slice(router_bytes);
    if let Some(init_ms) = init_ms {
        bytes.extend_from_slice(&init_ms.to_be_bytes());
    }
    match router {
        IpAddr::V4(a) => bytes.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => bytes.extend_from_slice(&a.octets()),
    }
    bytes
}

// ---------------------------------------------------------------------------
// One router transport session, sans-IO

/// The input protocol, by the version field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputProtocol {
    /// IPFIX (version 10, RFC 7011).
    Ipfix,
    /// NetFlow version 9 (RFC 3954).
    NetflowV9,
}

impl InputProtocol {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipfix => "ipfix",
            Self::NetflowV9 => "netflow_v9",
        }
    }
}

/// Limits of one router session.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Templates the session may define (all domains).
    pub max_templates: usize,
    /// Observation domains (v9 source ids) tracked.
    pub max_domains: usize,
    /// UDP template lifetime, seconds.
    pub template_lifetime_secs: u64,
    /// Largest forwarded IPFIX message (the pool user's `message_size`):
    /// a record that cannot fit is dropped here, not stalled later.
    pub message_size: usize,
    /// Observation domains whose records are forwarded best effort
    /// (`[best_effort] domains`), not as billing records.
    pub best_effort_domains: Vec<u32>,
}

impl SessionLimits {
    /// The `[relay]` limits, with the pool user's message size and
    /// best-effort domains.
    pub fn new(config: &RelayConfig, message_size: usize, best_effort_domains: &[u32]) -> Self {
        Self {
            max_templates: config.max_templates_per_session,
            max_domains: config.max_domains_per_session,
            template_lifetime_secs: config.template_lifetime.as_secs(),
            message_size,
            best_effort_domains: best_effort_domains.to_vec(),
        }
    }
}

/// One problem with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// Stable label (metrics).
    pub reason: &'static str,
    /// For the log line.
    pub detail: String,
}

/// What one message from a router did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputReport {
    /// `None` when the version was not recognised.
    pub protocol: Option<InputProtocol>,
    /// Data records decoded.
    pub records: u64,
    /// Data records handed on (into `out`).
    pub forwarded: u64,
    /// Records not handed on, by reason.
    pub dropped: Vec<(&'static str, u64)>,
    /// Malformed input.
    pub errors: Vec<InputError>,
    /// IPFIX: data records lost between router and relay (sequence gap).
    pub lost_records: u64,
    /// NetFlow v9: export packets lost (v9 numbers packets).
    pub lost_packets: u64,
    /// The stream cannot be continued (TCP: framing lost or v9).
    pub fatal: bool,
}

impl InputReport {
    fn drop_records(&mut self, reason: &'static str, count: u64) {
        match self.dropped.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += count,
            None => self.dropped.push((reason, count)),
        }
    }

    fn error(&mut self, reason: &'static str, detail: impl ToString) {
        self.errors.push(InputError {
            reason,
            detail: detail.to_string(),
        });
    }
}

#[derive(Debug)]
struct Mapping {
    /// The router's template (IPFIX form) the mapping was made for: a
    /// redefinition of the id shows as a different template here.
    router_template: Template,
    with_init_time: bool,
    relay_id: Result<u16, &'static str>,
}

/// One router transport session (UDP: address and port; TCP: one
/// connection): its template state and its template mappings.
#[derive(Debug)]
pub struct RouterSession {
    router: IpAddr,
    transport: TransportKind,
    limits: SessionLimits,
    ipfix: Option<ipfix::Session>,
    v9: Option<netflow_v9::Session<()>>,
    mappings: HashMap<(InputProtocol, u32, u16), Mapping>,
    /// Last message, unix seconds (UDP idle expiry).
    pub last_seen_secs: u64,
}

impl RouterSession {
    /// A new session of `router` over `transport`, nothing learned yet.
    pub fn new(router: IpAddr, transport: TransportKind, limits: SessionLimits) -> Self {
        Self {
            // A v4 router on a dual-stack socket shows as ::ffff:a.b.c.d.
            router: router.to_canonical(),
            transport,
            limits,
            ipfix: None,
            v9: None,
            mappings: HashMap::new(),
            last_seen_secs: 0,
        }
    }

    /// Templates the session holds.
    pub fn template_count(&self) -> usize {
        self.ipfix.as_ref().map_or(0, |s| s.template_count())
            + self.v9.as_ref().map_or(0, |s| s.template_count())
    }

    /// Forgets UDP templates past their lifetime.
    pub fn expire_templates(&mut self, now_secs: u64) {
        if let Some(s) = &mut self.ipfix {
            s.expire_templates(now_secs);
        }
        if let Some(s) = &mut self.v9 {
            s.expire_templates(now_secs);
        }
    }

    /// Decodes one message (a UDP datagram or a framed TCP message) and
    /// appends its records, in forwarded form, to `out`.
    pub fn handle(
        &mut self,
        bytes: &[u8],
        now_secs: u64,
        registry: &SharedRegistry,
        out: &mut Vec<InputRecord>,
    ) -> InputReport {
        self.last_seen_secs = now_secs;
        let mut report = InputReport::default();
        let Some(version) = bytes.get(..2).map(|v| u16::from_be_bytes([v[0], v[1]])) else {
            report.error("truncated_header", format!("{} bytes", bytes.len()));
            report.fatal = true;
            return report;
        };
        match version {
            ipfix::message::VERSION => {
                self.handle_ipfix(bytes, now_secs, registry, out, &mut report)
            }
            netflow_v9::VERSION if self.transport == TransportKind::Udp => {
                self.handle_v9(bytes, now_secs, registry, out, &mut report)
            }
            netflow_v9::VERSION => {
                report.protocol = Some(InputProtocol::NetflowV9);
                report.error(
                    "netflow_v9_over_tcp",
                    "NetFlow v9 has no message length: it cannot be framed on TCP",
                );
                report.fatal = true;
            }
            other => {
                report.error("unknown_version", format!("version {other}"));
                report.fatal = true;
            }
        }
        if self.mappings.len() > 4 * self.limits.max_templates.max(1) {
            // Withdrawn and redefined ids leave stale mappings behind.
            self.mappings.clear();
        }
        report
    }

    fn handle_ipfix(
        &mut self,
        bytes: &[u8],
        now_secs: u64,
        registry: &SharedRegistry,
        out: &mut Vec<InputRecord>,
        report: &mut InputReport,
    ) {
        report.protocol = Some(InputProtocol::Ipfix);
        let limits = &self.limits;
        let session = self.ipfix.get_or_insert_with(|| {
            let mut config = ipfix::SessionConfig::new(self.transport);
            config.max_templates = limits.max_templates;
            config.max_sequence_scopes = limits.max_domains;
            config.template_lifetime_secs = limits.template_lifetime_secs;
            ipfix::Session::new(config)
        });
        let mut forward = Forwarder {
            router: self.router,
            message_size: self.limits.message_size,
            best_effort_domains: &self.limits.best_effort_domains,
            mappings: &mut self.mappings,
            registry,
            out,
            report: &mut *report,
        };
        let result = session.process(bytes, 0, now_secs, |record| {
            forward.record(
                InputProtocol::Ipfix,
                record.header.observation_domain_id,
                record.template,
                record.bytes,
                None,
            );
        });
        match result {
            Ok(message) => {
                for error in message.errors {
                    report.error(error.reason(), &error);
                }
                if let ipfix::SequenceCheck::Gap { lost } = message.sequence {
                    report.lost_records += lost;
                }
            }
            Err(error) => {
                report.error(error.reason(), &error);
                // Over TCP the next message cannot be found any more.
                report.fatal = true;
            }
        }
    }

    fn handle_v9(
        &mut self,
        bytes: &[u8],
        now_secs: u64,
        registry: &SharedRegistry,
        out: &mut Vec<InputRecord>,
        report: &mut InputReport,
    ) {
        report.protocol = Some(InputProtocol::NetflowV9);
        let limits = &self.limits;
        let session = self.v9.get_or_insert_with(|| {
            netflow_v9::Session::new(netflow_v9::SessionConfig {
                max_templates: limits.max_templates,
                max_templates_per_source: limits.max_templates,
                max_sources: limits.max_domains,
                template_lifetime_secs: Some(limits.template_lifetime_secs),
            })
        });
        let mut forward = Forwarder {
            router: self.router,
            message_size: self.limits.message_size,
            best_effort_domains: &self.limits.best_effort_domains,
            mappings: &mut self.mappings,
            registry,
            out,
            report: &mut *report,
        };
        let result = session.process(&(), bytes, now_secs, |record| {
            let header = record.header;
            // The v9 header's clock pair, turned into the boot time that
            // IPFIX sysUpTime elements are relative to.
            let init_ms = (u64::from(header.unix_secs) * 1000)
                .saturating_sub(u64::from(header.sys_uptime_ms));
            forward.record(
                InputProtocol::NetflowV9,
                header.source_id,
                record.template,
                record.bytes,
                Some(init_ms),
            );
        });
        match result {
            Ok(packet) => {
                for error in packet.errors {
                    report.error(error.reason(), &error);
                }
                if let netflow_v9::SequenceCheck::Gap { lost_packets } = packet.sequence {
                    report.lost_packets += u64::from(lost_packets);
                }
            }
            Err(error) => report.error(error.reason(), &error),
        }
    }
}

/// Maps and copies decoded records (the borrow-split part of a session).
struct Forwarder<'a> {
    router: IpAddr,
    message_size: usize,
    best_effort_domains: &'a [u32],
    mappings: &'a mut HashMap<(InputProtocol, u32, u16), Mapping>,
    registry: &'a SharedRegistry,
    out: &'a mut Vec<InputRecord>,
    report: &'a mut InputReport,
}

impl Forwarder<'_> {
    /// `init_ms`: NetFlow v9's boot time from the packet header, used when
    /// the template has sysUpTime times.
    fn record(
        &mut self,
        protocol: InputProtocol,
        domain: u32,
        template: &Template,
        bytes: &[u8],
        init_ms: Option<u64>,
    ) {
        self.report.records += 1;
        let key = (protocol, domain, template.id);
        let current = self.mappings.get(&key).is_some_and(|m| {
            m.router_template.scope_field_count == template.scope_field_count
                && m.router_template.fields == template.fields
        });
        if !current {
            let with_init_time = init_ms.is_some() && has_uptime_times(template);
            let (scope, fields) = forwarded_layout(template, self.router, with_init_time);
            let relay_id = match self.registry.lock().relay_id(scope, &fields) {
                Ok(id) => Ok(id),
                Err(RegistryError::Limit(limit)) => {
                    self.report.error(
                        "template_limit",
                        format!("relay template limit {limit}: template {} of domain {domain} not forwarded", template.id),
                    );
                    Err("template_limit")
                }
                Err(RegistryError::Io(error)) => {
                    // Not remembered: the next record tries again.
                    tracing::error!(%error, "relay template file not written; record dropped");
                    self.report.drop_records("template_file", 1);
                    return;
                }
            };
            self.mappings.insert(
                key,
                Mapping {
                    router_template: template.clone(),
                    with_init_time,
                    relay_id,
                },
            );
        }
        let mapping = &self.mappings[&key];
        let relay_id = match mapping.relay_id {
            Ok(id) => id,
            Err(reason) => {
                self.report.drop_records(reason, 1);
                return;
            }
        };
        let init_ms = init_ms.filter(|_| mapping.with_init_time);
        let record = forwarded_record(bytes, init_ms, self.router);
        if record.len() + MESSAGE_OVERHEAD > self.message_size {
            self.report.drop_records("record_too_long", 1);
            return;
        }
        if domain == protocol::ipfix::reliability::STATISTICS_DOMAIN {
            // Reserved for the exporter's own reliability statistics: its
            // sequence numbers count those, not billing records.
            self.report.drop_records("reserved_domain", 1);
            return;
        }
        let class = if self.best_effort_domains.contains(&domain) {
            RecordClass::BestEffort
        } else {
            RecordClass::Billing
        };
        self.out.push(InputRecord {
            domain,
            template_id: relay_id,
            bytes: record,
            class,
        });
        self.report.forwarded += 1;
    }
}

// ---------------------------------------------------------------------------
// Accounting: metrics and rate-limited logs

/// At most one log line per interval per listener, with the count of the
/// lines it stands for: a flood of bad datagrams must not flood the log.
#[derive(Debug)]
struct LogLimiter {
    next: Instant,
    suppressed: u64,
}

impl LogLimiter {
    fn new() -> Self {
        Self {
            next: Instant::now(),
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be written.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + Duration::from_secs(1);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

fn account(report: &InputReport, peer: SocketAddr, transport: TransportKind, log: &mut LogLimiter) {
    let protocol = report.protocol.map_or("unknown", InputProtocol::as_str);
    metrics::counter!("poolflow_relay_received_messages_total",
        "protocol" => protocol, "transport" => transport.as_str())
    .increment(1);
    if report.records > 0 {
        metrics::counter!("poolflow_relay_received_records_total", "protocol" => protocol)
            .increment(report.records);
    }
    for (reason, count) in &report.dropped {
        metrics::counter!("poolflow_relay_dropped_records_total", "reason" => *reason)
            .increment(*count);
    }
    for error in &report.errors {
        metrics::counter!("poolflow_relay_decode_errors_total",
            "protocol" => protocol, "reason" => error.reason)
        .increment(1);
    }
    if report.lost_records > 0 {
        metrics::counter!("poolflow_relay_input_lost_records_total").increment(report.lost_records);
    }
    if report.lost_packets > 0 {
        metrics::counter!("poolflow_relay_input_lost_packets_total").increment(report.lost_packets);
    }
    if (!report.errors.is_empty() || !report.dropped.is_empty())
        && let Some(suppressed) = log.allow()
    {
        let errors: Vec<String> = report
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.reason, e.detail))
            .collect();
        tracing::warn!(
            %peer,
            transport = transport.as_str(),
            protocol,
            errors = ?errors,
            dropped = ?report.dropped,
            similar_lines_suppressed = suppressed,
            "bad or dropped router input"
        );
    }
}

fn count_backpressure(dropped: u64, peer: SocketAddr, log: &mut LogLimiter) {
    metrics::counter!("poolflow_relay_dropped_records_total", "reason" => "backpressure")
        .increment(dropped);
    if let Some(suppressed) = log.allow() {
        tracing::warn!(
            %peer,
            dropped,
            similar_lines_suppressed = suppressed,
            "replay buffer full: UDP records dropped (routers cannot be paused)"
        );
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------
// Listeners

/// Everything a listener needs.
#[derive(Debug, Clone)]
struct ListenerContext {
    registry: SharedRegistry,
    records: mpsc::Sender<InputRecord>,
    limits: SessionLimits,
    config: RelayConfig,
}

/// Binds a UDP socket with the configured receive buffer.
fn bind_udp(addr: SocketAddr, receive_buffer_bytes: usize) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
    set_receive_buffer(&socket, receive_buffer_bytes);
    socket.set_read_timeout(Some(UDP_POLL_INTERVAL))?;
    Ok(socket)
}

#[cfg(target_os = "linux")]
fn set_receive_buffer(socket: &UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    // SO_RCVBUFFORCE passes net.core.rmem_max when privileged; SO_RCVBUF
    // (capped by the kernel) otherwise. Failure only costs burst capacity.
    for option in [libc::SO_RCVBUF, libc::SO_RCVBUFFORCE] {
        // SAFETY: a valid socket fd and a pointer to a c_int of its size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn set_receive_buffer(_socket: &UdpSocket, _bytes: usize) {}

/// One UDP listener on its own thread: blocking receive, one consumer, and
/// it never waits for the pool user (a full queue drops and counts).
fn udp_loop(socket: UdpSocket, context: ListenerContext, stop: Arc<AtomicBool>) {
    let local = socket.local_addr().ok();
    let mut sessions: HashMap<SocketAddr, RouterSession> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::new();
    let mut log = LogLimiter::new();
    let mut backpressure_log = LogLimiter::new();
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
    let max_sessions = context.config.max_udp_sessions;
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => {
                let now_secs = unix_secs();
                if !sessions.contains_key(&peer) {
                    if sessions.len() >= max_sessions {
                        evict_idlest(&mut sessions);
                    }
                    sessions.insert(
                        peer,
                        RouterSession::new(peer.ip(), TransportKind::Udp, context.limits.clone()),
                    );
                    metrics::gauge!("poolflow_relay_sessions", "transport" => "udp").increment(1.0);
                }
                let session = sessions.get_mut(&peer).expect("inserted above");
                out.clear();
                let report = session.handle(&buf[..len], now_secs, &context.registry, &mut out);
                account(&report, peer, TransportKind::Udp, &mut log);
                let mut forwarded = 0;
                let mut dropped = 0;
                for record in out.drain(..) {
                    match context.records.try_send(record) {
                        Ok(()) => forwarded += 1,
                        Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                metrics::counter!("poolflow_relay_forwarded_records_total").increment(forwarded);
                if dropped > 0 {
                    count_backpressure(dropped, peer, &mut backpressure_log);
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => {
                // E.g. ICMP errors reported on the socket: keep receiving.
                tracing::debug!(?local, %error, "UDP receive error");
            }
        }
        let now = Instant::now();
        if now >= next_housekeeping {
            next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            let now_secs = unix_secs();
            let before = sessions.len();
            sessions.retain(|_, s| {
                now_secs.saturating_sub(s.last_seen_secs)
                    <= context.config.udp_idle_timeout.as_secs()
            });
            for session in sessions.values_mut() {
                session.expire_templates(now_secs);
            }
            metrics::gauge!("poolflow_relay_sessions", "transport" => "udp")
                .decrement((before - sessions.len()) as f64);
            metrics::gauge!("poolflow_relay_templates")
                .set(context.registry.lock().templates().len() as f64);
        }
    }
    metrics::gauge!("poolflow_relay_sessions", "transport" => "udp")
        .decrement(sessions.len() as f64);
}

fn evict_idlest(sessions: &mut HashMap<SocketAddr, RouterSession>) {
    if let Some(peer) = sessions
        .iter()
        .min_by_key(|(_, s)| s.last_seen_secs)
        .map(|(peer, _)| *peer)
    {
        sessions.remove(&peer);
        metrics::counter!("poolflow_relay_evicted_sessions_total").increment(1);
        metrics::gauge!("poolflow_relay_sessions", "transport" => "udp").decrement(1.0);
        tracing::warn!(%peer, "UDP session limit reached: idlest router session forgotten");
    }
}

async fn serve_tcp(
    listener: TcpListener,
    context: ListenerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(context.config.max_tcp_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            metrics::counter!("poolflow_relay_refused_connections_total").increment(1);
            tracing::warn!(%peer, "TCP connection limit reached: connection refused");
            continue;
        };
        let context = context.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            metrics::gauge!("poolflow_relay_sessions", "transport" => "tcp").increment(1.0);
            tcp_connection(stream, peer, context, shutdown).await;
            metrics::gauge!("poolflow_relay_sessions", "transport" => "tcp").decrement(1.0);
            drop(permit);
        });
    }
}

/// One router's TCP connection: IPFIX messages framed by their length
/// field. Records are handed on with a waiting send, so a full queue stops
/// the reading and TCP flow control pauses the router.
async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    context: ListenerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut session = RouterSession::new(peer.ip(), TransportKind::Tcp, context.limits.clone());
    let mut log = LogLimiter::new();
    let mut message = Vec::with_capacity(65_536);
    let mut out = Vec::new();
    tracing::info!(%peer, "router connected over TCP");
    loop {
        let mut header = [0u8; 4];
        let read = tokio::select! {
            read = stream.read_exact(&mut header) => read,
            _ = shutdown.changed() => return,
        };
        if let Err(error) = read {
            if error.kind() != ErrorKind::UnexpectedEof {
                tracing::info!(%peer, %error, "router TCP connection failed");
            }
            break;
        }
        let version = u16::from_be_bytes([header[0], header[1]]);
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        message.clear();
        message.extend_from_slice(&header);
        // Only IPFIX has its length here; anything else is handed to the
        // session as is, which counts it and ends the connection.
        if version == ipfix::message::VERSION && length >= ipfix::message::HEADER_LEN {
            message.resize(length, 0);
            let read = tokio::select! {
                read = stream.read_exact(&mut message[4..]) => read,
                _ = shutdown.changed() => return,
            };
            if read.is_err() {
                tracing::info!(%peer, "router TCP connection ended inside a message");
                break;
            }
        }
        out.clear();
        let report = session.handle(&message, unix_secs(), &context.registry, &mut out);
        account(&report, peer, TransportKind::Tcp, &mut log);
        let forwarded = out.len() as u64;
        for record in out.drain(..) {
            tokio::select! {
                sent = context.records.send(record) => if sent.is_err() { return },
                _ = shutdown.changed() => {
                    tracing::warn!(%peer, "stopping: records of a message from the router were not taken");
                    return;
                }
            }
        }
        metrics::counter!("poolflow_relay_forwarded_records_total").increment(forwarded);
        if report.fatal {
            tracing::warn!(%peer, "closing router TCP connection: its framing is lost");
            break;
        }
    }
    tracing::info!(%peer, "router TCP connection closed");
}

// ---------------------------------------------------------------------------
// The command

/// What `exporter relay` needs beyond the configuration.
pub struct RelayOptions {
    /// After the listeners stopped: longest wait for the last cookies.
    pub exit_drain_timeout: Duration,
}

/// Runs the relay until SIGTERM or SIGINT: the listeners stop, the pool
/// user drains (up to `exit_drain_timeout`) and saves its state. A second
/// signal stops at once (state saved, unacknowledged records kept in the
/// spill for the next run).
pub async fn run(config: StreamConfig, options: RelayOptions) -> anyhow::Result<StreamReport> {
    config.relay.check()?;
    let relay = config.relay.clone();
    let template_file = config.relay_template_file();
    let registry =
        SharedRegistry::new(TemplateRegistry::open(&template_file, relay.max_templates)?);
    let known = registry.lock().templates().to_vec();
    tracing::info!(
        templates = known.len(),
        file = %template_file.display(),
        "relay template table loaded"
    );
    let settings: StreamSettings = config.stream_settings(known, options.exit_drain_timeout)?;
    let (records, input) = mpsc::channel(relay.queue_records);
    let context = ListenerContext {
        registry: registry.clone(),
        records,
        limits: SessionLimits::new(&relay, config.message_size, &config.best_effort.domains),
        config: relay.clone(),
    };

    // Bind everything first: a wrong address fails the start, not later.
    let mut udp_sockets = Vec::new();
    for addr in &relay.udp_listen {
        let socket = bind_udp(*addr, relay.udp_receive_buffer_bytes)?;
        tracing::info!(addr = %socket.local_addr()?, "relay listening on UDP (IPFIX, NetFlow v9)");
        udp_sockets.push(socket);
    }
    let mut tcp_listeners = Vec::new();
    for addr in &relay.tcp_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding TCP {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "relay listening on TCP (IPFIX)");
        tcp_listeners.push(listener);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut udp_threads = Vec::new();
    for socket in udp_sockets {
        let (context, stop) = (context.clone(), Arc::clone(&stop));
        udp_threads.push(
            std::thread::Builder::new()
                .name("relay-udp".into())
                .spawn(move || udp_loop(socket, context, stop))?,
        );
    }
    for listener in tcp_listeners {
        tokio::spawn(serve_tcp(listener, context.clone(), shutdown_rx.clone()));
    }
    // The listeners hold the only senders: when they stop, the input ends
    // and the pool user drains.
    drop(context);

    let (second_signal_tx, second_signal) = tokio::sync::oneshot::channel::<()>();
    let stop_signal = Arc::clone(&stop);
    let mut signals = daemon_common::Signals::install().context("installing signal handlers")?;
    tokio::spawn(async move {
        signals.stop().await;
        tracing::info!("stopping: listeners closed, draining to the pool");
        stop_signal.store(true, Ordering::Relaxed);
        let _ = shutdown_tx.send(true);
        signals.stop().await;
        tracing::warn!("second signal: stopping without waiting for cookies");
        let _ = second_signal_tx.send(());
        // Keep the watch sender alive until here so listeners see `true`.
        drop(shutdown_tx);
    });
    let shutdown = async {
        let _ = second_signal.await;
    };
    let report =
        crate::stream::run_with_templates(settings, Some(&registry), input, shutdown, |progress| {
            if let crate::stream::Progress::Status {
                records_in,
                records_sent,
                buffered,
                pe,
            } = progress
            {
                tracing::debug!(records_in, records_sent, buffered, ?pe, "relay status");
            }
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    for thread in udp_threads {
        let _ = thread.join();
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ipfix::MessageWriter;
    use std::net::Ipv4Addr;

    const ROUTER_A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    /// A domain configured best effort in [`limits`].
    const BEST_EFFORT_DOMAIN: u32 = 77;
    const ROUTER_B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn limits() -> SessionLimits {
        SessionLimits {
            max_templates: 16,
            max_domains: 16,
            template_lifetime_secs: 1800,
            message_size: 1400,
            best_effort_domains: vec![BEST_EFFORT_DOMAIN],
        }
    }

    /// src addr, dst addr, packets, octets.
    fn router_template(id: u16) -> Template {
        Template::new(
            id,
            0,
            vec![
                FieldSpecifier::iana(ids::SOURCE_IPV4_ADDRESS, 4),
                FieldSpecifier::iana(ids::DESTINATION_IPV4_ADDRESS, 4),
                FieldSpecifier::iana(2, 4),
                FieldSpecifier::iana(1, 4),
            ],
        )
    }

    fn ipfix_message(domain: u32, template: &Template, records: &[[u8; 16]]) -> Vec<u8> {
        let mut writer = MessageWriter::new(1400);
        writer.start(domain, 1_763_700_000, 0);
        writer.add_template(template).unwrap();
        for record in records {
            writer.add_record(template.id, record).unwrap();
        }
        writer.finish().to_vec()
    }

    fn record(n: u8) -> [u8; 16] {
        [10, 0, 0, n, 192, 0, 2, 10, 0, 0, 0, 3, 0, 0, 1, 44]
    }

    #[test]
    fn routers_template_ids_are_remapped_without_collision() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(64));
        let mut a = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let mut b = RouterSession::new(ROUTER_B, TransportKind::Udp, limits());
        // Both routers use id 256, for different layouts.
        let layout_a = router_template(256);
        let mut layout_b = router_template(256);
        layout_b.fields.swap(0, 1);
        let layout_b = Template::new(256, 0, layout_b.fields);
        let mut out = Vec::new();
        let report = a.handle(
            &ipfix_message(5, &layout_a, &[record(1)]),
            0,
            &registry,
            &mut out,
        );
        assert_eq!((report.records, report.forwarded), (1, 1), "{report:?}");
        b.handle(
            &ipfix_message(5, &layout_b, &[record(2)]),
            0,
            &registry,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_ne!(out[0].template_id, out[1].template_id, "no collision");
        assert_eq!(out[0].domain, 5, "the router's domain is kept");

        // Each forwarded record decodes with its relay template and ends
        // with its router's address.
        for (record, router) in out.iter().zip([ROUTER_A, ROUTER_B]) {
            let template = registry.template(record.template_id).unwrap();
            let last = ipfix::record_fields(&template, &record.bytes)
                .last()
                .unwrap();
            assert_eq!(last.0.id, ids::ORIGINAL_EXPORTER_IPV4_ADDRESS);
            let IpAddr::V4(v4) = router else {
                unreachable!()
            };
            assert_eq!(last.1, v4.octets());
        }

        // A third router with router A's layout under another id shares A's
        // relay template: ids follow layouts, not routers.
        let mut c = RouterSession::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)),
            TransportKind::Udp,
            limits(),
        );
        c.handle(
            &ipfix_message(9, &router_template(300), &[record(3)]),
            0,
            &registry,
            &mut out,
        );
        assert_eq!(out[2].template_id, out[0].template_id);
        assert_eq!(registry.lock().templates().len(), 2);
    }

    #[test]
    fn records_of_best_effort_domains_are_forwarded_best_effort() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(64));
        let mut router = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let template = router_template(256);
        let mut out = Vec::new();
        for domain in [5, BEST_EFFORT_DOMAIN, 6] {
            router.handle(
                &ipfix_message(domain, &template, &[record(1), record(2)]),
                0,
                &registry,
                &mut out,
            );
        }
        let classes: Vec<(u32, RecordClass)> = out.iter().map(|r| (r.domain, r.class)).collect();
        assert_eq!(
            classes,
            [
                (5, RecordClass::Billing),
                (5, RecordClass::Billing),
                (BEST_EFFORT_DOMAIN, RecordClass::BestEffort),
                (BEST_EFFORT_DOMAIN, RecordClass::BestEffort),
                (6, RecordClass::Billing),
                (6, RecordClass::Billing),
            ]
        );
    }

    #[test]
    fn template_table_survives_a_restart_with_the_same_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.templates");
        let (first, second) = {
            let mut registry = TemplateRegistry::open(&path, 8).unwrap();
            let (scope, fields) = forwarded_layout(&router_template(256), ROUTER_A, false);
            let first = registry.relay_id(scope, &fields).unwrap();
            let (scope, fields) = forwarded_layout(&router_template(256), ROUTER_A, true);
            let second = registry.relay_id(scope, &fields).unwrap();
            (first, second)
        };
        assert_eq!((first, second), (256, 257));
        let mut reopened = TemplateRegistry::open(&path, 8).unwrap();
        assert_eq!(reopened.templates().len(), 2);
        let (scope, fields) = forwarded_layout(&router_template(999), ROUTER_B, true);
        assert_eq!(reopened.relay_id(scope, &fields).unwrap(), second);
        assert_eq!(reopened.get(257).unwrap().fields, fields);
        // Damaged files are refused rather than renumbered.
        fs::write(&path, "257 0 0/8/4\n").unwrap();
        assert!(TemplateRegistry::open(&path, 8).is_err());
    }

    #[test]
    fn template_limit_drops_and_counts() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(1));
        let mut a = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let mut out = Vec::new();
        a.handle(
            &ipfix_message(1, &router_template(256), &[record(1)]),
            0,
            &registry,
            &mut out,
        );
        let mut other = router_template(257);
        other.fields.pop();
        let other = Template::new(257, 0, other.fields);
        let mut writer = MessageWriter::new(1400);
        writer.start(1, 0, 1);
        writer.add_template(&other).unwrap();
        writer.add_record(257, &record(2)[..12]).unwrap();
        writer.add_record(257, &record(3)[..12]).unwrap();
        let report = a.handle(writer.finish(), 0, &registry, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(report.dropped, vec![("template_limit", 2)]);
        assert_eq!(report.errors[0].reason, "template_limit");
    }

    /// A NetFlow v9 packet: one template (id 300) with the v9 field types
    /// IN_BYTES 1, IN_PKTS 2, IPV4_SRC_ADDR 8, LAST_SWITCHED 21,
    /// FIRST_SWITCHED 22, and one data record.
    fn v9_packet() -> Vec<u8> {
        let mut p = Vec::new();
        let header = |p: &mut Vec<u8>| {
            p.extend_from_slice(&9u16.to_be_bytes());
            p.extend_from_slice(&2u16.to_be_bytes()); // count
            p.extend_from_slice(&60_000u32.to_be_bytes()); // sysUpTime
            p.extend_from_slice(&1_763_700_000u32.to_be_bytes()); // unix secs
            p.extend_from_slice(&0u32.to_be_bytes()); // sequence
            p.extend_from_slice(&42u32.to_be_bytes()); // source id
        };
        header(&mut p);
        let fields: [(u16, u16); 5] = [(1, 4), (2, 4), (8, 4), (21, 4), (22, 4)];
        p.extend_from_slice(&0u16.to_be_bytes());
        p.extend_from_slice(&(4 + 4 + 4 * fields.len() as u16).to_be_bytes());
        p.extend_from_slice(&300u16.to_be_bytes());
        p.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        for (t, l) in fields {
            p.extend_from_slice(&t.to_be_bytes());
            p.extend_from_slice(&l.to_be_bytes());
        }
        p.extend_from_slice(&300u16.to_be_bytes());
        p.extend_from_slice(&(4 + 20u16).to_be_bytes());
        for v in [
            1000u32,
            3,
            u32::from_be_bytes([10, 0, 0, 7]),
            59_000,
            58_000,
        ] {
            p.extend_from_slice(&v.to_be_bytes());
        }
        p
    }

    #[test]
    fn netflow_v9_template_becomes_an_ipfix_template_with_the_same_elements() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(8));
        let mut session = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let mut out = Vec::new();
        let report = session.handle(&v9_packet(), 0, &registry, &mut out);
        assert_eq!(report.protocol, Some(InputProtocol::NetflowV9));
        assert!(report.errors.is_empty(), "{report:?}");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].domain, 42, "source id becomes the domain");
        let template = registry.template(out[0].template_id).unwrap();
        let elements: Vec<(u16, u16)> = template.fields.iter().map(|f| (f.id, f.length)).collect();
        assert_eq!(
            elements,
            [(1, 4), (2, 4), (8, 4), (21, 4), (22, 4), (160, 8), (403, 4)],
            "v9 types are IANA ids; init time and router appended"
        );
        assert!(
            template
                .fields
                .iter()
                .all(|f| f.enterprise == IANA_ENTERPRISE)
        );
        let values: Vec<&[u8]> = ipfix::record_fields(&template, &out[0].bytes)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(values[2], [10, 0, 0, 7]);
        // Boot time = export time - uptime: 1_763_700_000_000 - 60_000 ms.
        assert_eq!(values[5], (1_763_699_940_000u64).to_be_bytes());
        assert_eq!(values[6], [192, 0, 2, 1]);

        // The IPFIX template goes out through the pool user's encoder and
        // decodes again unchanged.
        let mut writer = MessageWriter::new(1400);
        writer.start(42, 0, 0);
        writer.add_template(&template).unwrap();
        writer.add_record(template.id, &out[0].bytes).unwrap();
        let mut collector = ipfix::Session::new(ipfix::SessionConfig::new(TransportKind::Tcp));
        let mut seen = 0;
        collector
            .process(writer.finish(), 0, 0, |r| {
                assert_eq!(*r.template, template);
                seen += 1;
            })
            .unwrap();
        assert_eq!(seen, 1);
    }

    #[test]
    fn malformed_input_is_counted_and_the_session_goes_on() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(8));
        let mut session = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let mut out = Vec::new();
        let report = session.handle(&[0, 5, 1, 2, 3], 0, &registry, &mut out);
        assert_eq!(report.errors[0].reason, "unknown_version");
        let report = session.handle(&[0], 0, &registry, &mut out);
        assert_eq!(report.errors[0].reason, "truncated_header");
        let mut bad = ipfix_message(1, &router_template(256), &[record(1)]);
        bad[3] ^= 0x40; // length field
        let report = session.handle(&bad, 0, &registry, &mut out);
        assert!(!report.errors.is_empty());
        let mut truncated_v9 = v9_packet();
        truncated_v9.truncate(30);
        let report = session.handle(&truncated_v9, 0, &registry, &mut out);
        assert_eq!(report.errors[0].reason, "flowset_overrun", "{report:?}");
        assert!(out.is_empty());
        let report = session.handle(&v9_packet(), 0, &registry, &mut out);
        assert_eq!(report.forwarded, 1, "the session still works");
        let report = session.handle(
            &ipfix_message(1, &router_template(256), &[record(1), record(2)]),
            0,
            &registry,
            &mut out,
        );
        assert_eq!(report.forwarded, 2);
    }

    #[test]
    fn netflow_v9_over_tcp_is_refused() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(8));
        let mut session = RouterSession::new(ROUTER_A, TransportKind::Tcp, limits());
        let mut out = Vec::new();
        let report = session.handle(&v9_packet(), 0, &registry, &mut out);
        assert!(report.fatal);
        assert_eq!(report.errors[0].reason, "netflow_v9_over_tcp");
        assert!(out.is_empty());
    }

    #[test]
    fn redefined_router_template_gets_the_new_layouts_id() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(8));
        let mut session = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let mut out = Vec::new();
        session.handle(
            &ipfix_message(1, &router_template(256), &[record(1)]),
            0,
            &registry,
            &mut out,
        );
        let mut fields = router_template(256).fields;
        fields.reverse();
        let redefined = Template::new(256, 0, fields);
        session.handle(
            &ipfix_message(1, &redefined, &[record(2)]),
            1,
            &registry,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_ne!(out[0].template_id, out[1].template_id);
    }

    #[test]
    fn pool_user_core_announces_templates_learned_at_run_time() {
        use crate::pool_user::{Exporter, ExporterConfig, IPFIX_PPID, Output};
        use crate::sequence::ExporterState;
        use asap_client::PoolElementInfo;
        use protocol::rserpool::params::{
            TransportAddress, TransportKind as AsapTransportKind, TransportUse,
        };

        let now = Instant::now();
        let mut core = Exporter::new(
            ExporterConfig::new(7),
            ExporterState::new(7),
            Vec::new(),
            now,
            0,
        )
        .unwrap();
        core.start();
        let pe = PoolElementInfo {
            pe_id: 1,
            user_transport: TransportAddress {
                kind: AsapTransportKind::Sctp(TransportUse::DataPlusControl),
                port: 4739,
                addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            },
            policy: policies::PolicyParams::RoundRobin,
            registration_life: 30_000,
            home_registrar_id: 1,
        };
        // Select → Connect → Up.
        assert_eq!(core.poll_output(now), Some(Output::Select));
        core.handle_selected(now, Ok(vec![pe]));
        let Some(Output::Connect { association, .. }) = core.poll_output(now) else {
            panic!("no connect");
        };
        core.handle_association_up(now, association);
        while core.poll_output(now).is_some() {}

        let template = Template::new(256, 0, router_template(256).fields);
        assert!(!core.has_template(256));
        core.add_template(template.clone());
        assert!(core.has_template(256));
        core.push_record(1, 256, record(1).to_vec()).unwrap();
        let mut ipfix_messages = Vec::new();
        while let Some(output) = core.poll_output(now) {
            if let Output::Send {
                ppid: IPFIX_PPID,
                payload,
                ..
            } = output
            {
                ipfix_messages.push(payload);
            }
        }
        // The collector side must learn the template before the data.
        let mut collector = ipfix::Session::new(ipfix::SessionConfig::new(TransportKind::Tcp));
        let mut records = 0;
        for message in &ipfix_messages {
            let report = collector.process(message, 0, 0, |_| records += 1).unwrap();
            assert!(report.errors.is_empty(), "{report:?}");
        }
        assert_eq!(records, 1);
        assert_eq!(
            collector.template(1, 256).map(|t| (**t).clone()),
            Some(template)
        );
    }
}
