//! ASAP client side (RFC 5352): the pool element and pool user.
//!
//! * [`pool_element`]: sans-IO Pool Element (the collector): registration,
//!   re-registration, keep-alive answers, server hunt, deregistration.
//! * [`pool_user`]: sans-IO Pool User (the exporter): handle resolution, the
//!   PU cache with its staleness rule, local policy selection, Endpoint
//!   Unreachable reports, server hunt, Preferred Primary failback detection.
//! * [`asap_endpoint`]: the PE's own ASAP endpoint, where a registrar that
//!   took the PE over (RFC 5353) sends its Home keep-alives.
//! * [`server_table`]: sans-IO server table: the static registrars plus
//!   those learnt from ASAP Server Announces, which expire when the
//!   announces stop (RFC 5352 §3.6).
//! * [`driver`]: thin tokio drivers running those state machines over the
//!   `transport` crate (SCTP over UDP or TCP to the registrars).
//!
//! Both state machines address registrars by their slot in the server table
//! ([`RegistrarIndex`]: the static list first, announced registrars after);
//! only the driver knows addresses. Time is
//! passed in (`now`), never read, so tests drive them with a fake clock.

#![warn(missing_docs)]

pub mod asap_endpoint;
pub mod clock;
pub mod driver;
pub mod pool_element;
pub mod pool_user;
pub mod server_table;

use policies::{PolicyError, PolicyParams};
use protocol::rserpool::SelectionPolicy;

pub use driver::{
    AnnounceListenConfig, PoolElementDriverConfig, PoolElementHandle, PoolUserClient,
    PoolUserDriverConfig, RegistrarAddress, RegistrarTransport, spawn_pool_element,
};
pub use pool_element::{MemberCredentials, PoolElement, PoolElementConfig};
pub use pool_user::{PoolElementInfo, PoolUser, PoolUserConfig};
pub use server_table::{AnnouncedSctp, ServerTable, ServerTableConfig};

/// Slot of a registrar in the server table: the configured static list
/// first, then registrars learnt from Server Announces (stable once given).
pub type RegistrarIndex = usize;

/// The Pool Member Selection Policy parameter of the codec for `params`.
///
/// The codec's [`SelectionPolicy::value`] holds only the policy-specific data
/// that follows the 32-bit policy type on the wire, while
/// [`PolicyParams::encode`] writes the type too: the type is split off here.
pub fn selection_policy_from_params(params: &PolicyParams) -> SelectionPolicy {
    let mut bytes = params.to_bytes();
    let value = bytes.split_off(4);
    SelectionPolicy {
        policy_type: params.policy_type(),
        value,
    }
}

/// The policy parameters a codec [`SelectionPolicy`] carries (the inverse of
/// [`selection_policy_from_params`]): the type is put back in front of the
/// value before `policies` parses it, and the length must match the type.
pub fn params_from_selection_policy(policy: &SelectionPolicy) -> Result<PolicyParams, PolicyError> {
    let mut bytes = Vec::with_capacity(4 + policy.value.len());
    bytes.extend_from_slice(&policy.policy_type.to_be_bytes());
    bytes.extend_from_slice(&policy.value);
    PolicyParams::decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_value_excludes_the_policy_type() {
        let params = PolicyParams::Priority { priority: 20 };
        let wire = selection_policy_from_params(&params);
        assert_eq!(wire.policy_type, 0x0000_0005);
        assert_eq!(wire.value, [0, 0, 0, 20]);
        assert_eq!(params_from_selection_policy(&wire), Ok(params));
    }

    #[test]
    fn policy_survives_a_trip_through_the_asap_codec() {
        use protocol::rserpool::params::Parameter;
        let params = PolicyParams::LeastUsedDegradation {
            load: 7,
            load_degradation: 9,
        };
        let mut tlv = Vec::new();
        Parameter::SelectionPolicy(selection_policy_from_params(&params)).encode(&mut tlv);
        // TLV header (type 0x0008, length 16) then type and two fields.
        assert_eq!(&tlv[..4], &[0, 8, 0, 16]);
        assert_eq!(&tlv[4..8], &0x4000_0002u32.to_be_bytes());
        let Ok(Parameter::SelectionPolicy(decoded)) = Parameter::decode(&tlv) else {
            panic!("policy TLV did not decode");
        };
        assert_eq!(params_from_selection_policy(&decoded), Ok(params));
    }

    #[test]
    fn value_with_the_type_duplicated_is_rejected() {
        // The mistake this conversion guards against: value = type + data.
        let wrong = SelectionPolicy {
            policy_type: 5,
            value: PolicyParams::Priority { priority: 1 }.to_bytes(),
        };
        assert!(params_from_selection_policy(&wrong).is_err());
    }
}
