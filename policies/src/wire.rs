//! On-wire value of the Pool Member Selection Policy parameter.
//!
//! RFC 5354 §3.8 defines the parameter (type 0x8) as a TLV whose value is a
//! 32-bit Policy Type followed by policy-specific data; RFC 5356 §4.x.4 and
//! §5.x.4 define that data for each standard policy. Every field is an
//! unsigned 32-bit integer in network byte order, so every value is a
//! multiple of 4 bytes and never needs padding.
//!
//! This module only handles the *value* (what follows the 4-byte TLV header);
//! the ASAP/ENRP codec in `protocol` writes the header around it.
//!
//! | type         | policy                                   | fields after the type            | source |
//! |--------------|------------------------------------------|----------------------------------|--------|
//! | `0x00000001` | Round Robin                              | –                                | RFC 5356 §4.1 |
//! | `0x00000002` | Weighted Round Robin                     | weight                           | RFC 5356 §4.2 |
//! | `0x00000003` | Random                                   | –                                | RFC 5356 §4.3 |
//! | `0x00000004` | Weighted Random                          | weight                           | RFC 5356 §4.4 |
//! | `0x00000005` | Priority                                 | priority                         | RSPLIB `rserpool_policy_priority`, Wireshark "Priority (PRI)" |
//! | `0x40000001` | Least Used                               | load                             | RFC 5356 §5.1 |
//! | `0x40000002` | Least Used with Degradation              | load, load degradation           | RFC 5356 §5.2 |
//! | `0x40000003` | Priority Least Used                      | load, load increment             | RFC 5356 §5.3 |
//! | `0x40000004` | Randomized Least Used                    | load                             | RFC 5356 §5.4 |
//! | `0xb0001001` | Randomized Priority Least Used           | load, load increment             | RSPLIB |
//! | `0xb0001002` | Randomized Least Used with Degradation   | load, load degradation           | RSPLIB |
//! | `0xb0001003` | Priority Least Used with Degradation     | load, load degradation           | RSPLIB |
//! | `0xb0001004` | Randomized Priority LU with Degradation  | load, load degradation           | RSPLIB |
//! | `0xb0002001` | Weighted Random with DPF                 | weight, weight DPF, distance     | RSPLIB |
//! | `0xb0002002` | Least Used with DPF                      | load, load DPF, distance         | RSPLIB |
//! | `0xb0002003` | Least Used with Degradation and DPF      | load, load degradation, load DPF, distance | RSPLIB |
//!
//! RSPLIB also names `0xb0002004`/`0xb0002005` (Priority LU with DPF, with and
//! without degradation) but has no wire layout for them: its message creator
//! and parser reject them. We do the same ([`PolicyError::UnknownPolicyType`]).
//!
//! Checked against Wireshark 4.0.17's ASAP dissector (`tshark -V`): every
//! layout above decodes without expert info; Wireshark calls DPF "Delay
//! Penalty Factor" and shows the PLU increment as "Policy Degradation".
//!
//! Load, load degradation, load increment and the DPFs are fractions of
//! `0xffffffff` (= 100 %, RFC 5356 §3.1); weight is a plain capacity number
//! (RFC 5356 §3.2); priority is "larger value wins" (RSPLIB sorts descending).

/// Pool Member Selection Policy type numbers (RFC 5356 §7 registry plus the
/// RSPLIB private numbers Wireshark also knows).
pub mod policy_type {
    /// RFC 5356 §4.1.
    pub const ROUND_ROBIN: u32 = 0x0000_0001;
    /// RFC 5356 §4.2.
    pub const WEIGHTED_ROUND_ROBIN: u32 = 0x0000_0002;
    /// RFC 5356 §4.3.
    pub const RANDOM: u32 = 0x0000_0003;
    /// RFC 5356 §4.4.
    pub const WEIGHTED_RANDOM: u32 = 0x0000_0004;
    /// Not in RFC 5356; RSPLIB `PPT_PRIORITY`, Wireshark "Priority (PRI)".
    pub const PRIORITY: u32 = 0x0000_0005;
    /// RFC 5356 §5.1.
    pub const LEAST_USED: u32 = 0x4000_0001;
    /// RFC 5356 §5.2.
    pub const LEAST_USED_DEGRADATION: u32 = 0x4000_0002;
    /// RFC 5356 §5.3.
    pub const PRIORITY_LEAST_USED: u32 = 0x4000_0003;
    /// RFC 5356 §5.4.
    pub const RANDOMIZED_LEAST_USED: u32 = 0x4000_0004;
    /// RSPLIB `PPT_RANDOMIZED_PRIORITY_LEASTUSED`.
    pub const RANDOMIZED_PRIORITY_LEAST_USED: u32 = 0xb000_1001;
    /// RSPLIB `PPT_RANDOMIZED_LEASTUSED_DEGRADATION`.
    pub const RANDOMIZED_LEAST_USED_DEGRADATION: u32 = 0xb000_1002;
    /// RSPLIB `PPT_PRIORITY_LEASTUSED_DEGRADATION`.
    pub const PRIORITY_LEAST_USED_DEGRADATION: u32 = 0xb000_1003;
    /// RSPLIB `PPT_RANDOMIZED_PRIORITY_LEASTUSED_DEGRADATION`.
    pub const RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION: u32 = 0xb000_1004;
    /// RSPLIB `PPT_WEIGHTED_RANDOM_DPF`.
    pub const WEIGHTED_RANDOM_DPF: u32 = 0xb000_2001;
    /// RSPLIB `PPT_LEASTUSED_DPF`.
    pub const LEAST_USED_DPF: u32 = 0xb000_2002;
    /// RSPLIB `PPT_LEASTUSED_DEGRADATION_DPF`.
    pub const LEAST_USED_DEGRADATION_DPF: u32 = 0xb000_2003;
}

/// Human-readable policy name for logs and metrics labels, `None` for a type
/// this crate does not implement.
pub fn policy_name(policy_type: u32) -> Option<&'static str> {
    use policy_type::*;
    Some(match policy_type {
        ROUND_ROBIN => "Round Robin",
        WEIGHTED_ROUND_ROBIN => "Weighted Round Robin",
        RANDOM => "Random",
        WEIGHTED_RANDOM => "Weighted Random",
        PRIORITY => "Priority",
        LEAST_USED => "Least Used",
        LEAST_USED_DEGRADATION => "Least Used with Degradation",
        PRIORITY_LEAST_USED => "Priority Least Used",
        RANDOMIZED_LEAST_USED => "Randomized Least Used",
        RANDOMIZED_PRIORITY_LEAST_USED => "Randomized Priority Least Used",
        RANDOMIZED_LEAST_USED_DEGRADATION => "Randomized Least Used with Degradation",
        PRIORITY_LEAST_USED_DEGRADATION => "Priority Least Used with Degradation",
        RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION => {
            "Randomized Priority Least Used with Degradation"
        }
        WEIGHTED_RANDOM_DPF => "Weighted Random with Distance Penalty Factor",
        LEAST_USED_DPF => "Least Used with Distance Penalty Factor",
        LEAST_USED_DEGRADATION_DPF => "Least Used with Degradation and Distance Penalty Factor",
        _ => return None,
    })
}

/// Number of 32-bit fields that follow the policy type, `None` if unknown.
fn field_count(policy_type: u32) -> Option<usize> {
    use policy_type::*;
    Some(match policy_type {
        ROUND_ROBIN | RANDOM => 0,
        WEIGHTED_ROUND_ROBIN | WEIGHTED_RANDOM | PRIORITY | LEAST_USED | RANDOMIZED_LEAST_USED => 1,
        LEAST_USED_DEGRADATION
        | PRIORITY_LEAST_USED
        | RANDOMIZED_PRIORITY_LEAST_USED
        | RANDOMIZED_LEAST_USED_DEGRADATION
        | PRIORITY_LEAST_USED_DEGRADATION
        | RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION => 2,
        WEIGHTED_RANDOM_DPF | LEAST_USED_DPF => 3,
        LEAST_USED_DEGRADATION_DPF => 4,
        _ => return None,
    })
}

/// Why a policy parameter value could not be decoded. Never a panic: the
/// registrar turns these into an ASAP error ("Pooling Policy Inconsistent" /
/// "Invalid Values") and keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Fewer bytes than the policy type (or the type's fields) need.
    #[error("pool member selection policy value truncated: need {needed} bytes, got {available}")]
    Truncated {
        /// Bytes the value must have (4 when even the type is missing).
        needed: usize,
        /// Bytes that were there.
        available: usize,
    },
    /// More bytes than the policy type defines. Rejected rather than ignored
    /// because silently dropping fields would mis-balance a billing pool.
    #[error(
        "pool member selection policy {policy_type:#010x} value has {actual} bytes, expected {expected}"
    )]
    TrailingBytes {
        /// The decoded policy type.
        policy_type: u32,
        /// Bytes this policy type defines.
        expected: usize,
        /// Bytes that were there.
        actual: usize,
    },
    /// A policy type this crate does not implement.
    #[error("unknown pool member selection policy type {0:#010x}")]
    UnknownPolicyType(u32),
}

/// A PE's policy and its policy parameters, exactly as carried on the wire.
///
/// All members of one pool use the same variant (RFC 5352 §3.1.3 / RFC 5356
/// §1: the registrar rejects a registration with a different policy,
/// see [`PolicyParams::same_policy`]); the per-PE fields (load, weight,
/// priority…) differ.
///
/// *Preferred Primary* has no variant of its own: on the wire it **is**
/// [`PolicyParams::Priority`] (type 5), so RSPLIB registrars/PUs and Wireshark
/// understand our PEs. Failback is pool-user behaviour, see
/// [`crate::failback_target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyParams {
    /// RFC 5356 §4.1.
    RoundRobin,
    /// RFC 5356 §4.2. Weight 0 means "send no new traffic" here.
    WeightedRoundRobin {
        /// Relative capacity.
        weight: u32,
    },
    /// RFC 5356 §4.3.
    Random,
    /// RFC 5356 §4.4. Weight 0 means "never selected".
    WeightedRandom {
        /// Relative capacity; selection probability is proportional to it.
        weight: u32,
    },
    /// RSPLIB/Wireshark Priority (type 5): highest `priority` first, round
    /// robin among equals. Also the wire form of Preferred Primary.
    Priority {
        /// Larger value = preferred.
        priority: u32,
    },
    /// RFC 5356 §5.1.
    LeastUsed {
        /// Current load, `0xffffffff` = 100 %.
        load: u32,
    },
    /// RFC 5356 §5.2.
    LeastUsedDegradation {
        /// Current load.
        load: u32,
        /// Added to the registrar's per-PE degradation on every selection,
        /// reset when the PE re-registers.
        load_degradation: u32,
    },
    /// RFC 5356 §5.3.
    PriorityLeastUsed {
        /// Current load.
        load: u32,
        /// Load one more session would add; the PE with the lowest
        /// `load + load_increment` wins.
        load_increment: u32,
    },
    /// RFC 5356 §5.4.
    RandomizedLeastUsed {
        /// Current load; selection probability is proportional to `100 % - load`.
        load: u32,
    },
    /// RSPLIB `0xb0001001`: random, probability ∝ `100 % - (load + load_increment)`.
    RandomizedPriorityLeastUsed {
        /// Current load.
        load: u32,
        /// Load one more session would add.
        load_increment: u32,
    },
    /// RSPLIB `0xb0001002`: random, probability ∝ `100 % - (load + degradation)`.
    RandomizedLeastUsedDegradation {
        /// Current load.
        load: u32,
        /// Degradation step per selection.
        load_degradation: u32,
    },
    /// RSPLIB `0xb0001003`. RSPLIB uses the one field both as the static
    /// increment (like PLU) and as the degradation step (like LUD).
    PriorityLeastUsedDegradation {
        /// Current load.
        load: u32,
        /// Static increment and degradation step.
        load_degradation: u32,
    },
    /// RSPLIB `0xb0001004`: randomized form of `0xb0001003`.
    RandomizedPriorityLeastUsedDegradation {
        /// Current load.
        load: u32,
        /// Static increment and degradation step.
        load_degradation: u32,
    },
    /// RSPLIB `0xb0002001`: weight reduced by `distance × weight_dpf`.
    WeightedRandomDpf {
        /// Relative capacity.
        weight: u32,
        /// Weight penalty per distance unit, fraction of `0xffffffff`.
        weight_dpf: u32,
        /// Distance (RSPLIB: delay in ms, filled in by the registrar).
        distance: u32,
    },
    /// RSPLIB `0xb0002002`: key `load + distance × load_dpf`.
    LeastUsedDpf {
        /// Current load.
        load: u32,
        /// Load penalty per distance unit, fraction of `0xffffffff`.
        load_dpf: u32,
        /// Distance (RSPLIB: delay in ms).
        distance: u32,
    },
    /// RSPLIB `0xb0002003`: key `load + degradation + distance × load_dpf`.
    LeastUsedDegradationDpf {
        /// Current load.
        load: u32,
        /// Degradation step per selection.
        load_degradation: u32,
        /// Load penalty per distance unit.
        load_dpf: u32,
        /// Distance (RSPLIB: delay in ms).
        distance: u32,
    },
}

impl PolicyParams {
    /// The 32-bit policy type number (first field on the wire).
    pub fn policy_type(&self) -> u32 {
        self.type_and_fields().0
    }

    /// Whether two PEs use the same policy, i.e. may share one pool. Only the
    /// type counts: load, weight and priority are per-PE by design.
    pub fn same_policy(&self, other: &Self) -> bool {
        self.policy_type() == other.policy_type()
    }

    /// Length in bytes of the encoded value (what [`encode`](Self::encode) appends).
    pub fn encoded_len(&self) -> usize {
        4 + 4 * self.type_and_fields().2
    }

    /// Appends the parameter value: policy type, then the fields, all u32
    /// big-endian (RFC 5354 §3.8). The TLV header is the caller's.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (policy_type, fields, field_count) = self.type_and_fields();
        out.reserve(4 + 4 * field_count);
        out.extend_from_slice(&policy_type.to_be_bytes());
        for field in &fields[..field_count] {
            out.extend_from_slice(&field.to_be_bytes());
        }
    }

    /// Convenience: the encoded value as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Parses a parameter value (TLV header and padding already removed).
    /// The length must match the policy type exactly.
    pub fn decode(bytes: &[u8]) -> Result<Self, PolicyError> {
        let type_bytes: [u8; 4] =
            bytes
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(PolicyError::Truncated {
                    needed: 4,
                    available: bytes.len(),
                })?;
        let policy_type = u32::from_be_bytes(type_bytes);
        let count = field_count(policy_type).ok_or(PolicyError::UnknownPolicyType(policy_type))?;
        let expected = 4 + 4 * count;
        if bytes.len() < expected {
            return Err(PolicyError::Truncated {
                needed: expected,
                available: bytes.len(),
            });
        }
        if bytes.len() > expected {
            return Err(PolicyError::TrailingBytes {
                policy_type,
                expected,
                actual: bytes.len(),
            });
        }
        let field = |index: usize| {
            let start = 4 + 4 * index;
            u32::from_be_bytes([
                bytes[start],
                bytes[start + 1],
                bytes[start + 2],
                bytes[start + 3],
            ])
        };
        use policy_type::*;
        Ok(match policy_type {
            ROUND_ROBIN => Self::RoundRobin,
            WEIGHTED_ROUND_ROBIN => Self::WeightedRoundRobin { weight: field(0) },
            RANDOM => Self::Random,
            WEIGHTED_RANDOM => Self::WeightedRandom { weight: field(0) },
            PRIORITY => Self::Priority { priority: field(0) },
            LEAST_USED => Self::LeastUsed { load: field(0) },
            LEAST_USED_DEGRADATION => Self::LeastUsedDegradation {
                load: field(0),
                load_degradation: field(1),
            },
            PRIORITY_LEAST_USED => Self::PriorityLeastUsed {
                load: field(0),
                load_increment: field(1),
            },
            RANDOMIZED_LEAST_USED => Self::RandomizedLeastUsed { load: field(0) },
            RANDOMIZED_PRIORITY_LEAST_USED => Self::RandomizedPriorityLeastUsed {
                load: field(0),
                load_increment: field(1),
            },
            RANDOMIZED_LEAST_USED_DEGRADATION => Self::RandomizedLeastUsedDegradation {
                load: field(0),
                load_degradation: field(1),
            },
            PRIORITY_LEAST_USED_DEGRADATION => Self::PriorityLeastUsedDegradation {
                load: field(0),
                load_degradation: field(1),
            },
            RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION => {
                Self::RandomizedPriorityLeastUsedDegradation {
                    load: field(0),
                    load_degradation: field(1),
                }
            }
            WEIGHTED_RANDOM_DPF => Self::WeightedRandomDpf {
                weight: field(0),
                weight_dpf: field(1),
                distance: field(2),
            },
            LEAST_USED_DPF => Self::LeastUsedDpf {
                load: field(0),
                load_dpf: field(1),
                distance: field(2),
            },
            LEAST_USED_DEGRADATION_DPF => Self::LeastUsedDegradationDpf {
                load: field(0),
                load_degradation: field(1),
                load_dpf: field(2),
                distance: field(3),
            },
            // field_count() above already rejected every other type.
            other => return Err(PolicyError::UnknownPolicyType(other)),
        })
    }

    /// The weight, for the weighted policies.
    pub fn weight(&self) -> Option<u32> {
        match *self {
            Self::WeightedRoundRobin { weight }
            | Self::WeightedRandom { weight }
            | Self::WeightedRandomDpf { weight, .. } => Some(weight),
            _ => None,
        }
    }

    /// The priority, for [`PolicyParams::Priority`] (and so Preferred Primary).
    pub fn priority(&self) -> Option<u32> {
        match *self {
            Self::Priority { priority } => Some(priority),
            _ => None,
        }
    }

    /// The load, for the adaptive (load-based) policies.
    pub fn load(&self) -> Option<u32> {
        match *self {
            Self::LeastUsed { load }
            | Self::LeastUsedDegradation { load, .. }
            | Self::PriorityLeastUsed { load, .. }
            | Self::RandomizedLeastUsed { load }
            | Self::RandomizedPriorityLeastUsed { load, .. }
            | Self::RandomizedLeastUsedDegradation { load, .. }
            | Self::PriorityLeastUsedDegradation { load, .. }
            | Self::RandomizedPriorityLeastUsedDegradation { load, .. }
            | Self::LeastUsedDpf { load, .. }
            | Self::LeastUsedDegradationDpf { load, .. } => Some(load),
            _ => None,
        }
    }

    /// Load the registrar adds to the PE's degradation each time it is
    /// selected (0 for policies without degradation).
    pub(crate) fn degradation_step(&self) -> u32 {
        match *self {
            Self::LeastUsedDegradation {
                load_degradation, ..
            }
            | Self::RandomizedLeastUsedDegradation {
                load_degradation, ..
            }
            | Self::PriorityLeastUsedDegradation {
                load_degradation, ..
            }
            | Self::RandomizedPriorityLeastUsedDegradation {
                load_degradation, ..
            }
            | Self::LeastUsedDegradationDpf {
                load_degradation, ..
            } => load_degradation,
            _ => 0,
        }
    }

    /// `(type, fields, number of fields used)`: the single source of truth for
    /// the wire layout, so encode, length and type can never disagree.
    fn type_and_fields(&self) -> (u32, [u32; 4], usize) {
        use policy_type::*;
        match *self {
            Self::RoundRobin => (ROUND_ROBIN, [0; 4], 0),
            Self::WeightedRoundRobin { weight } => (WEIGHTED_ROUND_ROBIN, [weight, 0, 0, 0], 1),
            Self::Random => (RANDOM, [0; 4], 0),
            Self::WeightedRandom { weight } => (WEIGHTED_RANDOM, [weight, 0, 0, 0], 1),
            Self::Priority { priority } => (PRIORITY, [priority, 0, 0, 0], 1),
            Self::LeastUsed { load } => (LEAST_USED, [load, 0, 0, 0], 1),
            Self::LeastUsedDegradation {
                load,
                load_degradation,
            } => (LEAST_USED_DEGRADATION, [load, load_degradation, 0, 0], 2),
            Self::PriorityLeastUsed {
                load,
                load_increment,
            } => (PRIORITY_LEAST_USED, [load, load_increment, 0, 0], 2),
            Self::RandomizedLeastUsed { load } => (RANDOMIZED_LEAST_USED, [load, 0, 0, 0], 1),
            Self::RandomizedPriorityLeastUsed {
                load,
                load_increment,
            } => (
                RANDOMIZED_PRIORITY_LEAST_USED,
                [load, load_increment, 0, 0],
                2,
            ),
            Self::RandomizedLeastUsedDegradation {
                load,
                load_degradation,
            } => (
                RANDOMIZED_LEAST_USED_DEGRADATION,
                [load, load_degradation, 0, 0],
                2,
            ),
            Self::PriorityLeastUsedDegradation {
                load,
                load_degradation,
            } => (
                PRIORITY_LEAST_USED_DEGRADATION,
                [load, load_degradation, 0, 0],
                2,
            ),
            Self::RandomizedPriorityLeastUsedDegradation {
                load,
                load_degradation,
            } => (
                RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION,
                [load, load_degradation, 0, 0],
                2,
            ),
            Self::WeightedRandomDpf {
                weight,
                weight_dpf,
                distance,
            } => (WEIGHTED_RANDOM_DPF, [weight, weight_dpf, distance, 0], 3),
            Self::LeastUsedDpf {
                load,
                load_dpf,
                distance,
            } => (LEAST_USED_DPF, [load, load_dpf, distance, 0], 3),
            Self::LeastUsedDegradationDpf {
                load,
                load_degradation,
                load_dpf,
                distance,
            } => (
                LEAST_USED_DEGRADATION_DPF,
                [load, load_degradation, load_dpf, distance],
                4,
            ),
        }
    }
}
