//! Preferred Primary: Priority selection plus failback (poolflow's own).
//!
//! The IPFIX working group asked RSerPool for a favoured-server policy and for
//! returning to the main server once it recovers (RSerPool minutes, IETF 65).
//! On the wire Preferred Primary is plain Priority (type `0x00000005`, one u32
//! priority, larger wins): registrars, including RSPLIB's, need nothing new to
//! rank the PEs, and Wireshark decodes our registrations.
//!
//! What differs is the pool user. RSPLIB applies Priority only when a *new*
//! session picks its PE; a session that failed over to a backup stays there
//! after the primary re-registers. A poolflow exporter keeps re-resolving the
//! pool while it is not on a top-priority PE and calls [`failback_target`]
//! with the fresh list; when it answers `Some(pe)` the exporter drains the
//! backup (waits for the cookie covering everything sent) and moves to `pe`
//! with a Cookie Echo, so failback loses and duplicates nothing.

use crate::{Member, PeId};

/// The PE a pool user on `current` should fail back to, if any.
///
/// Returns `Some(pe)` exactly when `members` holds a PE whose priority is
/// strictly higher than `current`'s; `pe` is the highest-priority one, the
/// lowest id among equals so that every exporter deterministically agrees.
/// Returns `None` when `current` is already top (ties included: moving
/// between equals would only cost a drain), and also when `current` is not in
/// `members` or has no priority: that is a failover, which the caller handles
/// with [`PoolSelector::select`](crate::PoolSelector::select). Members without
/// Priority parameters are ignored.
pub fn failback_target(current: PeId, members: &[Member]) -> Option<PeId> {
    let current_priority = members
        .iter()
        .find(|member| member.id == current)?
        .params
        .priority()?;
    members
        .iter()
        .filter_map(|member| Some((member.params.priority()?, member.id)))
        .filter(|&(priority, _)| priority > current_priority)
        // Highest priority; among equals the lowest id (reversed so max_by picks it).
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, id)| id)
}
