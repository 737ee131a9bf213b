//! ENRP settings: [`EnrpConfig`] (our identity, the static peers, the
//! RFC 5353 timers with RSPLIB's defaults, limits) and [`EnrpAuth`], the
//! keys that authenticate peers.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::rserpool::{Limits, TransportAddress};

/// ENRP settings. Timer defaults are RSPLIB's registrar defaults (see
/// docs/architecture.md); RFC 5353 leaves the values to the implementation.
#[derive(Debug, Clone)]
pub struct EnrpConfig {
    /// Our server id (the ASAP server's).
    pub server_id: u32,
    /// Our ENRP transport as advertised in Server Information (Presence,
    /// List Response): how peers reach us. `None`: peers only learn us
    /// through their static lists.
    pub advertised: Option<TransportAddress>,
    /// Peer ENRP addresses to contact (static mesh).
    pub static_peers: Vec<SocketAddr>,
    /// Server ids accepted as peers; empty accepts any.
    pub allowed_server_ids: Vec<u32>,
    /// PEER-HEARTBEAT-CYCLE: Presence interval (RSPLIB 2444 ms).
    pub heartbeat_cycle: Duration,
    /// MAX-TIME-LAST-HEARD: silence after which a peer is probed (RSPLIB 5000 ms).
    pub max_time_last_heard: Duration,
    /// MAX-TIME-NO-RESPONSE: how long a probed peer has to answer before it
    /// is declared dead, and how long a table request may take (RSPLIB 5000 ms).
    pub max_time_no_response: Duration,
    /// TAKEOVER-EXPIRY: wait for Init Takeover Acks at most this long (RSPLIB 5000 ms).
    pub takeover_expiry: Duration,
    /// How long adopted PEs we cannot send the Home Keep Alive to stay
    /// without re-registering (see the `enrp` module documentation).
    pub adopted_pe_grace: Duration,
    /// Most PEs in one Handle Table Response page (RSPLIB 128).
    pub max_elements_per_table_response: usize,
    /// Decoder limits.
    pub decode_limits: Limits,
    /// Peer authentication; `None`: messages are neither signed nor
    /// checked (anyone who reaches the ENRP port is a peer).
    pub auth: Option<EnrpAuth>,
}

/// ENRP peer authentication settings (see `docs/enrp-security.md`).
#[derive(Clone)]
pub struct EnrpAuth {
    /// Identifier of the signing key, sent in every message.
    pub key_id: u32,
    /// The pool's shared ENRP key: signs what we send, checks what we get.
    pub key: Vec<u8>,
    /// Further keys accepted (not used for signing), for key rotation.
    pub accepted_keys: Vec<(u32, Vec<u8>)>,
    /// A message whose sequence (the sender's clock) is further than this
    /// from our clock is refused: bounds replays after a restart wiped
    /// the replay state, and tolerates skew between the registrars' clocks.
    pub max_clock_skew: Duration,
    /// Migration only: accept unsigned messages (bad signatures are still
    /// refused). Off in production: an attacker simply leaves it out.
    pub accept_unsigned: bool,
}

impl std::fmt::Debug for EnrpAuth {
    // Never print keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrpAuth")
            .field("key_id", &self.key_id)
            .field(
                "accepted_key_ids",
                &self
                    .accepted_keys
                    .iter()
                    .map(|(id, _)| *id)
                    .collect::<Vec<_>>(),
            )
            .field("max_clock_skew", &self.max_clock_skew)
            .field("accept_unsigned", &self.accept_unsigned)
            .finish_non_exhaustive()
    }
}

impl Default for EnrpConfig {
    fn default() -> Self {
        Self {
            server_id: 1,
            advertised: None,
            static_peers: Vec::new(),
            allowed_server_ids: Vec::new(),
            heartbeat_cycle: Duration::from_millis(2_444),
            max_time_last_heard: Duration::from_millis(5_000),
            max_time_no_response: Duration::from_millis(5_000),
            takeover_expiry: Duration::from_millis(5_000),
            adopted_pe_grace: Duration::from_millis(10_000),
            max_elements_per_table_response: 128,
            decode_limits: Limits::default(),
            auth: None,
        }
    }
}
