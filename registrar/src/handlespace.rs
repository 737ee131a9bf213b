//! The handlespace: pools, their pool elements and the per-pool selection
//! state. Pure data: no IO, no clock of its own (every time is passed in),
//! no protocol decisions beyond the RFC 5352 §3.1 registration checks.
//!
//! Sizes: lookups are hash maps keyed by pool handle and PE identifier; each
//! pool keeps its members in a dense `Vec<Member>` so a handle resolution is
//! one pass over the pool (O(pool size)) with no allocation per PE beyond the
//! selector's; timers of all PEs sit in one ordered index so the registrar
//! finds the next deadline in O(log n) with 100,000 PEs registered.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use policies::{Member, PeId, PolicyParams, PoolSelector};
use protocol::rserpool::membership::MembershipProof;
use protocol::rserpool::params::cause_code;
use protocol::rserpool::{PoolHandle, SelectionPolicy, TransportAddress, TransportKind};

/// Identifies one ASAP association (SCTP association or TCP connection) of
/// the registrar. Assigned by the IO driver; the core only compares them.
pub type AssocId = u64;

/// Marks the owner of a PE that has no ASAP association here: a PE learned
/// from a peer registrar over ENRP, or adopted in a takeover. The driver
/// numbers real associations from 1 upwards and never reaches this bit.
const PEER_OWNER_FLAG: AssocId = 1 << 63;

/// The pseudo-association that owns every PE whose home is registrar
/// `server_id` and that did not register with us directly. Keeping them in
/// the per-owner index makes "all PEs of registrar X" one lookup (takeover,
/// audit repair).
pub const fn peer_owner(server_id: u32) -> AssocId {
    PEER_OWNER_FLAG | server_id as AssocId
}

/// Whether `owner` is a [`peer_owner`] rather than a real association.
pub const fn is_peer_owner(owner: AssocId) -> bool {
    owner & PEER_OWNER_FLAG != 0
}

/// Adds the 16-bit words of one PE's (pool handle, PE identifier) to a PE
/// checksum accumulator (RFC 5353 handlespace audit; the same inputs as
/// RSPLIB's `poolElementNodeComputeChecksum`). Words are read in network
/// byte order, a trailing odd byte of the handle padded with zero. Sums of
/// many PEs add up in the wide accumulator; [`finish_pe_checksum`] folds.
pub fn pe_checksum_words(handle: &PoolHandle, id: PeId) -> u64 {
    let bytes = handle.as_bytes();
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|pair| u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    sum += u64::from(id >> 16) + u64::from(id & 0xffff);
    sum
}

/// Folds a checksum accumulator into the 16-bit one's-complement PE
/// checksum carried in ENRP Presence (RFC 1071 style: end-around carry,
/// then complement; an empty set gives 0xffff).
pub fn finish_pe_checksum(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Capacity limits of the handlespace (flood and memory protection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlespaceLimits {
    /// Most pools at once.
    pub max_pools: usize,
    /// Most PEs in one pool.
    pub max_pool_elements_per_pool: usize,
    /// Most PEs in the whole handlespace.
    pub max_pool_elements: usize,
    /// Most PEs registered over one association: one peer cannot fill the
    /// handlespace.
    pub max_pool_elements_per_association: usize,
    /// Longest pool handle (RSPLIB stores at most 32 bytes).
    pub max_pool_handle_len: usize,
}

impl Default for HandlespaceLimits {
    fn default() -> Self {
        Self {
            max_pools: 10_000,
            max_pool_elements_per_pool: 100_000,
            max_pool_elements: 1_000_000,
            max_pool_elements_per_association: 256,
            max_pool_handle_len: 32,
        }
    }
}

/// Why the handlespace refused an operation; each maps to an RFC 5354 §3.12
/// error cause code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlespaceError {
    /// The PE's policy type differs from the pool's (RFC 5352 §3.1: the
    /// registrar rejects it with "Inconsistent Pooling Policy").
    #[error("policy {requested:#010x} is inconsistent with the pool's policy {pool:#010x}")]
    InconsistentPoolingPolicy {
        /// The pool's policy type.
        pool: u32,
        /// The registering PE's policy type.
        requested: u32,
    },
    /// The PE's user transport protocol differs from the pool's.
    #[error("transport type is inconsistent with the pool's")]
    InconsistentTransportType,
    /// The PE's transport use (data only / data plus control) differs from the pool's.
    #[error("data/control configuration is inconsistent with the pool's")]
    InconsistentDataControlConfiguration,
    /// The PE identifier is taken by a different PE (other association and
    /// other user transport).
    #[error("PE identifier {0:#010x} is already used by another PE")]
    NonUniquePeIdentifier(PeId),
    /// A capacity limit was reached.
    #[error("lack of resources: {0}")]
    LackOfResources(&'static str),
    /// The pool handle is empty or too long.
    #[error("invalid pool handle of {0} bytes")]
    InvalidPoolHandle(usize),
    /// No such pool.
    #[error("unknown pool handle")]
    UnknownPoolHandle,
    /// The operation comes from an association that does not own the PE.
    #[error("PE is owned by another association")]
    NotOwner,
    /// Refused for security reasons (the label says which), e.g. no valid
    /// pool membership proof.
    #[error("rejected due to security considerations: {0}")]
    Rejected(&'static str),
}

impl HandlespaceError {
    /// The RFC 5354 §3.12 cause code that reports this error.
    pub fn cause_code(&self) -> u16 {
        match self {
            Self::InconsistentPoolingPolicy { .. } => cause_code::INCONSISTENT_POOLING_POLICY,
            Self::InconsistentTransportType => cause_code::INCONSISTENT_TRANSPORT_TYPE,
            Self::InconsistentDataControlConfiguration => {
                cause_code::INCONSISTENT_DATA_CONTROL_CONFIGURATION
            }
            Self::NonUniquePeIdentifier(_) => cause_code::NON_UNIQUE_PE_IDENTIFIER,
            Self::LackOfResources(_) => cause_code::LACK_OF_RESOURCES,
            Self::InvalidPoolHandle(_) => cause_code::INVALID_VALUES,
            Self::UnknownPoolHandle => cause_code::UNKNOWN_POOL_HANDLE,
            Self::NotOwner | Self::Rejected(_) => cause_code::REJECTED_DUE_TO_SECURITY,
        }
    }

    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InconsistentPoolingPolicy { .. } => "inconsistent_policy",
            Self::InconsistentTransportType => "inconsistent_transport",
            Self::InconsistentDataControlConfiguration => "inconsistent_data_control",
            Self::NonUniquePeIdentifier(_) => "non_unique_pe_id",
            Self::LackOfResources(_) => "lack_of_resources",
            Self::InvalidPoolHandle(_) => "invalid_pool_handle",
            Self::UnknownPoolHandle => "unknown_pool_handle",
            Self::NotOwner => "not_owner",
            Self::Rejected(reason) => reason,
        }
    }
}

/// Where a PE stands in the keep-alive cycle (RFC 5352 §3.7; RSPLIB's
/// "keep-alive transmission" and "keep-alive timeout" timers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Next Endpoint Keep Alive goes out at this time.
    SendAt(Instant),
    /// A keep-alive went out; without an ack by the deadline the PE is removed.
    AwaitingAck {
        /// When it was sent.
        sent: Instant,
        /// When the PE is declared dead.
        deadline: Instant,
    },
}

impl KeepAlive {
    fn instant(&self) -> Instant {
        match *self {
            Self::SendAt(at) => at,
            Self::AwaitingAck { deadline, .. } => deadline,
        }
    }
}

/// What the registrar stores about one registered PE.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolElementEntry {
    /// PE identifier (unique within its pool).
    pub id: PeId,
    /// Where pool users reach it.
    pub user_transport: TransportAddress,
    /// Its ASAP transport, if it told us.
    pub asap_transport: Option<TransportAddress>,
    /// Policy parameter as registered (kept raw so responses echo it exactly).
    pub policy: SelectionPolicy,
    /// The same, decoded.
    pub params: PolicyParams,
    /// Registration life in ms as registered; ≤ 0 means no expiry.
    pub registration_life: i32,
    /// Server identifier of its home registrar (us, for ASAP registrations).
    pub home_registrar: u32,
    /// The association it registered over: keep-alives go there.
    pub owner: AssocId,
    /// First registration.
    pub registered_at: Instant,
    /// Last registration or re-registration.
    pub refreshed_at: Instant,
    /// Last keep-alive ack (or registration).
    pub last_heard: Instant,
    /// Keep-alive state.
    pub keep_alive: KeepAlive,
    /// End of the registration life, if it has one.
    pub expires_at: Option<Instant>,
    /// Endpoint Unreachable reports since the last registration or
    /// keep-alive ack.
    pub unreachable_reports: u32,
    /// The PE's membership proof of a closed pool, with the Pool Element as
    /// it signed it: ENRP forwards it so peers can check it themselves.
    pub membership: Option<Box<MembershipProof>>,
}

impl PoolElementEntry {
    /// The earliest time something has to happen to this PE.
    pub fn next_event(&self) -> Instant {
        let keep_alive = self.keep_alive.instant();
        match self.expires_at {
            Some(expiry) => keep_alive.min(expiry),
            None => keep_alive,
        }
    }
}

/// A registration request after validation by the server.
#[derive(Debug, Clone)]
pub struct Registration {
    /// PE identifier.
    pub id: PeId,
    /// User transport.
    pub user_transport: TransportAddress,
    /// ASAP transport (optional).
    pub asap_transport: Option<TransportAddress>,
    /// Raw policy parameter.
    pub policy: SelectionPolicy,
    /// Decoded policy parameter.
    pub params: PolicyParams,
    /// Registration life in ms (≤ 0: none).
    pub registration_life: i32,
    /// Home registrar id to record.
    pub home_registrar: u32,
    /// Association it came over.
    pub owner: AssocId,
    /// Verified membership proof (closed pools), kept for ENRP.
    pub membership: Option<Box<MembershipProof>>,
}

/// Outcome of a successful registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// New PE.
    New,
    /// Existing PE updated (re-registration).
    Updated,
}

/// One pool.
#[derive(Debug, Clone)]
pub struct Pool {
    policy_type: u32,
    /// Transport protocol of the first PE's user transport; later PEs must match.
    transport: TransportProtocol,
    /// Dense member list for the selector; `index` maps PE id → position.
    members: Vec<Member>,
    index: HashMap<PeId, usize>,
    entries: HashMap<PeId, PoolElementEntry>,
    selector: PoolSelector,
}

/// The protocol part of a user transport, without ports and addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransportProtocol {
    Sctp(bool),
    Tcp(bool),
    Udp,
    UdpLite,
    Dccp,
}

impl TransportProtocol {
    fn of(transport: &TransportAddress) -> Self {
        use protocol::rserpool::TransportUse::DataPlusControl;
        match transport.kind {
            TransportKind::Sctp(usage) => Self::Sctp(usage == DataPlusControl),
            TransportKind::Tcp(usage) => Self::Tcp(usage == DataPlusControl),
            TransportKind::Udp => Self::Udp,
            TransportKind::UdpLite => Self::UdpLite,
            TransportKind::Dccp { .. } => Self::Dccp,
        }
    }

    /// Same protocol, ignoring the transport use.
    fn same_protocol(self, other: Self) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

impl Pool {
    /// The pool's policy type.
    pub fn policy_type(&self) -> u32 {
        self.policy_type
    }

    /// Number of PEs.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the pool has no PEs (never true for a pool in the handlespace).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The PEs, in no particular order.
    pub fn elements(&self) -> impl Iterator<Item = &PoolElementEntry> {
        self.entries.values()
    }

    /// One PE.
    pub fn element(&self, id: PeId) -> Option<&PoolElementEntry> {
        self.entries.get(&id)
    }

    fn insert_member(&mut self, entry: PoolElementEntry) {
        let member = Member {
            id: entry.id,
            params: entry.params,
        };
        // The selector keeps its own index of the pool (O(log n) selection);
        // it must see every addition and parameter change.
        self.selector.insert(member);
        match self.index.get(&entry.id) {
            Some(&position) => self.members[position] = member,
            None => {
                self.index.insert(entry.id, self.members.len());
                self.members.push(member);
            }
        }
        self.entries.insert(entry.id, entry);
    }

    fn remove_member(&mut self, id: PeId) -> Option<PoolElementEntry> {
        let entry = self.entries.remove(&id)?;
        if let Some(position) = self.index.remove(&id) {
            self.members.swap_remove(position);
            if let Some(moved) = self.members.get(position) {
                self.index.insert(moved.id, position);
            }
        }
        self.selector.forget(id);
        Some(entry)
    }
}

/// Timer index key: when, then which PE.
type TimerKey = (Instant, PoolHandle, PeId);

/// All pools and PEs known to this registrar.
#[derive(Debug)]
pub struct Handlespace {
    limits: HandlespaceLimits,
    pools: HashMap<PoolHandle, Pool>,
    by_owner: HashMap<AssocId, HashSet<(PoolHandle, PeId)>>,
    timers: BTreeSet<TimerKey>,
    element_count: usize,
    seed: u64,
    /// PE checksum accumulators per home registrar, kept incrementally so a
    /// Presence costs O(1) with 100,000 PEs.
    home_sums: HashMap<u32, u64>,
}

impl Handlespace {
    /// An empty handlespace. `seed` seeds the randomized policies (a fixed
    /// seed makes tests reproducible).
    pub fn new(limits: HandlespaceLimits, seed: u64) -> Self {
        Self {
            limits,
            pools: HashMap::new(),
            by_owner: HashMap::new(),
            timers: BTreeSet::new(),
            element_count: 0,
            seed,
            home_sums: HashMap::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &HandlespaceLimits {
        &self.limits
    }

    /// Number of pools.
    pub fn pool_count(&self) -> usize {
        self.pools.len()
    }

    /// Number of PEs in all pools.
    pub fn element_count(&self) -> usize {
        self.element_count
    }

    /// One pool.
    pub fn pool(&self, handle: &PoolHandle) -> Option<&Pool> {
        self.pools.get(handle)
    }

    /// All pools, in no particular order.
    pub fn pools(&self) -> impl Iterator<Item = (&PoolHandle, &Pool)> {
        self.pools.iter()
    }

    /// One PE.
    pub fn element(&self, handle: &PoolHandle, id: PeId) -> Option<&PoolElementEntry> {
        self.pools.get(handle)?.entries.get(&id)
    }

    /// Number of PEs registered over `owner`.
    pub fn elements_of_owner(&self, owner: AssocId) -> usize {
        self.by_owner.get(&owner).map_or(0, HashSet::len)
    }

    /// Registers or re-registers a PE (RFC 5352 §3.1, §3.3). Checks, in order:
    /// handle validity, pool policy and transport consistency, identifier
    /// uniqueness, then the capacity limits (a re-registration never needs
    /// new capacity). On success the PE's keep-alive timer is (re)started at
    /// `now + keep_alive_period` and its expiry set from its registration life.
    pub fn register(
        &mut self,
        handle: &PoolHandle,
        registration: Registration,
        now: Instant,
        keep_alive_period: Duration,
    ) -> Result<Registered, HandlespaceError> {
        let handle_len = handle.as_bytes().len();
        if handle_len == 0 || handle_len > self.limits.max_pool_handle_len {
            return Err(HandlespaceError::InvalidPoolHandle(handle_len));
        }
        let protocol = TransportProtocol::of(&registration.user_transport);
        let existing = match self.pools.get(handle) {
            Some(pool) => {
                let existing = pool.entries.get(&registration.id);
                let sole_member = pool.len() == 1 && existing.is_some();
                // The only PE may change the pool's policy or transport by
                // re-registering: nobody else depends on them.
                if !sole_member {
                    if pool.policy_type != registration.params.policy_type() {
                        return Err(HandlespaceError::InconsistentPoolingPolicy {
                            pool: pool.policy_type,
                            requested: registration.params.policy_type(),
                        });
                    }
                    if !pool.transport.same_protocol(protocol) {
                        return Err(HandlespaceError::InconsistentTransportType);
                    }
                    if pool.transport != protocol {
                        return Err(HandlespaceError::InconsistentDataControlConfiguration);
                    }
                }
                if let Some(entry) = existing
                    && !is_peer_owner(registration.owner)
                {
                    // Same PE coming back over a new association (e.g. after a
                    // reconnect) keeps its identity; a different PE may not
                    // take over an identifier in use.
                    if entry.owner != registration.owner
                        && entry.user_transport != registration.user_transport
                    {
                        return Err(HandlespaceError::NonUniquePeIdentifier(registration.id));
                    }
                }
                existing.map(|entry| (entry.owner, entry.registered_at))
            }
            None => {
                if self.pools.len() >= self.limits.max_pools {
                    return Err(HandlespaceError::LackOfResources("too many pools"));
                }
                None
            }
        };
        let owner_moves = existing.is_some_and(|(owner, _)| owner != registration.owner);
        // Peer registrars vouch for their own PEs: the per-association flood
        // limit is for ASAP clients.
        if (existing.is_none() || owner_moves)
            && !is_peer_owner(registration.owner)
            && self.elements_of_owner(registration.owner)
                >= self.limits.max_pool_elements_per_association
        {
            return Err(HandlespaceError::LackOfResources(
                "too many PEs on this association",
            ));
        }
        if existing.is_none() {
            if self.element_count >= self.limits.max_pool_elements {
                return Err(HandlespaceError::LackOfResources("handlespace full"));
            }
            if self
                .pools
                .get(handle)
                .is_some_and(|pool| pool.len() >= self.limits.max_pool_elements_per_pool)
            {
                return Err(HandlespaceError::LackOfResources("pool full"));
            }
        }

        let expires_at = u64::try_from(registration.registration_life)
            .ok()
            .filter(|&life| life > 0)
            .map(|life| now + Duration::from_millis(life));
        let entry = PoolElementEntry {
            id: registration.id,
            user_transport: registration.user_transport,
            asap_transport: registration.asap_transport,
            policy: registration.policy,
            params: registration.params,
            registration_life: registration.registration_life,
            home_registrar: registration.home_registrar,
            owner: registration.owner,
            registered_at: existing.map_or(now, |(_, at)| at),
            refreshed_at: now,
            last_heard: now,
            keep_alive: KeepAlive::SendAt(now + keep_alive_period),
            expires_at,
            unreachable_reports: 0,
            membership: registration.membership,
        };

        if let Some((old_owner, _)) = existing {
            let old_home = self.pools[handle].entries[&registration.id].home_registrar;
            self.unaccount_home(old_home, handle, registration.id);
            let old_next = self.pools[handle].entries[&registration.id].next_event();
            self.timers
                .remove(&(old_next, handle.clone(), registration.id));
            if old_owner != registration.owner {
                self.unlink_owner(old_owner, handle, registration.id);
            }
        }
        self.timers
            .insert((entry.next_event(), handle.clone(), entry.id));
        *self.home_sums.entry(entry.home_registrar).or_default() +=
            pe_checksum_words(handle, entry.id);
        self.by_owner
            .entry(entry.owner)
            .or_default()
            .insert((handle.clone(), entry.id));

        let seed = self.seed ^ self.pools.len() as u64;
        let pool = self.pools.entry(handle.clone()).or_insert_with(|| Pool {
            policy_type: entry.params.policy_type(),
            transport: protocol,
            members: Vec::new(),
            index: HashMap::new(),
            entries: HashMap::new(),
            selector: PoolSelector::for_policy(&entry.params, seed),
        });
        if pool.policy_type != entry.params.policy_type() {
            // Sole member changed its policy: start the pool's selection afresh.
            pool.policy_type = entry.params.policy_type();
            pool.selector = PoolSelector::for_policy(&entry.params, seed);
        }
        pool.transport = protocol;
        let id = entry.id;
        pool.insert_member(entry);
        pool.selector.on_registration_update(id);
        if existing.is_some() {
            Ok(Registered::Updated)
        } else {
            self.element_count += 1;
            Ok(Registered::New)
        }
    }

    /// Removes a PE; `None` if it is not there. Empty pools disappear.
    pub fn remove(&mut self, handle: &PoolHandle, id: PeId) -> Option<PoolElementEntry> {
        let pool = self.pools.get_mut(handle)?;
        let entry = pool.remove_member(id)?;
        if pool.is_empty() {
            self.pools.remove(handle);
        }
        self.timers
            .remove(&(entry.next_event(), handle.clone(), id));
        self.unlink_owner(entry.owner, handle, id);
        self.unaccount_home(entry.home_registrar, handle, id);
        self.element_count -= 1;
        Some(entry)
    }

    /// Deregisters a PE on behalf of `requester` (RFC 5352 §3.4). Only the
    /// owning association may do it. A PE that is not there counts as
    /// deregistered (as RSPLIB answers: it is gone either way).
    pub fn deregister(
        &mut self,
        handle: &PoolHandle,
        id: PeId,
        requester: AssocId,
    ) -> Result<Option<PoolElementEntry>, HandlespaceError> {
        match self.element(handle, id) {
            None => Ok(None),
            Some(entry) if entry.owner != requester => Err(HandlespaceError::NotOwner),
            Some(_) => Ok(self.remove(handle, id)),
        }
    }

    /// Removes every PE registered over `owner` (its association went down).
    pub fn remove_owner(&mut self, owner: AssocId) -> Vec<(PoolHandle, PoolElementEntry)> {
        let Some(keys) = self.by_owner.remove(&owner) else {
            return Vec::new();
        };
        let mut removed = Vec::with_capacity(keys.len());
        for (handle, id) in keys {
            // The owner's link set is already gone, so `remove` skips it.
            if let Some(entry) = self.remove(&handle, id) {
                removed.push((handle, entry));
            }
        }
        removed
    }

    /// Selects up to `max` PEs of a pool by its policy, advancing the pool's
    /// selection state (round robin position, degradation). O(pool size).
    pub fn resolve(
        &mut self,
        handle: &PoolHandle,
        max: usize,
    ) -> Result<Vec<&PoolElementEntry>, HandlespaceError> {
        let pool = self
            .pools
            .get_mut(handle)
            .ok_or(HandlespaceError::UnknownPoolHandle)?;
        let ids = pool.selector.select_top(max);
        let pool = &self.pools[handle];
        Ok(ids.iter().filter_map(|id| pool.entries.get(id)).collect())
    }

    /// Changes a PE's keep-alive state, keeping the timer index in step.
    pub fn set_keep_alive(&mut self, handle: &PoolHandle, id: PeId, state: KeepAlive) -> bool {
        self.update(handle, id, |entry| entry.keep_alive = state)
    }

    /// Records a keep-alive ack: the PE is alive, next keep-alive at `next`.
    pub fn keep_alive_acked(
        &mut self,
        handle: &PoolHandle,
        id: PeId,
        now: Instant,
        next: Instant,
    ) -> bool {
        self.update(handle, id, |entry| {
            entry.last_heard = now;
            entry.keep_alive = KeepAlive::SendAt(next);
            // It answered: earlier Endpoint Unreachable reports are refuted.
            entry.unreachable_reports = 0;
        })
    }

    /// Counts one Endpoint Unreachable report and returns the new count.
    pub fn report_unreachable(&mut self, handle: &PoolHandle, id: PeId) -> Option<u32> {
        let entry = self.pools.get_mut(handle)?.entries.get_mut(&id)?;
        entry.unreachable_reports += 1;
        Some(entry.unreachable_reports)
    }

    /// The earliest timer of any PE.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// PEs whose next event is at or before `now`, earliest first.
    pub fn due(&self, now: Instant) -> Vec<(PoolHandle, PeId)> {
        self.timers
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .map(|(_, handle, id)| (handle.clone(), *id))
            .collect()
    }

    fn update(
        &mut self,
        handle: &PoolHandle,
        id: PeId,
        change: impl FnOnce(&mut PoolElementEntry),
    ) -> bool {
        let Some(entry) = self
            .pools
            .get_mut(handle)
            .and_then(|pool| pool.entries.get_mut(&id))
        else {
            return false;
        };
        let before = entry.next_event();
        change(entry);
        let after = entry.next_event();
        if before != after {
            self.timers.remove(&(before, handle.clone(), id));
            self.timers.insert((after, handle.clone(), id));
        }
        true
    }

    /// The PE checksum of the PEs whose home is registrar `home`.
    pub fn home_checksum(&self, home: u32) -> u16 {
        finish_pe_checksum(self.home_sums.get(&home).copied().unwrap_or(0))
    }

    /// Every (pool, PE) whose home is registrar `home`, sorted by pool
    /// handle and PE id (a stable order for paged Handle Table Responses).
    /// O(handlespace size).
    pub fn elements_of_home(&self, home: u32) -> Vec<(PoolHandle, PeId)> {
        let mut found: Vec<(PoolHandle, PeId)> = self
            .pools
            .iter()
            .flat_map(|(handle, pool)| {
                pool.entries
                    .values()
                    .filter(move |entry| entry.home_registrar == home)
                    .map(move |entry| (handle.clone(), entry.id))
            })
            .collect();
        found.sort();
        found
    }

    /// Every (pool, PE) of the handlespace, sorted.
    pub fn all_elements(&self) -> Vec<(PoolHandle, PeId)> {
        let mut found: Vec<(PoolHandle, PeId)> = self
            .pools
            .iter()
            .flat_map(|(handle, pool)| pool.entries.keys().map(move |id| (handle.clone(), *id)))
            .collect();
        found.sort();
        found
    }

    /// Moves a PE to a new home registrar and owner (ENRP takeover), with a
    /// new keep-alive state, keeping every index in step.
    pub fn rehome(
        &mut self,
        handle: &PoolHandle,
        id: PeId,
        home: u32,
        owner: AssocId,
        keep_alive: KeepAlive,
    ) -> bool {
        let Some(entry) = self.element(handle, id) else {
            return false;
        };
        let (old_home, old_owner) = (entry.home_registrar, entry.owner);
        self.unaccount_home(old_home, handle, id);
        *self.home_sums.entry(home).or_default() += pe_checksum_words(handle, id);
        if old_owner != owner {
            self.unlink_owner(old_owner, handle, id);
            self.by_owner
                .entry(owner)
                .or_default()
                .insert((handle.clone(), id));
        }
        self.update(handle, id, |entry| {
            entry.home_registrar = home;
            entry.owner = owner;
            entry.keep_alive = keep_alive;
        })
    }

    fn unaccount_home(&mut self, home: u32, handle: &PoolHandle, id: PeId) {
        if let Some(sum) = self.home_sums.get_mut(&home) {
            *sum -= pe_checksum_words(handle, id);
            if *sum == 0 {
                self.home_sums.remove(&home);
            }
        }
    }

    fn unlink_owner(&mut self, owner: AssocId, handle: &PoolHandle, id: PeId) {
        if let Some(set) = self.by_owner.get_mut(&owner) {
            set.remove(&(handle.clone(), id));
            if set.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }
}
