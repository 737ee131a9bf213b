//! Durations with units in configuration files (`cookie_timeout = "2s"`,
//! `keep_alive_period = "200ms"`, parsed by humantime), and the legacy
//! spelling with the unit in the key (`cookie_timeout_ms = 2000`,
//! `template_lifetime_secs = 1800`), still accepted: [`upgrade_legacy_keys`]
//! rewrites it before serde sees the file, so the config structs only know
//! the new keys, and says what to write instead. A file with both
//! spellings of one key is refused: which one wins would be a guess.
//!
//! Fields: `#[serde(with = "daemon_common::duration::serde")] pub x: Duration`.

use anyhow::bail;

/// The serde `with` module for a `Duration` field: "1m 30s", "200ms", ...;
/// serialises the same way (show-config prints "5s", not 5000).
pub use humantime_serde as serde;

/// Parses a command-line duration with its unit ("30s", "1m 30s", "200ms"),
/// for clap's `value_parser`.
pub fn parse(text: &str) -> Result<std::time::Duration, String> {
    humantime_serde::re::humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration with a unit such as 30s or 200ms: {e}"))
}

/// Rewrites every integer key ending in `_ms` or `_secs`, in `table` and
/// its sub-tables, to the key without the suffix and a string with the
/// unit (`x_ms = 200` becomes `x = "200ms"`). Returns one warning per
/// rewritten key, naming the new key (`prefix` is the table's path, "" at
/// the top). Errors when a table has both spellings of a key.
///
/// Only for files whose every `_ms`/`_secs` key is a duration with a
/// unit-bearing new name (the daemons that call this have no other).
pub fn upgrade_legacy_keys(table: &mut toml::Table, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    let legacy: Vec<(String, String, String)> = table
        .iter()
        .filter_map(|(key, value)| {
            let value = value.as_integer()?;
            let (stem, unit) = if let Some(stem) = key.strip_suffix("_ms") {
                (stem, "ms")
            } else if let Some(stem) = key.strip_suffix("_secs") {
                (stem, "s")
            } else {
                return None;
            };
            Some((key.clone(), stem.to_string(), format!("{value}{unit}")))
        })
        .collect();
    for (old, new, value) in legacy {
        if table.contains_key(&new) {
            bail!(
                "`{prefix}{old}` and `{prefix}{new}` are the same setting: keep only `{prefix}{new}`"
            );
        }
        table.remove(&old);
        warnings.push(format!(
            "config key `{prefix}{old}` is deprecated: write `{prefix}{new} = \"{value}\"`"
        ));
        table.insert(new, toml::Value::String(value));
    }
    for (key, value) in table.iter_mut() {
        if let toml::Value::Table(sub) = value {
            warnings.extend(upgrade_legacy_keys(sub, &format!("{prefix}{key}."))?);
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(::serde::Deserialize, ::serde::Serialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Timers {
        #[serde(with = "super::serde")]
        cookie_timeout: Duration,
        #[serde(with = "super::serde")]
        lifetime: Duration,
    }

    #[derive(::serde::Deserialize, Debug)]
    struct File {
        timers: Timers,
    }

    fn parse(text: &str) -> anyhow::Result<(File, Vec<String>)> {
        let mut table: toml::Table = text.parse()?;
        let warnings = upgrade_legacy_keys(&mut table, "")?;
        Ok((table.try_into()?, warnings))
    }

    #[test]
    fn units_and_legacy_keys_give_the_same_durations() {
        let (new, warnings) =
            parse("[timers]\ncookie_timeout = \"2s\"\nlifetime = \"30m\"\n").unwrap();
        assert!(warnings.is_empty());
        let (old, warnings) =
            parse("[timers]\ncookie_timeout_ms = 2000\nlifetime_secs = 1800\n").unwrap();
        assert_eq!(new.timers.cookie_timeout, Duration::from_secs(2));
        assert_eq!(old.timers.cookie_timeout, Duration::from_secs(2));
        assert_eq!(old.timers.lifetime, new.timers.lifetime);
        assert_eq!(warnings.len(), 2);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("`timers.cookie_timeout = \"2000ms\"`")),
            "{warnings:?}"
        );
        let shown = toml::to_string(&new.timers).unwrap();
        assert!(shown.contains("cookie_timeout = \"2s\""), "{shown}");
    }

    #[test]
    fn both_spellings_or_no_unit_are_errors() {
        let both = parse(
            "[timers]\ncookie_timeout = \"2s\"\ncookie_timeout_ms = 2000\nlifetime = \"1s\"\n",
        );
        let error = format!("{:#}", both.unwrap_err());
        assert!(
            error.contains("keep only `timers.cookie_timeout`"),
            "{error}"
        );
        // A bare number has no unit: refused rather than guessed.
        assert!(parse("[timers]\ncookie_timeout = 2\nlifetime = \"1s\"\n").is_err());
        assert!(parse("[timers]\ncookie_timeout = \"2 fortnights\"\nlifetime = \"1s\"\n").is_err());
    }
}
