//! Sans-IO server table (RFC 5351 §3, RFC 5352 §3.6): the registrars a PE or
//! PU may use, from the static list and from ASAP Server Announces.
//!
//! Registrars are addressed by a stable [`RegistrarIndex`] ("slot"): the
//! static list takes slots `0..static_count` and is always a candidate;
//! every registrar learnt from an announce gets the next slot and stays a
//! candidate until [`ServerTableConfig::entry_lifetime`] passes without a
//! new announce from it. Slots are never renumbered, so an index the PE or
//! PU state machine holds keeps naming the same registrar; a slot whose
//! entry expired is reused for a new registrar only when the table is full
//! ([`ServerTableConfig::max_announced`]), which bounds what a stream of
//! forged announces can make the table hold.
//!
//! The driver owns the UDP socket: it hands every datagram to
//! [`ServerTable::on_announce`] with its source and reads the candidates
//! back with [`ServerTable::availability`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use protocol::rserpool::asap::Message;
use protocol::rserpool::{ASAP_PORT, DecodeError, TransportAddress, TransportKind};

use crate::RegistrarIndex;
use crate::driver::{RegistrarAddress, RegistrarTransport};

/// How the PE or PU reaches a registrar that announces an SCTP transport.
/// ASAP says "SCTP"; whether the registrar runs the kernel's SCTP or SCTP
/// over UDP is the deployment's choice, so it is configured, not guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnouncedSctp {
    /// SCTP over UDP (RFC 6951), SCTP port = UDP port = the announced port.
    OverUdp,
    /// The kernel's SCTP (e.g. Debian's RSPLIB registrar).
    Kernel,
}

/// What a [`ServerTable`] accepts from announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTableConfig {
    /// An announced registrar stops being a candidate this long after its
    /// last announce (RSPLIB and poolflow registrars announce every second).
    pub entry_lifetime: Duration,
    /// How announced SCTP transports are reached; `None` skips them.
    pub sctp: Option<AnnouncedSctp>,
    /// Whether announced TCP transports are used.
    pub tcp: bool,
    /// Most announced registrars held at once.
    pub max_announced: usize,
}

impl Default for ServerTableConfig {
    fn default() -> Self {
        Self {
            entry_lifetime: Duration::from_secs(5),
            sctp: Some(AnnouncedSctp::OverUdp),
            tcp: true,
            max_announced: 32,
        }
    }
}

/// A registrar learnt from its Server Announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnouncedRegistrar {
    /// Its server identifier.
    pub server_identifier: u32,
    /// Where to reach it.
    pub address: RegistrarAddress,
    /// The announce listed no transport, so `address` is its source
    /// address and the ASAP port (RSPLIB's registrar announces so).
    pub from_source_address: bool,
}

/// What one accepted announce did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceOutcome {
    /// A registrar not in the table took this slot.
    Learned(RegistrarIndex),
    /// A live entry was re-announced: its lifetime starts again.
    Refreshed(RegistrarIndex),
    /// An expired entry was announced again and is a candidate once more.
    Revived(RegistrarIndex),
}

impl AnnounceOutcome {
    /// The slot the announce concerns.
    pub fn slot(self) -> RegistrarIndex {
        match self {
            Self::Learned(slot) | Self::Refreshed(slot) | Self::Revived(slot) => slot,
        }
    }

    /// Whether the set of candidates changed.
    pub fn changes_candidates(self) -> bool {
        !matches!(self, Self::Refreshed(_))
    }
}

/// Why a datagram taught the table nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// Not a decodable ASAP message.
    #[error("malformed: {0}")]
    Malformed(#[from] DecodeError),
    /// A well-formed ASAP message of another type.
    #[error("ASAP message type {0:#04x} is not a Server Announce")]
    NotAnAnnounce(u8),
    /// None of the announced transports is one this PE/PU speaks.
    #[error("no usable transport (SCTP accepted: {sctp}, TCP accepted: {tcp})")]
    NoUsableTransport {
        /// SCTP transports are accepted.
        sctp: bool,
        /// TCP transports are accepted.
        tcp: bool,
    },
    /// Every slot holds a live registrar.
    #[error("server table full ({0} announced registrars)")]
    TableFull(usize),
}

impl AnnounceError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::NotAnAnnounce(_) => "not_an_announce",
            Self::NoUsableTransport { .. } => "no_usable_transport",
            Self::TableFull(_) => "table_full",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    registrar: AnnouncedRegistrar,
    expires_at: Instant,
}

/// The server table of one PE or PU.
#[derive(Debug, Clone)]
pub struct ServerTable {
    config: ServerTableConfig,
    static_count: usize,
    /// Slot `static_count + i` is `announced[i]`.
    announced: Vec<Entry>,
}

impl ServerTable {
    /// A table whose first `static_count` slots are the static list.
    pub fn new(config: ServerTableConfig, static_count: usize) -> Self {
        Self {
            config,
            static_count,
            announced: Vec::new(),
        }
    }

    /// Number of slots, static and announced, live or expired.
    pub fn slot_count(&self) -> usize {
        self.static_count + self.announced.len()
    }

    /// The announced registrar in `slot` (live or expired); `None` for a
    /// static slot or one that does not exist.
    pub fn announced(&self, slot: RegistrarIndex) -> Option<&AnnouncedRegistrar> {
        slot.checked_sub(self.static_count)
            .and_then(|i| self.announced.get(i))
            .map(|entry| &entry.registrar)
    }

    /// Per slot: whether it is a candidate at `now` (static slots always).
    pub fn availability(&self, now: Instant) -> Vec<bool> {
        std::iter::repeat_n(true, self.static_count)
            .chain(self.announced.iter().map(|entry| now < entry.expires_at))
            .collect()
    }

    /// The announced registrars that are candidates at `now`, by slot.
    pub fn live_announced(
        &self,
        now: Instant,
    ) -> impl Iterator<Item = (RegistrarIndex, &AnnouncedRegistrar)> {
        self.announced
            .iter()
            .enumerate()
            .filter(move |(_, entry)| now < entry.expires_at)
            .map(|(i, entry)| (self.static_count + i, &entry.registrar))
    }

    /// When the next live entry expires: the driver re-reads
    /// [`availability`](Self::availability) then.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.announced
            .iter()
            .map(|entry| entry.expires_at)
            .filter(|at| *at > now)
            .min()
    }

    /// One datagram received on the announce socket from `source`.
    pub fn on_announce(
        &mut self,
        now: Instant,
        bytes: &[u8],
        source: SocketAddr,
    ) -> Result<AnnounceOutcome, AnnounceError> {
        let (server_identifier, transports) = match Message::decode(bytes)? {
            Message::ServerAnnounce {
                server_identifier,
                transports,
            } => (server_identifier, transports),
            other => return Err(AnnounceError::NotAnAnnounce(other.message_type())),
        };
        let address = self.usable_address(&transports, source.ip()).ok_or(
            AnnounceError::NoUsableTransport {
                sctp: self.config.sctp.is_some(),
                tcp: self.config.tcp,
            },
        )?;
        let registrar = AnnouncedRegistrar {
            server_identifier,
            address,
            from_source_address: transports.is_empty(),
        };
        let expires_at = now + self.config.entry_lifetime;
        if let Some(i) = self
            .announced
            .iter()
            .position(|entry| entry.registrar == registrar)
        {
            let entry = &mut self.announced[i];
            let was_live = now < entry.expires_at;
            entry.expires_at = expires_at;
            let slot = self.static_count + i;
            return Ok(if was_live {
                AnnounceOutcome::Refreshed(slot)
            } else {
                AnnounceOutcome::Revived(slot)
            });
        }
        let entry = Entry {
            registrar,
            expires_at,
        };
        if self.announced.len() < self.config.max_announced {
            self.announced.push(entry);
            return Ok(AnnounceOutcome::Learned(
                self.static_count + self.announced.len() - 1,
            ));
        }
        // Full: the entry that expired longest ago makes room.
        let oldest_expired = self
            .announced
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.expires_at <= now)
            .min_by_key(|(_, entry)| entry.expires_at)
            .map(|(i, _)| i);
        match oldest_expired {
            Some(i) => {
                self.announced[i] = entry;
                Ok(AnnounceOutcome::Learned(self.static_count + i))
            }
            None => Err(AnnounceError::TableFull(self.announced.len())),
        }
    }

    /// The first announced transport this PE/PU speaks, in the registrar's
    /// order; no transport at all means "the announce's source, ASAP port"
    /// (RFC 5352 §2.2.10).
    fn usable_address(
        &self,
        transports: &[TransportAddress],
        source: IpAddr,
    ) -> Option<RegistrarAddress> {
        if transports.is_empty() {
            let addr = SocketAddr::new(source, ASAP_PORT);
            return self.reach_sctp(addr).or_else(|| self.reach_tcp(addr));
        }
        transports.iter().find_map(|transport| {
            let addr = SocketAddr::new(pick_address(&transport.addresses, source), transport.port);
            match transport.kind {
                TransportKind::Sctp(_) => self.reach_sctp(addr),
                TransportKind::Tcp(_) => self.reach_tcp(addr),
                _ => None,
            }
        })
    }

    fn reach_sctp(&self, addr: SocketAddr) -> Option<RegistrarAddress> {
        self.config.sctp.map(|sctp| RegistrarAddress {
            addr,
            transport: match sctp {
                AnnouncedSctp::OverUdp => RegistrarTransport::SctpOverUdp {
                    sctp_port: addr.port(),
                },
                AnnouncedSctp::Kernel => RegistrarTransport::KernelSctp,
            },
        })
    }

    fn reach_tcp(&self, addr: SocketAddr) -> Option<RegistrarAddress> {
        self.config.tcp.then(|| RegistrarAddress::tcp(addr))
    }
}

/// The address of a (possibly multi-homed) transport to connect to: the
/// announce's source when listed; else the first one usable from here. A
/// loopback or link-local address is ours, not the registrar's, unless the
/// announce itself came from this host: over loopback (RSPLIB lists `::1`
/// and 127.0.0.1 first), or with no source address at all (what a group
/// routed over `lo`, which has no address of link scope, arrives with).
/// Else the source.
fn pick_address(addresses: &[IpAddr], source: IpAddr) -> IpAddr {
    if addresses.contains(&source) {
        return source;
    }
    let from_this_host = source.is_loopback() || source.is_unspecified();
    let local_only = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local(),
    };
    let usable = |ip: &&IpAddr| {
        !ip.is_unspecified()
            && !ip.is_multicast()
            && (from_this_host || !local_only(ip))
            && ip.is_ipv4() == source.is_ipv4()
    };
    addresses.iter().find(usable).copied().unwrap_or(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::rserpool::TransportUse;

    fn announce(server_identifier: u32, transports: Vec<TransportAddress>) -> Vec<u8> {
        Message::ServerAnnounce {
            server_identifier,
            transports,
        }
        .to_bytes()
    }

    fn sctp(addresses: &[&str], port: u16) -> TransportAddress {
        TransportAddress {
            kind: TransportKind::Sctp(TransportUse::DataPlusControl),
            port,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn tcp(address: &str, port: u16) -> TransportAddress {
        TransportAddress {
            kind: TransportKind::Tcp(TransportUse::DataPlusControl),
            port,
            addresses: vec![address.parse().unwrap()],
        }
    }

    fn source(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn kernel_table(static_count: usize) -> ServerTable {
        ServerTable::new(
            ServerTableConfig {
                sctp: Some(AnnouncedSctp::Kernel),
                ..ServerTableConfig::default()
            },
            static_count,
        )
    }

    #[test]
    fn announced_registrar_follows_the_static_list_and_expires() {
        let t0 = Instant::now();
        let mut table = kernel_table(2);
        let bytes = announce(7, vec![sctp(&["192.0.2.2"], 3863)]);
        let outcome = table
            .on_announce(t0, &bytes, source("192.0.2.2:40000"))
            .unwrap();
        assert_eq!(outcome, AnnounceOutcome::Learned(2));
        assert_eq!(
            table.announced(2),
            Some(&AnnouncedRegistrar {
                server_identifier: 7,
                address: RegistrarAddress::kernel_sctp(source("192.0.2.2:3863")),
                from_source_address: false,
            })
        );
        assert_eq!(table.availability(t0), vec![true, true, true]);
        assert_eq!(table.poll_timeout(t0), Some(t0 + Duration::from_secs(5)));
        // Re-announced within its lifetime: refreshed, lifetime restarts.
        let t1 = t0 + Duration::from_secs(4);
        let outcome = table
            .on_announce(t1, &bytes, source("192.0.2.2:40000"))
            .unwrap();
        assert_eq!(outcome, AnnounceOutcome::Refreshed(2));
        assert!(!outcome.changes_candidates());
        assert_eq!(
            table.availability(t0 + Duration::from_secs(8)),
            vec![true, true, true]
        );
        // Silent for a lifetime: no longer a candidate, the static list is.
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(table.availability(t2), vec![true, true, false]);
        assert_eq!(table.poll_timeout(t2), None);
        assert_eq!(table.live_announced(t2).count(), 0);
        // Heard again: the same slot comes back.
        let outcome = table
            .on_announce(t2, &bytes, source("192.0.2.2:40000"))
            .unwrap();
        assert_eq!(outcome, AnnounceOutcome::Revived(2));
        assert!(outcome.changes_candidates());
        assert_eq!(table.availability(t2), vec![true, true, true]);
    }

    #[test]
    fn several_registrars_take_stable_slots() {
        let t0 = Instant::now();
        let mut table = kernel_table(0);
        let a = announce(1, vec![sctp(&["192.0.2.1"], 3863)]);
        let b = announce(2, vec![tcp("192.0.2.3", 3863)]);
        assert_eq!(
            table.on_announce(t0, &a, source("192.0.2.1:5000")),
            Ok(AnnounceOutcome::Learned(0))
        );
        assert_eq!(
            table.on_announce(t0, &b, source("192.0.2.3:5000")),
            Ok(AnnounceOutcome::Learned(1))
        );
        assert_eq!(
            table.on_announce(t0, &a, source("192.0.2.1:5000")),
            Ok(AnnounceOutcome::Refreshed(0))
        );
        let live: Vec<_> = table
            .live_announced(t0)
            .map(|(slot, r)| (slot, r.server_identifier, r.address))
            .collect();
        assert_eq!(
            live,
            vec![
                (
                    0,
                    1,
                    RegistrarAddress::kernel_sctp(source("192.0.2.1:3863"))
                ),
                (1, 2, RegistrarAddress::tcp(source("192.0.2.3:3863"))),
            ]
        );
        // Only `a` keeps announcing: `b` expires on its own.
        let t1 = t0 + Duration::from_secs(3);
        table.on_announce(t1, &a, source("192.0.2.1:5000")).unwrap();
        assert_eq!(
            table.availability(t0 + Duration::from_secs(6)),
            vec![true, false]
        );
    }

    #[test]
    fn transport_is_the_first_usable_one_at_a_reachable_address() {
        let t0 = Instant::now();
        // TCP not spoken: the SCTP transport after it is used.
        let mut table = ServerTable::new(
            ServerTableConfig {
                tcp: false,
                ..ServerTableConfig::default()
            },
            0,
        );
        // RSPLIB lists loopback addresses first; from another host they
        // would be the receiver itself.
        let bytes = announce(
            9,
            vec![
                tcp("192.0.2.9", 3863),
                sctp(&["127.0.0.1", "::1", "198.51.100.7"], 3863),
            ],
        );
        table
            .on_announce(t0, &bytes, source("203.0.113.1:3863"))
            .unwrap();
        assert_eq!(
            table.announced(0).unwrap().address,
            RegistrarAddress::sctp_over_udp(source("198.51.100.7:3863"))
        );
        // The source address wins when it is listed.
        let bytes = announce(10, vec![sctp(&["198.51.100.8", "192.0.2.10"], 3863)]);
        table
            .on_announce(t0, &bytes, source("192.0.2.10:1234"))
            .unwrap();
        assert_eq!(
            table.announced(1).unwrap().address.addr,
            source("192.0.2.10:3863")
        );
        // No transport at all: the source, ASAP port.
        let bytes = announce(11, Vec::new());
        table
            .on_announce(t0, &bytes, source("192.0.2.11:49152"))
            .unwrap();
        assert_eq!(
            table.announced(2).unwrap().address,
            RegistrarAddress::sctp_over_udp(source("192.0.2.11:3863"))
        );
        assert!(table.announced(2).unwrap().from_source_address);
        assert!(!table.announced(1).unwrap().from_source_address);
        // Only TCP announced, TCP not spoken: refused.
        let bytes = announce(12, vec![tcp("192.0.2.12", 3863)]);
        assert_eq!(
            table.on_announce(t0, &bytes, source("192.0.2.12:1")),
            Err(AnnounceError::NoUsableTransport {
                sctp: true,
                tcp: false
            })
        );
        assert_eq!(table.slot_count(), 3);
        // From this host over `lo` (no source address): its loopback
        // transport is the one to use.
        let bytes = announce(13, vec![sctp(&["127.0.0.1"], 3863)]);
        table
            .on_announce(t0, &bytes, source("0.0.0.0:40000"))
            .unwrap();
        assert_eq!(
            table.announced(3).unwrap().address.addr,
            source("127.0.0.1:3863")
        );
    }

    #[test]
    fn malformed_and_foreign_datagrams_are_refused_with_a_reason() {
        let t0 = Instant::now();
        let mut table = ServerTable::new(ServerTableConfig::default(), 1);
        let from = source("192.0.2.66:3863");
        let truncated = &announce(1, vec![sctp(&["192.0.2.1"], 3863)])[..9];
        let error = table.on_announce(t0, truncated, from).unwrap_err();
        assert_eq!(error.reason(), "malformed");
        assert_eq!(
            table.on_announce(t0, &[], from).unwrap_err().reason(),
            "malformed"
        );
        assert_eq!(
            table
                .on_announce(t0, &[0xff; 64], from)
                .unwrap_err()
                .reason(),
            "malformed"
        );
        // A length field pointing past the datagram.
        let mut lying = announce(1, Vec::new());
        lying[3] = 200;
        assert_eq!(
            table.on_announce(t0, &lying, from).unwrap_err().reason(),
            "malformed"
        );
        let keep_alive_ack = Message::EndpointKeepAliveAck {
            pool_handle: protocol::rserpool::PoolHandle::from("p"),
            pe_identifier: 1,
        }
        .to_bytes();
        assert_eq!(
            table.on_announce(t0, &keep_alive_ack, from),
            Err(AnnounceError::NotAnAnnounce(0x08))
        );
        // Nothing was learnt from any of it.
        assert_eq!(table.availability(t0), vec![true]);
    }

    #[test]
    fn a_full_table_reuses_only_expired_slots() {
        let t0 = Instant::now();
        let mut table = ServerTable::new(
            ServerTableConfig {
                max_announced: 2,
                ..ServerTableConfig::default()
            },
            0,
        );
        for id in 1..=2 {
            let bytes = announce(id, vec![sctp(&[&format!("192.0.2.{id}")], 3863)]);
            table
                .on_announce(t0, &bytes, source("192.0.2.100:1"))
                .unwrap();
        }
        let third = announce(3, vec![sctp(&["192.0.2.3"], 3863)]);
        assert_eq!(
            table.on_announce(t0, &third, source("192.0.2.100:1")),
            Err(AnnounceError::TableFull(2))
        );
        // Registrar 2 keeps announcing, registrar 1 goes quiet and expires.
        let t1 = t0 + Duration::from_secs(3);
        let second = announce(2, vec![sctp(&["192.0.2.2"], 3863)]);
        table
            .on_announce(t1, &second, source("192.0.2.100:1"))
            .unwrap();
        let t2 = t0 + Duration::from_secs(6);
        assert_eq!(
            table.on_announce(t2, &third, source("192.0.2.100:1")),
            Ok(AnnounceOutcome::Learned(0))
        );
        assert_eq!(table.announced(0).unwrap().server_identifier, 3);
        assert_eq!(table.availability(t2), vec![true, true]);
    }
}
