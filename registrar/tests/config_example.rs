//! The annotated example configuration stays in step with the code.

use std::time::Duration;

use registrar::RegistrarConfig;

#[test]
fn example_config_parses_and_documents_the_defaults() {
    let example = RegistrarConfig::from_toml(include_str!("../../deploy/registrar.toml"))
        .expect("example parses");
    assert!(
        example.deprecated_keys.is_empty(),
        "the example uses a legacy key: {:?}",
        example.deprecated_keys
    );
    assert_eq!(example, RegistrarConfig::default());
}

#[test]
fn unknown_keys_and_bad_values_are_rejected() {
    assert!(toml::from_str::<RegistrarConfig>("[timers]\nkeep_alive_periode = \"5s\"").is_err());
    let zero: RegistrarConfig = toml::from_str("[timers]\nkeep_alive_timeout = \"0s\"").unwrap();
    assert!(zero.validate().is_err());
    let bad_addr: RegistrarConfig = toml::from_str("[listen]\ntcp = \"nowhere\"").unwrap();
    assert!(bad_addr.validate().is_err());
    let sub_second: RegistrarConfig =
        toml::from_str("[timers]\nkeep_alive_period = \"100ms\"\nkeep_alive_timeout = \"50ms\"")
            .unwrap();
    let server = sub_second.server_config(1).expect("server config");
    assert_eq!(server.keep_alive_period.as_millis(), 100);
    assert_eq!(server.keep_alive_timeout.as_millis(), 50);
}

/// The `_ms` keys of older files still work: the same durations as the keys
/// with a unit, one warning per key naming the new spelling; a file with
/// both spellings of a key, or a duration without a unit, is refused.
#[test]
fn legacy_ms_keys_are_upgraded_with_one_warning_each() {
    let legacy = RegistrarConfig::from_toml(
        "[timers]\nkeep_alive_period_ms = 200\nkeep_alive_timeout_ms = 300\n\
         [transport]\nheartbeat_interval_ms = 1500\n\
         [enrp]\npeer_heartbeat_cycle_ms = 100\nauth_max_clock_skew_ms = 45000\n\
         [membership]\nmax_clock_skew_ms = 90000\n",
    )
    .unwrap();
    let new = RegistrarConfig::from_toml(
        "[timers]\nkeep_alive_period = \"200ms\"\nkeep_alive_timeout = \"300ms\"\n\
         [transport]\nheartbeat_interval = \"1s 500ms\"\n\
         [enrp]\npeer_heartbeat_cycle = \"100ms\"\nauth_max_clock_skew = \"45s\"\n\
         [membership]\nmax_clock_skew = \"90s\"\n",
    )
    .unwrap();
    assert!(new.deprecated_keys.is_empty(), "{:?}", new.deprecated_keys);
    assert_eq!(legacy.timers.keep_alive_period, Duration::from_millis(200));
    assert_eq!(legacy.enrp.auth_max_clock_skew, Duration::from_secs(45));
    let mut without_warnings = legacy.clone();
    without_warnings.deprecated_keys.clear();
    assert_eq!(without_warnings, new);
    assert_eq!(
        legacy.deprecated_keys.len(),
        6,
        "{:?}",
        legacy.deprecated_keys
    );
    for expected in [
        "`timers.keep_alive_period_ms` is deprecated: write `timers.keep_alive_period = \"200ms\"`",
        "`enrp.auth_max_clock_skew_ms` is deprecated: write `enrp.auth_max_clock_skew = \"45000ms\"`",
        "`membership.max_clock_skew_ms` is deprecated: write `membership.max_clock_skew = \"90000ms\"`",
    ] {
        assert!(
            legacy.deprecated_keys.iter().any(|w| w.contains(expected)),
            "{expected} not in {:?}",
            legacy.deprecated_keys
        );
    }
    // show-config prints the new spelling with its unit.
    let shown = toml::to_string(&legacy).unwrap();
    assert!(shown.contains("keep_alive_period = \"200ms\""), "{shown}");
    assert!(!shown.contains("_ms"), "{shown}");

    let both = RegistrarConfig::from_toml(
        "[timers]\nkeep_alive_period = \"1s\"\nkeep_alive_period_ms = 1000\n",
    )
    .unwrap_err();
    assert!(
        format!("{both:#}").contains("keep only `timers.keep_alive_period`"),
        "{both:#}"
    );
    assert!(RegistrarConfig::from_toml("[timers]\nkeep_alive_period = 200\n").is_err());
    assert!(RegistrarConfig::from_toml("[timers]\nkeep_alive_period_ms = 0\n").is_err());
}

#[test]
fn enrp_settings_are_validated_and_converted() {
    let wildcard: RegistrarConfig = toml::from_str("[enrp]\nenabled = true").unwrap();
    assert!(
        wildcard.validate().is_err(),
        "wildcard listen needs advertise"
    );
    let bad_transport: RegistrarConfig =
        toml::from_str("[enrp]\nenabled = true\nlisten = \"127.0.0.1:9901\"\ntransport = \"udp\"")
            .unwrap();
    assert!(bad_transport.validate().is_err());
    let bad_peer: RegistrarConfig = toml::from_str(
        "[enrp]\nenabled = true\nlisten = \"127.0.0.1:9901\"\npeers = [\"nowhere\"]",
    )
    .unwrap();
    assert!(bad_peer.validate().is_err());
    let fast: RegistrarConfig = toml::from_str(
        "[enrp]\nenabled = true\nadvertise = \"192.0.2.1:9901\"\npeers = [\"192.0.2.2:9901\"]\n\
         peer_heartbeat_cycle = \"100ms\"\nmax_time_last_heard = \"300ms\"\nmax_time_no_response = \"200ms\"",
    )
    .unwrap();
    fast.validate().unwrap();
    let core = fast
        .enrp
        .enrp_config(7, protocol::rserpool::Limits::default())
        .unwrap();
    assert_eq!(core.server_id, 7);
    assert_eq!(core.heartbeat_cycle.as_millis(), 100);
    assert_eq!(core.max_time_last_heard.as_millis(), 300);
    assert_eq!(core.max_time_no_response.as_millis(), 200);
    assert_eq!(core.static_peers, vec!["192.0.2.2:9901".parse().unwrap()]);
    let zero: RegistrarConfig = toml::from_str(
        "[enrp]\nenabled = true\nlisten = \"127.0.0.1:9901\"\ntakeover_expiry = \"0s\"",
    )
    .unwrap();
    assert!(zero.validate().is_err());
}

#[test]
fn enrp_auth_key_comes_from_a_file_and_weak_or_ambiguous_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("enrp.key");
    std::fs::write(&key_file, "0123456789abcdef0123\n").unwrap();
    let old_key_file = dir.path().join("enrp-old.key");
    std::fs::write(&old_key_file, "an older pool key, still accepted").unwrap();
    let mut settings = registrar::config::EnrpSettings {
        auth_key_file: key_file.display().to_string(),
        auth_key_id: 2,
        auth_accept_key_files: vec![format!("1:{}", old_key_file.display())],
        ..Default::default()
    };
    let auth = settings
        .enrp_config(7, Default::default())
        .unwrap()
        .auth
        .expect("keyed");
    assert_eq!(
        auth.key, b"0123456789abcdef0123",
        "trailing newline dropped"
    );
    assert_eq!(auth.key_id, 2);
    assert_eq!(auth.accepted_keys[0].0, 1);
    assert!(!auth.accept_unsigned);
    // The key never shows in debug output.
    assert!(!format!("{auth:?}").contains("0123456789"));

    settings.auth_key = "an inline key as well".into();
    assert!(settings.enrp_config(7, Default::default()).is_err(), "both");
    settings.auth_key_file = String::new();
    settings.auth_key = "short".into();
    assert!(
        settings.enrp_config(7, Default::default()).is_err(),
        "short key"
    );
    settings.auth_key = String::new();
    assert!(
        settings.enrp_config(7, Default::default()).is_err(),
        "accepted keys without a signing key"
    );
    settings.auth_accept_key_files.clear();
    assert!(
        settings
            .enrp_config(7, Default::default())
            .unwrap()
            .auth
            .is_none()
    );
}

#[test]
fn membership_authority_keys_are_read_per_pool() {
    use protocol::signing::SigningKey;
    use protocol::signing::pkcs8_public_pem;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    let mut files = Vec::new();
    for (name, key) in [("old.pub", &old), ("new.pub", &new)] {
        let path = dir.path().join(name);
        std::fs::write(&path, pkcs8_public_pem(&key.verifying_key())).unwrap();
        files.push(format!("{:?}", path.display().to_string()));
    }
    let text = format!(
        "[membership.authority_key_files]\nbilling = [{}]",
        files.join(", ")
    );
    let config: RegistrarConfig = toml::from_str(&text).unwrap();
    config.validate().unwrap();
    let server = config.server_config(1).unwrap();
    let keys = &server.membership_authorities[&"billing".into()];
    assert_eq!(keys, &vec![old.verifying_key(), new.verifying_key()]);

    let missing: RegistrarConfig = toml::from_str(
        "[membership.authority_key_files]\nbilling = [\"/nonexistent/authority.pub\"]",
    )
    .unwrap();
    assert!(missing.validate().is_err());
    let empty: RegistrarConfig =
        toml::from_str("[membership.authority_key_files]\nbilling = []").unwrap();
    assert!(empty.validate().is_err());
}

/// Kernel SCTP (what Debian's RSPLIB speaks) is a listener of its own, off
/// by default; it may be the only one, and ENRP may run over it.
#[test]
fn kernel_sctp_listener_and_enrp_transport_are_accepted() {
    assert!(RegistrarConfig::default().listen.kernel_sctp.is_empty());
    let only_kernel: RegistrarConfig = toml::from_str(
        "[listen]\ntcp = []\nsctp_over_udp = []\nkernel_sctp = \"192.0.2.1:3863\"\n\
         [enrp]\nenabled = true\nlisten = \"192.0.2.1:9901\"\ntransport = \"kernel-sctp\"",
    )
    .unwrap();
    only_kernel
        .validate()
        .expect("kernel SCTP alone is a listener");
    let none: RegistrarConfig =
        toml::from_str("[listen]\ntcp = []\nsctp_over_udp = []\nkernel_sctp = []").unwrap();
    assert!(none.validate().is_err(), "no ASAP listener at all");
    let bad: RegistrarConfig = toml::from_str(
        "[enrp]\nenabled = true\nlisten = \"192.0.2.1:9901\"\ntransport = \"kernel\"",
    )
    .unwrap();
    assert!(bad.validate().is_err());
}

/// `enrp.peers` takes `HOST:PORT` and, for SCTP over UDP,
/// `HOST:SCTP_PORT/udp=UDP_PORT`; anything else is a clear error.
#[test]
fn enrp_peers_may_give_their_udp_encapsulation_port() {
    use registrar::config::parse_enrp_peer;
    let plain = parse_enrp_peer("192.0.2.2:9901").unwrap();
    assert_eq!(plain, ("192.0.2.2:9901".parse().unwrap(), None));
    let split = parse_enrp_peer("192.0.2.2:9901/udp=9899").unwrap();
    assert_eq!(split, ("192.0.2.2:9901".parse().unwrap(), Some(9899)));
    for bad in [
        "192.0.2.2:9901/udp=",
        "192.0.2.2:9901/udp=0",
        "192.0.2.2:9901/tcp=9899",
        "192.0.2.2/udp=9899",
    ] {
        let error = parse_enrp_peer(bad).unwrap_err().to_string();
        assert!(error.contains("enrp.peers"), "{bad}: {error}");
    }
    let mut settings = registrar::config::EnrpSettings {
        peers: vec!["192.0.2.2:9901/udp=9899".into(), "192.0.2.3:9901".into()],
        ..Default::default()
    };
    let ports = settings.peer_udp_ports().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[&"192.0.2.2:9901".parse().unwrap()], 9899);
    // Over kernel SCTP there is no encapsulation port to give.
    settings.enabled = true;
    settings.listen = "192.0.2.1:9901".into();
    settings.transport = "kernel-sctp".into();
    let config = registrar::config::RegistrarConfig {
        enrp: settings,
        ..Default::default()
    };
    let error = format!("{:#}", config.validate().unwrap_err());
    assert!(error.contains("/udp="), "{error}");
}
