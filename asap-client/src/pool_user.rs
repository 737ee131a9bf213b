//! Sans-IO Pool User (RFC 5352 §3.3, §3.4, §3.5, §3.6).
//!
//! The PU resolves pool handles at a registrar (Handle Resolution → Handle
//! Resolution Response), keeps the answer in its PU cache, and selects PEs
//! from the cache itself with the pool's policy (`policies::PoolSelector`).
//! When it finds a PE dead it drops it from the cache and reports it with
//! Endpoint Unreachable, so the registrar can count bad reports
//! (MAX-BAD-PE-REPORT) and remove the PE from the handlespace.
//!
//! # Staleness (RFC 5352 §3.3 / §5: `stale.cache.value`)
//!
//! A cache entry is fresh for [`PoolUserConfig::cache_lifetime`] after the
//! response that filled it. [`Input::Resolve`] answers from a fresh entry at
//! once and asks a registrar otherwise; [`PoolUser::select`] refuses stale
//! entries so the caller re-resolves. Default 30 s; an exporter polling for
//! Preferred Primary failback uses a short value or [`PoolUser::invalidate`].
//!
//! # Server hunt (RFC 5352 §3.6)
//!
//! Requests go to the current registrar. If its association fails, cannot
//! be established within [`PoolUserConfig::connect_timeout`], or a request
//! gets no answer within [`PoolUserConfig::request_timeout`] (T1-ENRPrequest),
//! the PU closes it, moves to the next registrar of its server table (the
//! static list, then registrars learnt from Server Announces while they keep
//! announcing, see [`crate::server_table`] and [`Input::Registrars`]) and
//! sends everything outstanding there. Over SCTP and TCP a request is not
//! lost in transit, so no retransmission goes to the same registrar
//! (MAX-REQUEST-RETRANSMIT is spent on other registrars instead). A request
//! that every registrar failed fails with
//! [`ResolutionError::NoRegistrarAnswered`]; the stale cache entry, if any,
//! stays readable through [`PoolUser::cached`]; so does one asked while the
//! table holds no candidate at all.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use policies::{Member, PeId, PolicyParams, PoolSelector};
use protocol::rserpool::asap::Message;
use protocol::rserpool::{OperationError, PoolHandle, TransportAddress};

use crate::{RegistrarIndex, params_from_selection_policy};

/// Configuration of a [`PoolUser`].
#[derive(Debug, Clone)]
pub struct PoolUserConfig {
    /// Number of registrars in the static list.
    pub registrar_count: usize,
    /// Registrars may also be learnt from Server Announces: the static list
    /// may then be empty.
    pub registrars_announced: bool,
    /// `stale.cache.value`: how long a resolution stays fresh.
    pub cache_lifetime: Duration,
    /// T1-ENRPrequest: wait for a Handle Resolution Response.
    pub request_timeout: Duration,
    /// Wait for an association to a registrar to come up.
    pub connect_timeout: Duration,
    /// Handle Resolution option (draft-dreibholz-rserpool-asap-hropt): how
    /// many PEs to ask for. `Some(u32::MAX)` = all, since this PU selects
    /// locally over the whole list (and must see the primary for failback).
    pub resolution_items: Option<u32>,
    /// Seed of the selectors' RNG (random policies); fixed in tests.
    pub selector_seed: u64,
}

impl PoolUserConfig {
    /// RFC 5352 §5 defaults: cache 30 s, T1-ENRPrequest 15 s.
    pub fn new(registrar_count: usize) -> Self {
        Self {
            registrar_count,
            registrars_announced: false,
            cache_lifetime: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            resolution_items: Some(u32::MAX),
            selector_seed: rand::random(),
        }
    }
}

/// One PE as the PU knows it from a Handle Resolution Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolElementInfo {
    /// PE identifier.
    pub pe_id: PeId,
    /// Where to reach it (all addresses of an SCTP PE are in here).
    pub user_transport: TransportAddress,
    /// Its selection policy parameters, decoded.
    pub policy: PolicyParams,
    /// Registration life in ms as registered; negative = infinite.
    pub registration_life: i32,
    /// Server identifier of its home registrar.
    pub home_registrar_id: u32,
}

impl PoolElementInfo {
    /// Converts the codec's Pool Element; fails for policies `policies` does
    /// not know (such a PE cannot be selected by policy).
    pub fn from_wire(pe: &protocol::rserpool::PoolElement) -> Result<Self, policies::PolicyError> {
        Ok(Self {
            pe_id: pe.pe_identifier,
            user_transport: pe.user_transport.clone(),
            policy: params_from_selection_policy(&pe.policy)?,
            registration_life: pe.registration_life,
            home_registrar_id: pe.home_enrp_server_identifier,
        })
    }

    fn member(&self) -> Member {
        Member {
            id: self.pe_id,
            params: self.policy,
        }
    }
}

/// What the driver tells the PU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Resolve a pool handle: from the cache when fresh, else at a registrar.
    Resolve(PoolHandle),
    /// The PU found this PE unreachable: drop it and tell the registrar.
    ReportUnreachable {
        /// Pool of the PE.
        pool_handle: PoolHandle,
        /// The dead PE.
        pe_id: PeId,
    },
    /// The association to a registrar is established.
    AssociationUp(RegistrarIndex),
    /// The association to a registrar ended or could not be established.
    AssociationDown(RegistrarIndex),
    /// One complete ASAP message from a registrar.
    Message(RegistrarIndex, Vec<u8>),
    /// [`PoolUser::poll_timeout`] has passed.
    Timer,
    /// The server table changed: per registrar slot, whether it is a
    /// candidate now (static slots always are). Slots are only ever added.
    Registrars(Vec<bool>),
}

/// What the PU asks the driver to do, or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open an association to this registrar.
    Connect {
        /// Registrar to connect to.
        registrar: RegistrarIndex,
    },
    /// Send one ASAP message (PPID 11 on SCTP) to this registrar.
    Send {
        /// Destination.
        registrar: RegistrarIndex,
        /// The encoded message.
        bytes: Vec<u8>,
    },
    /// Close the association to this registrar.
    Close {
        /// Registrar to disconnect from.
        registrar: RegistrarIndex,
    },
    /// A resolution finished; the cache holds the list.
    Resolved {
        /// The pool.
        pool_handle: PoolHandle,
        /// Its PEs, in the registrar's order.
        pool_elements: Vec<PoolElementInfo>,
        /// Answered from a fresh cache entry without asking a registrar.
        from_cache: bool,
    },
    /// A resolution failed.
    ResolutionFailed {
        /// The pool.
        pool_handle: PoolHandle,
        /// Why.
        error: ResolutionError,
    },
}

/// Why a resolution failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolutionError {
    /// The registrar refused (reject flag or an Operation Error, e.g.
    /// 0x0009 Unknown Pool Handle).
    #[error("registrar refused the handle resolution: {error:?}")]
    Rejected {
        /// The causes given, if any.
        error: Option<OperationError>,
    },
    /// The pool exists but has no PE this PU can use.
    #[error("pool has no usable pool elements")]
    NoPoolElements,
    /// Every candidate registrar failed or stayed silent, or there was none.
    #[error("no registrar answered the handle resolution")]
    NoRegistrarAnswered,
}

/// Why [`PoolUser::select`] has nothing to offer from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CacheMiss {
    /// Never resolved (or dropped after a failed resolution).
    #[error("pool handle not in the PU cache")]
    NotCached,
    /// The entry is older than the cache lifetime: resolve again.
    #[error("PU cache entry is stale")]
    Stale,
    /// Every cached PE was reported unreachable.
    #[error("no pool elements left in the PU cache entry")]
    Empty,
}

#[derive(Debug)]
struct CacheEntry {
    elements: Vec<PoolElementInfo>,
    fresh_until: Instant,
    selector: PoolSelector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    Connecting {
        registrar: RegistrarIndex,
        deadline: Instant,
    },
    Up {
        registrar: RegistrarIndex,
    },
}

/// A message waiting for (or sent to) the current registrar.
#[derive(Debug)]
struct Outstanding {
    /// `Some` for a Handle Resolution (answered), `None` for an Endpoint
    /// Unreachable report (fire and forget once sent).
    resolving: Option<PoolHandle>,
    bytes: Vec<u8>,
    /// Answer deadline once sent (resolutions only).
    deadline: Option<Instant>,
    /// Registrars that failed while this was outstanding.
    registrars_failed: usize,
}

/// The Pool User state machine.
#[derive(Debug)]
pub struct PoolUser {
    config: PoolUserConfig,
    link: Link,
    /// Registrar to use next (current one while the link is up).
    registrar: RegistrarIndex,
    outstanding: Vec<Outstanding>,
    /// Per registrar slot: a candidate for requests.
    available: Vec<bool>,
    cache: HashMap<PoolHandle, CacheEntry>,
    seed_counter: u64,
}

impl PoolUser {
    /// Creates the PU. Panics if `registrar_count` is 0 and no registrar
    /// can be announced either (nothing to ask, ever).
    pub fn new(config: PoolUserConfig) -> Self {
        assert!(
            config.registrar_count > 0 || config.registrars_announced,
            "a pool user needs registrars"
        );
        Self {
            available: vec![true; config.registrar_count],
            config,
            link: Link::Down,
            registrar: 0,
            outstanding: Vec::new(),
            cache: HashMap::new(),
            seed_counter: 0,
        }
    }

    /// When to feed [`Input::Timer`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let connect = match self.link {
            Link::Connecting { deadline, .. } => Some(deadline),
            _ => None,
        };
        self.outstanding
            .iter()
            .filter_map(|o| o.deadline)
            .chain(connect)
            .min()
    }

    /// The cached PEs of a pool, fresh or stale.
    pub fn cached(&self, pool_handle: &PoolHandle) -> Option<&[PoolElementInfo]> {
        self.cache.get(pool_handle).map(|e| e.elements.as_slice())
    }

    /// Whether the cache entry exists and is within its lifetime.
    pub fn is_fresh(&self, now: Instant, pool_handle: &PoolHandle) -> bool {
        self.cache
            .get(pool_handle)
            .is_some_and(|entry| now < entry.fresh_until)
    }

    /// Marks the entry stale so the next [`Input::Resolve`] asks a registrar
    /// (the list stays readable meanwhile).
    pub fn invalidate(&mut self, now: Instant, pool_handle: &PoolHandle) {
        if let Some(entry) = self.cache.get_mut(pool_handle) {
            entry.fresh_until = entry.fresh_until.min(now);
        }
    }

    /// Selects up to `max` PEs from a fresh cache entry with the pool's
    /// policy, best first (RFC 5352 §3.3: the PU selects, not the
    /// registrar). Advances the policy state (round robin position, ...).
    pub fn select(
        &mut self,
        now: Instant,
        pool_handle: &PoolHandle,
        max: usize,
    ) -> Result<Vec<PoolElementInfo>, CacheMiss> {
        let entry = self
            .cache
            .get_mut(pool_handle)
            .ok_or(CacheMiss::NotCached)?;
        if now >= entry.fresh_until {
            return Err(CacheMiss::Stale);
        }
        let members: Vec<Member> = entry.elements.iter().map(PoolElementInfo::member).collect();
        let chosen = entry.selector.select(&members, max);
        if chosen.is_empty() {
            return Err(CacheMiss::Empty);
        }
        Ok(chosen
            .into_iter()
            .filter_map(|id| entry.elements.iter().find(|pe| pe.pe_id == id).cloned())
            .collect())
    }

    /// Preferred Primary (Priority policy) failback: the PE the PU on
    /// `current_pe` should move back to, if the cached list holds one of
    /// strictly higher priority (see [`policies::failback_target`]). Reads
    /// the cache whether fresh or not; the caller keeps it fresh by
    /// re-resolving while it is not on the top PE.
    pub fn should_fail_back(&self, pool_handle: &PoolHandle, current_pe: PeId) -> Option<PeId> {
        let entry = self.cache.get(pool_handle)?;
        let members: Vec<Member> = entry.elements.iter().map(PoolElementInfo::member).collect();
        policies::failback_target(current_pe, &members)
    }

    /// Advances the state machine.
    pub fn on_event(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Resolve(pool_handle) => self.resolve(now, pool_handle, &mut out),
            Input::ReportUnreachable { pool_handle, pe_id } => {
                self.report_unreachable(now, pool_handle, pe_id, &mut out)
            }
            Input::AssociationUp(registrar) => self.on_up(now, registrar, &mut out),
            Input::AssociationDown(registrar) => {
                if self.link_registrar() == Some(registrar) {
                    if self.outstanding.is_empty() {
                        // Idle association closed (e.g. by the registrar):
                        // not a failure, reconnect lazily to the same one.
                        self.link = Link::Down;
                    } else {
                        self.hunt(now, &mut out);
                    }
                }
            }
            Input::Message(registrar, bytes) => {
                if matches!(self.link, Link::Up { registrar: r } if r == registrar) {
                    self.on_message(now, &bytes, &mut out);
                }
            }
            Input::Timer => self.on_timer(now, &mut out),
            Input::Registrars(available) => {
                // Slots never go away: a shorter list keeps the others.
                for (slot, live) in available.into_iter().enumerate() {
                    match self.available.get_mut(slot) {
                        Some(known) => *known = live,
                        None => self.available.push(live),
                    }
                }
            }
        }
        out
    }

    fn link_registrar(&self) -> Option<RegistrarIndex> {
        match self.link {
            Link::Down => None,
            Link::Connecting { registrar, .. } | Link::Up { registrar } => Some(registrar),
        }
    }

    fn resolve(&mut self, now: Instant, pool_handle: PoolHandle, out: &mut Vec<Output>) {
        if self.is_fresh(now, &pool_handle) {
            out.push(Output::Resolved {
                pool_elements: self.cache[&pool_handle].elements.clone(),
                pool_handle,
                from_cache: true,
            });
            return;
        }
        if self
            .outstanding
            .iter()
            .any(|o| o.resolving.as_ref() == Some(&pool_handle))
        {
            return; // One request per handle answers every waiter.
        }
        let bytes = Message::HandleResolution {
            pool_handle: pool_handle.clone(),
            items: self.config.resolution_items,
        }
        .to_bytes();
        self.enqueue(
            now,
            Outstanding {
                resolving: Some(pool_handle),
                bytes,
                deadline: None,
                registrars_failed: 0,
            },
            out,
        );
    }

    fn report_unreachable(
        &mut self,
        now: Instant,
        pool_handle: PoolHandle,
        pe_id: PeId,
        out: &mut Vec<Output>,
    ) {
        if let Some(entry) = self.cache.get_mut(&pool_handle) {
            entry.elements.retain(|pe| pe.pe_id != pe_id);
            entry.selector.forget(pe_id);
        }
        let bytes = Message::EndpointUnreachable {
            pool_handle,
            pe_identifier: pe_id,
        }
        .to_bytes();
        self.enqueue(
            now,
            Outstanding {
                resolving: None,
                bytes,
                deadline: None,
                registrars_failed: 0,
            },
            out,
        );
    }

    /// Sends at once on an established link, else queues and connects.
    fn enqueue(&mut self, now: Instant, mut item: Outstanding, out: &mut Vec<Output>) {
        match self.link {
            Link::Up { registrar } => {
                out.push(Output::Send {
                    registrar,
                    bytes: item.bytes.clone(),
                });
                if item.resolving.is_some() {
                    item.deadline = Some(now + self.config.request_timeout);
                    self.outstanding.push(item);
                }
            }
            Link::Connecting { .. } => self.outstanding.push(item),
            Link::Down => {
                self.outstanding.push(item);
                self.connect(now, out);
            }
        }
    }

    fn candidate_count(&self) -> usize {
        self.available.iter().filter(|&&live| live).count()
    }

    fn connect(&mut self, now: Instant, out: &mut Vec<Output>) {
        let slots = self.available.len();
        let Some(registrar) = (0..slots)
            .map(|step| (self.registrar + step) % slots)
            .find(|&slot| self.available[slot])
        else {
            // No candidate (only announced registrars, none heard): fail
            // now rather than hold the caller until one shows up.
            for item in self.outstanding.drain(..) {
                if let Some(pool_handle) = item.resolving {
                    out.push(Output::ResolutionFailed {
                        pool_handle,
                        error: ResolutionError::NoRegistrarAnswered,
                    });
                } else {
                    tracing::warn!("ASAP PU: Endpoint Unreachable report dropped, no registrar");
                }
            }
            return;
        };
        self.registrar = registrar;
        self.link = Link::Connecting {
            registrar,
            deadline: now + self.config.connect_timeout,
        };
        out.push(Output::Connect { registrar });
    }

    fn on_up(&mut self, now: Instant, registrar: RegistrarIndex, out: &mut Vec<Output>) {
        match self.link {
            Link::Connecting { registrar: r, .. } if r == registrar => {
                self.link = Link::Up { registrar };
                let deadline = now + self.config.request_timeout;
                for item in &mut self.outstanding {
                    out.push(Output::Send {
                        registrar,
                        bytes: item.bytes.clone(),
                    });
                    if item.resolving.is_some() {
                        item.deadline = Some(deadline);
                    }
                }
                // Reports are done once handed to a reliable association.
                self.outstanding.retain(|item| item.resolving.is_some());
            }
            Link::Up { registrar: r } if r == registrar => {}
            // A connect that completed after the hunt moved on.
            _ => out.push(Output::Close { registrar }),
        }
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        let connect_expired =
            matches!(self.link, Link::Connecting { deadline, .. } if now >= deadline);
        let request_expired = self
            .outstanding
            .iter()
            .any(|o| o.deadline.is_some_and(|deadline| now >= deadline));
        if connect_expired || request_expired {
            self.hunt(now, out);
        }
    }

    /// Server hunt: give up on the current registrar, fail what every
    /// registrar has now failed, and take the rest to the next one.
    fn hunt(&mut self, now: Instant, out: &mut Vec<Output>) {
        if let Some(registrar) = self.link_registrar() {
            tracing::info!(registrar, "ASAP PU: registrar failed, hunting");
            out.push(Output::Close { registrar });
        }
        self.link = Link::Down;
        // Wrapped by `connect` over the table's size then (it may grow).
        self.registrar += 1;
        let registrar_count = self.candidate_count();
        let mut kept = Vec::with_capacity(self.outstanding.len());
        for mut item in self.outstanding.drain(..) {
            item.registrars_failed += 1;
            item.deadline = None;
            if item.registrars_failed < registrar_count {
                kept.push(item);
            } else if let Some(pool_handle) = item.resolving {
                out.push(Output::ResolutionFailed {
                    pool_handle,
                    error: ResolutionError::NoRegistrarAnswered,
                });
            } else {
                tracing::warn!("ASAP PU: Endpoint Unreachable report dropped, no registrar");
            }
        }
        self.outstanding = kept;
        if !self.outstanding.is_empty() {
            self.connect(now, out);
        }
    }

    fn on_message(&mut self, now: Instant, bytes: &[u8], out: &mut Vec<Output>) {
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "ASAP PU: undecodable message dropped");
                return;
            }
        };
        let Message::HandleResolutionResponse {
            reject,
            pool_handle,
            policy,
            pool_elements,
            error,
        } = message
        else {
            tracing::debug!(?message, "ASAP PU: message ignored");
            return;
        };
        let Some(position) = self
            .outstanding
            .iter()
            .position(|o| o.resolving.as_ref() == Some(&pool_handle))
        else {
            return; // Late answer to a request already failed or re-sent.
        };
        self.outstanding.remove(position);

        if reject || (error.is_some() && pool_elements.is_empty()) {
            self.cache.remove(&pool_handle);
            out.push(Output::ResolutionFailed {
                pool_handle,
                error: ResolutionError::Rejected { error },
            });
            return;
        }
        let elements: Vec<PoolElementInfo> = pool_elements
            .iter()
            .filter_map(|pe| match PoolElementInfo::from_wire(pe) {
                Ok(info) => Some(info),
                Err(error) => {
                    tracing::warn!(pe = pe.pe_identifier, %error, "ASAP PU: PE skipped");
                    None
                }
            })
            .collect();
        // The pool's policy: the response's own, else the first PE's.
        let policy_type = policy
            .as_ref()
            .and_then(|p| params_from_selection_policy(p).ok())
            .or_else(|| elements.first().map(|pe| pe.policy))
            .map(|params| params.policy_type());
        let selector_for = |policy_type| {
            self.seed_counter += 1;
            PoolSelector::new(policy_type, self.config.selector_seed ^ self.seed_counter)
        };
        let Some(Ok(fresh_selector)) = policy_type.map(selector_for) else {
            self.cache.remove(&pool_handle);
            out.push(Output::ResolutionFailed {
                pool_handle,
                error: ResolutionError::NoPoolElements,
            });
            return;
        };
        let fresh_until = now + self.config.cache_lifetime;
        match self.cache.get_mut(&pool_handle) {
            // Same policy: keep the selector so round robin goes on where
            // it was instead of restarting at the first PE every refresh.
            Some(entry) if entry.selector.policy_type() == fresh_selector.policy_type() => {
                entry.elements = elements.clone();
                entry.fresh_until = fresh_until;
            }
            _ => {
                self.cache.insert(
                    pool_handle.clone(),
                    CacheEntry {
                        elements: elements.clone(),
                        fresh_until,
                        selector: fresh_selector,
                    },
                );
            }
        }
        if elements.is_empty() {
            out.push(Output::ResolutionFailed {
                pool_handle,
                error: ResolutionError::NoPoolElements,
            });
        } else {
            out.push(Output::Resolved {
                pool_handle,
                pool_elements: elements,
                from_cache: false,
            });
        }
    }
}
