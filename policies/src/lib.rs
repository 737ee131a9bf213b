//! Pool member selection policies for poolflow's RSerPool pools.
//!
//! Pure logic: no IO, no async, no clock. The registrar uses it for handle
//! resolution (RFC 5352 §3.2: answer with up to N PEs, RSPLIB default 3) and
//! the exporter (pool user) on its cached PE list and for failback.
//!
//! * [`wire`]: the on-wire value of the Pool Member Selection Policy parameter
//!   (RFC 5354 §3.8, layouts from RFC 5356 §4.x.4/§5.x.4 and RSPLIB):
//!   [`PolicyParams::encode`] / [`PolicyParams::decode`].
//! * [`selector`]: [`PoolSelector`], the per-pool selection state for the
//!   RFC 5356 policies (Round Robin, Weighted Round Robin, Random, Weighted
//!   Random, Least Used, Least Used with Degradation, Priority Least Used,
//!   Randomized Least Used), RSPLIB's Priority (`0x00000005`) and RSPLIB's
//!   extra `0xb0001001`–`0xb0001004` and `0xb0002001`–`0xb0002003` policies.
//!   It keeps an index per pool, so a registrar that reports membership
//!   changes ([`PoolSelector::insert`], [`PoolSelector::remove`]) answers
//!   with [`PoolSelector::select_top`] in O(`max` · log n).
//! * [`preferred_primary`]: poolflow's Preferred Primary = Priority on the
//!   wire + [`failback_target`] for pool users.
//!
//! ```
//! use policies::{Member, PolicyParams, PoolSelector};
//!
//! let members = [
//!     Member { id: 1, params: PolicyParams::Priority { priority: 10 } },
//!     Member { id: 2, params: PolicyParams::Priority { priority: 20 } },
//! ];
//! let mut selector = PoolSelector::new(0x0000_0005, 42).unwrap();
//! assert_eq!(selector.select(&members, 3), vec![2, 1]);
//! assert_eq!(policies::failback_target(1, &members), Some(2));
//!
//! let mut value = Vec::new();
//! members[1].params.encode(&mut value);
//! assert_eq!(value, [0, 0, 0, 5, 0, 0, 0, 20]);
//! assert_eq!(PolicyParams::decode(&value), Ok(members[1].params));
//! ```

#![warn(missing_docs)]

pub mod preferred_primary;
pub mod selector;
pub mod wire;

pub use preferred_primary::failback_target;
pub use selector::PoolSelector;
pub use wire::{PolicyError, PolicyParams, policy_name, policy_type};

/// Pool element identifier (RFC 5352 §2.2: 32 bits, chosen by the PE).
pub type PeId = u32;

/// One pool element as the selection sees it: its id and the policy
/// parameters it registered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Member {
    /// The PE identifier.
    pub id: PeId,
    /// Its Pool Member Selection Policy parameter.
    pub params: PolicyParams,
}
