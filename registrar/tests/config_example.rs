//! The annotated example configuration stays in step with the code.

use registrar::RegistrarConfig;

#[test]
fn example_config_parses_and_documents_the_defaults() {
    let example: RegistrarConfig =
        toml::from_str(include_str!("../../deploy/registrar.toml")).expect("example parses");
    example.validate().unwrap();
    assert_eq!(example, RegistrarConfig::default());
}

#[test]
fn unknown_keys_and_bad_values_are_rejected() {
    assert!(toml::from_str::<RegistrarConfig>("[timers]\nkeep_alive_periode_ms = 5").is_err());
    let zero: RegistrarConfig = toml::from_str("[timers]\nkeep_alive_timeout_ms = 0").unwrap();
    assert!(zero.validate().is_err());
    let bad_addr: RegistrarConfig = toml::from_str("[listen]\ntcp = \"nowhere\"").unwrap();
    assert!(bad_addr.validate().is_err());
    let sub_second: RegistrarConfig =
        toml::from_str("[timers]\nkeep_alive_period_ms = 100\nkeep_alive_timeout_ms = 50").unwrap();
    let server = sub_second.server_config(1);
    assert_eq!(server.keep_alive_period.as_millis(), 100);
    assert_eq!(server.keep_alive_timeout.as_millis(), 50);
}
