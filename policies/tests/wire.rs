//! Golden bytes and decode errors of the Pool Member Selection Policy
//! parameter value (RFC 5354 §3.8, RFC 5356 §4.x.4/§5.x.4, RSPLIB layouts).

use policies::{PolicyError, PolicyParams, policy_name, policy_type};
use proptest::prelude::*;

/// (params, expected value bytes): type then fields, u32 big-endian.
fn golden() -> Vec<(PolicyParams, Vec<u8>)> {
    use PolicyParams::*;
    vec![
        (RoundRobin, vec![0, 0, 0, 1]),
        (
            WeightedRoundRobin {
                weight: 0x0102_0304,
            },
            vec![0, 0, 0, 2, 1, 2, 3, 4],
        ),
        (Random, vec![0, 0, 0, 3]),
        (WeightedRandom { weight: 7 }, vec![0, 0, 0, 4, 0, 0, 0, 7]),
        (Priority { priority: 300 }, vec![0, 0, 0, 5, 0, 0, 1, 0x2c]),
        (
            LeastUsed { load: 0x8000_0000 },
            vec![0x40, 0, 0, 1, 0x80, 0, 0, 0],
        ),
        (
            LeastUsedDegradation {
                load: 0x1111_1111,
                load_degradation: 0x0000_ffff,
            },
            vec![0x40, 0, 0, 2, 0x11, 0x11, 0x11, 0x11, 0, 0, 0xff, 0xff],
        ),
        (
            PriorityLeastUsed {
                load: 1,
                load_increment: 0xffff_ffff,
            },
            vec![0x40, 0, 0, 3, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff],
        ),
        (
            RandomizedLeastUsed { load: 0xdead_beef },
            vec![0x40, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef],
        ),
        (
            RandomizedPriorityLeastUsed {
                load: 2,
                load_increment: 3,
            },
            vec![0xb0, 0, 0x10, 0x01, 0, 0, 0, 2, 0, 0, 0, 3],
        ),
        (
            RandomizedLeastUsedDegradation {
                load: 4,
                load_degradation: 5,
            },
            vec![0xb0, 0, 0x10, 0x02, 0, 0, 0, 4, 0, 0, 0, 5],
        ),
        (
            PriorityLeastUsedDegradation {
                load: 6,
                load_degradation: 7,
            },
            vec![0xb0, 0, 0x10, 0x03, 0, 0, 0, 6, 0, 0, 0, 7],
        ),
        (
            RandomizedPriorityLeastUsedDegradation {
                load: 8,
                load_degradation: 9,
            },
            vec![0xb0, 0, 0x10, 0x04, 0, 0, 0, 8, 0, 0, 0, 9],
        ),
        (
            WeightedRandomDpf {
                weight: 10,
                weight_dpf: 11,
                distance: 12,
            },
            vec![0xb0, 0, 0x20, 0x01, 0, 0, 0, 10, 0, 0, 0, 11, 0, 0, 0, 12],
        ),
        (
            LeastUsedDpf {
                load: 13,
                load_dpf: 14,
                distance: 15,
            },
            vec![0xb0, 0, 0x20, 0x02, 0, 0, 0, 13, 0, 0, 0, 14, 0, 0, 0, 15],
        ),
        (
            LeastUsedDegradationDpf {
                load: 16,
                load_degradation: 17,
                load_dpf: 18,
                distance: 19,
            },
            vec![
                0xb0, 0, 0x20, 0x03, 0, 0, 0, 16, 0, 0, 0, 17, 0, 0, 0, 18, 0, 0, 0, 19,
            ],
        ),
    ]
}

#[test]
fn every_policy_encodes_to_its_golden_bytes() {
    for (params, expected) in golden() {
        let mut out = vec![0xaa]; // encode must append, not overwrite
        params.encode(&mut out);
        assert_eq!(&out[1..], &expected[..], "{params:?}");
        assert_eq!(out[0], 0xaa);
        assert_eq!(params.encoded_len(), expected.len(), "{params:?}");
        assert_eq!(params.to_bytes(), expected, "{params:?}");
    }
}

#[test]
fn every_golden_value_decodes_back() {
    for (params, bytes) in golden() {
        assert_eq!(PolicyParams::decode(&bytes), Ok(params));
    }
}

#[test]
fn policy_type_numbers_match_rfc_5356_and_rsplib() {
    let expected = [
        (PolicyParams::RoundRobin, 0x0000_0001),
        (PolicyParams::WeightedRoundRobin { weight: 1 }, 0x0000_0002),
        (PolicyParams::Random, 0x0000_0003),
        (PolicyParams::WeightedRandom { weight: 1 }, 0x0000_0004),
        (PolicyParams::Priority { priority: 1 }, 0x0000_0005),
        (PolicyParams::LeastUsed { load: 0 }, 0x4000_0001),
        (
            PolicyParams::LeastUsedDegradation {
                load: 0,
                load_degradation: 0,
            },
            0x4000_0002,
        ),
        (
            PolicyParams::PriorityLeastUsed {
                load: 0,
                load_increment: 0,
            },
            0x4000_0003,
        ),
        (PolicyParams::RandomizedLeastUsed { load: 0 }, 0x4000_0004),
    ];
    for (params, number) in expected {
        assert_eq!(params.policy_type(), number, "{params:?}");
        assert!(policy_name(number).is_some());
    }
    assert_eq!(policy_type::PRIORITY, 5);
    assert_eq!(
        policy_name(0x4000_0002),
        Some("Least Used with Degradation")
    );
}

#[test]
fn empty_or_short_type_is_truncated() {
    for len in 0..4 {
        assert_eq!(
            PolicyParams::decode(&[0u8; 4][..len]),
            Err(PolicyError::Truncated {
                needed: 4,
                available: len
            })
        );
    }
}

#[test]
fn missing_fields_are_truncated() {
    // Least Used with Degradation needs 12 bytes.
    let bytes = [0x40, 0, 0, 2, 0, 0, 0, 1, 0, 0];
    assert_eq!(
        PolicyParams::decode(&bytes),
        Err(PolicyError::Truncated {
            needed: 12,
            available: 10
        })
    );
    // Priority without its priority.
    assert_eq!(
        PolicyParams::decode(&[0, 0, 0, 5]),
        Err(PolicyError::Truncated {
            needed: 8,
            available: 4
        })
    );
}

#[test]
fn extra_bytes_are_rejected() {
    assert_eq!(
        PolicyParams::decode(&[0, 0, 0, 1, 0, 0, 0, 0]),
        Err(PolicyError::TrailingBytes {
            policy_type: 1,
            expected: 4,
            actual: 8
        })
    );
}

#[test]
fn unknown_types_are_a_clear_error() {
    for unknown in [0u32, 6, 0x4000_0005, 0xb000_2004, 0xb000_2005, 0xffff_ffff] {
        let mut bytes = unknown.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let error = PolicyParams::decode(&bytes).unwrap_err();
        assert_eq!(error, PolicyError::UnknownPolicyType(unknown));
        assert!(error.to_string().contains("unknown"), "{error}");
    }
}

#[test]
fn same_policy_compares_type_only() {
    let a = PolicyParams::LeastUsed { load: 1 };
    let b = PolicyParams::LeastUsed { load: 99 };
    let c = PolicyParams::RandomizedLeastUsed { load: 1 };
    assert!(a.same_policy(&b));
    assert!(!a.same_policy(&c));
}

fn any_params() -> impl Strategy<Value = PolicyParams> {
    let goldens = golden();
    (0..goldens.len(), any::<[u32; 4]>()).prop_map(move |(index, [a, b, c, d])| {
        // Re-encode the golden shape with arbitrary field values.
        let mut bytes = goldens[index].1[..4].to_vec();
        for field in [a, b, c, d].iter().take((goldens[index].1.len() - 4) / 4) {
            bytes.extend_from_slice(&field.to_be_bytes());
        }
        PolicyParams::decode(&bytes).expect("golden shapes decode")
    })
}

proptest! {
    #[test]
    fn encode_decode_round_trip(params in any_params()) {
        let bytes = params.to_bytes();
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(PolicyParams::decode(&bytes), Ok(params));
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
        if let Ok(params) = PolicyParams::decode(&bytes) {
            prop_assert_eq!(params.to_bytes(), bytes);
        }
    }

    #[test]
    fn every_strict_prefix_is_truncated(params in any_params()) {
        let bytes = params.to_bytes();
        for len in 0..bytes.len() {
            let is_truncated = matches!(
                PolicyParams::decode(&bytes[..len]),
                Err(PolicyError::Truncated { .. })
            );
            prop_assert!(is_truncated, "prefix of {} bytes", len);
        }
    }
}
