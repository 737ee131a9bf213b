//! What the ENRP core reports: its running totals ([`EnrpCounters`]) and
//! the ENRP part of the status endpoint ([`EnrpStatus`], with a
//! [`PeerStatus`] per peer).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Running ENRP totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrpCounters {
    /// Messages received by type name.
    pub received: BTreeMap<String, u64>,
    /// Messages sent by type name.
    pub sent: BTreeMap<String, u64>,
    /// Presences whose checksum disagreed with ours (audit repairs started).
    pub audit_mismatches: u64,
    /// Peers declared dead.
    pub peers_lost: u64,
    /// Takeovers we completed.
    pub takeovers: u64,
    /// PEs adopted in our takeovers.
    pub adopted_pes: u64,
    /// PEs moved to a peer by its Takeover Server.
    pub rehomed_pes: u64,
    /// Endpoint Keep Alives with the Home flag handed to the driver for
    /// adopted PEs that gave an ASAP transport.
    pub home_keep_alives: u64,
    /// Adopted PEs without an ASAP transport (kept for the grace only).
    pub adopted_unreachable: u64,
    /// Peers learnt (or re-learnt after being declared dead) from their
    /// Presence on the ENRP announce group.
    #[serde(default)]
    pub multicast_peers_learned: u64,
    /// Well-formed Presences of other registrars heard on the ENRP announce
    /// group, whether they taught us a peer or came from one we knew.
    #[serde(default)]
    pub multicast_presences_heard: u64,
    /// Malformed or refused ENRP messages by reason.
    pub malformed: BTreeMap<String, u64>,
    /// ENRP Error messages received, by cause code (hex), counted whoever the sender
    /// claims to be (RSPLIB puts our own server id in it).
    pub errors_received: BTreeMap<String, u64>,
    /// Messages dropped by authentication, by reason (unsigned, bad_mac,
    /// unknown_key, stale, replay).
    pub auth_rejected: BTreeMap<String, u64>,
}

/// One peer in an [`EnrpStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Server id.
    pub server_id: u32,
    /// ENRP address, if known.
    pub address: Option<String>,
    /// "alive", "probing" or "dead".
    pub state: String,
    /// Time since its last message.
    pub last_heard_ms_ago: u64,
    /// PE checksum of its last Presence.
    pub remote_checksum: Option<u16>,
    /// Checksum of the PEs we store with it as home.
    pub local_checksum: u16,
    /// Number of PEs we store with it as home.
    pub home_elements: usize,
}

/// ENRP part of the status endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrpStatus {
    /// Checksum of our home PEs (what our Presence carries).
    pub own_checksum: u16,
    /// Checksum over the whole handlespace: equal on registrars that agree.
    pub handlespace_checksum: u16,
    /// Peers by server id.
    pub peers: Vec<PeerStatus>,
    /// Totals.
    pub counters: EnrpCounters,
}
