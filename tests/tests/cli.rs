//! The three daemons share one command-line style (README "Running the
//! daemons"): `-c/--config FILE` with a `POOLFLOW_<DAEMON>_CONFIG` variable,
//! `--log-format text|json`, `show-config` printing the effective
//! configuration as TOML, and the same signals (SIGTERM/SIGINT stop
//! gracefully, SIGHUP never kills). These run the real binaries.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use poolflow_tests::pool::{LocalPool, terminate, wait_output, wait_stored};
use poolflow_tests::{run_ok, workspace_bin};

/// The daemon commands that take a configuration, and their variable.
const DAEMONS: &[(&str, &str, &str)] = &[
    ("registrar", "run", "POOLFLOW_REGISTRAR_CONFIG"),
    ("collector", "run", "POOLFLOW_COLLECTOR_CONFIG"),
    ("exporter", "stream", "POOLFLOW_EXPORTER_CONFIG"),
    ("exporter", "relay", "POOLFLOW_EXPORTER_CONFIG"),
];

fn command(bin: &str) -> Command {
    let mut cmd = Command::new(workspace_bin(bin));
    for (_, _, var) in DAEMONS {
        cmd.env_remove(var);
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

#[test]
fn every_daemon_has_the_common_flags_and_show_config() {
    for (bin, sub, var) in DAEMONS {
        let help = run_ok(command(bin).args([sub, "-h"]));
        for flag in [
            "-c, --config <FILE>",
            "--log-format <LOG_FORMAT>",
            "[possible values: text, json]",
        ] {
            assert!(
                help.contains(flag),
                "{bin} {sub} --help lacks {flag:?}:\n{help}"
            );
        }
        assert!(
            help.contains(&format!("[env: {var}=")),
            "{bin} {sub} --help lacks {var}:\n{help}"
        );
        let top = run_ok(command(bin).arg("--help"));
        assert!(
            top.contains("show-config"),
            "{bin} --help lacks show-config:\n{top}"
        );
    }
}

fn show_config(cmd: &mut Command) -> toml::Table {
    let out = run_ok(cmd);
    out.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("show-config output is not TOML ({e}):\n{out}"))
}

#[test]
fn show_config_prints_file_and_flags_as_toml() {
    let dir = tempfile::tempdir().unwrap();

    // Registrar: the file through the variable, a flag on top.
    let registrar_file = dir.path().join("registrar.toml");
    std::fs::write(
        &registrar_file,
        "server_id = 77\n[log]\nformat = \"text\"\n",
    )
    .unwrap();
    let registrar = show_config(
        command("registrar")
            .env("POOLFLOW_REGISTRAR_CONFIG", &registrar_file)
            .args(["show-config", "--log-format", "json"]),
    );
    assert_eq!(registrar["server_id"].as_integer(), Some(77), "{registrar}");
    assert_eq!(
        registrar["log"]["format"].as_str(),
        Some("json"),
        "{registrar}"
    );
    // A listener is off with [] in the file or --no-X on the command line,
    // as in the collector.
    std::fs::write(&registrar_file, "[listen]\ntcp = []\n").unwrap();
    let registrar = show_config(
        command("registrar")
            .args(["show-config", "-c"])
            .arg(&registrar_file)
            .arg("--no-status"),
    );
    assert_eq!(registrar["listen"]["tcp"].as_str(), Some(""), "{registrar}");
    assert_eq!(
        registrar["listen"]["status"].as_str(),
        Some(""),
        "{registrar}"
    );
    assert_eq!(
        registrar["listen"]["sctp_over_udp"].as_str(),
        Some("0.0.0.0:3863"),
        "{registrar}"
    );
    for bin in ["registrar", "collector"] {
        let help = run_ok(command(bin).args(["run", "-h"]));
        assert!(
            help.contains("--no-tcp"),
            "{bin} run -h lacks --no-tcp:\n{help}"
        );
    }

    // Collector: no file (the defaults), then a file with a flag on top.
    let defaults = show_config(command("collector").arg("show-config"));
    assert_eq!(defaults["log_format"].as_str(), Some("text"), "{defaults}");
    assert_eq!(
        defaults["database"].as_str(),
        Some("collector.sqlite"),
        "{defaults}"
    );
    let collector_file = dir.path().join("collector.toml");
    std::fs::write(
        &collector_file,
        "database = \"/var/lib/x.sqlite\"\nudp_listen = []\n",
    )
    .unwrap();
    let collector = show_config(
        command("collector")
            .args(["show-config", "-c"])
            .arg(&collector_file)
            .args(["--log-format", "json"]),
    );
    assert_eq!(
        collector["database"].as_str(),
        Some("/var/lib/x.sqlite"),
        "{collector}"
    );
    assert_eq!(
        collector["udp_listen"].as_array().map(Vec::len),
        Some(0),
        "{collector}"
    );
    assert_eq!(
        collector["log_format"].as_str(),
        Some("json"),
        "{collector}"
    );

    // Exporter: the file through the variable, the flag on top, the
    // defaults of the keys the file leaves out.
    let exporter_file = dir.path().join("exporter.toml");
    write_exporter_config(
        &exporter_file,
        4242,
        &dir.path().join("e.state"),
        "127.0.0.1:9",
    );
    let exporter = show_config(
        command("exporter")
            .env("POOLFLOW_EXPORTER_CONFIG", &exporter_file)
            .args(["show-config", "--log-format", "json"]),
    );
    assert_eq!(
        exporter["exporter_id"].as_integer(),
        Some(4242),
        "{exporter}"
    );
    assert_eq!(exporter["log_format"].as_str(), Some("json"), "{exporter}");
    assert_eq!(
        exporter["timers"]["cookie_timeout"].as_str(),
        Some("5s"),
        "{exporter}"
    );

    // A legacy key with the unit in its name still works, is shown under
    // its new name and is warned about; both spellings at once are refused.
    let legacy_file = dir.path().join("legacy.toml");
    let base = std::fs::read_to_string(&exporter_file).unwrap();
    std::fs::write(
        &legacy_file,
        format!("{base}[timers]\ncookie_timeout_ms = 1500\n"),
    )
    .unwrap();
    let out = command("exporter")
        .args(["show-config", "-c"])
        .arg(&legacy_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(
        shown["timers"]["cookie_timeout"].as_str(),
        Some("1s 500ms"),
        "{shown}"
    );
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains(
            "`timers.cookie_timeout_ms` is deprecated: write `timers.cookie_timeout = \"1500ms\"`"
        ),
        "{warning}"
    );
    std::fs::write(
        &legacy_file,
        format!("{base}[timers]\ncookie_timeout_ms = 1500\ncookie_timeout = \"2s\"\n"),
    )
    .unwrap();
    let both = command("exporter")
        .args(["show-config", "-c"])
        .arg(&legacy_file)
        .output()
        .unwrap();
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("keep only `timers.cookie_timeout`"));

    // The collector too: a legacy key is upgraded with a warning, a flag
    // with a unit wins over the file.
    std::fs::write(&collector_file, "template_lifetime_secs = 60\n[pool]\nhandle = \"p\"\nregistrars = [\"tcp:127.0.0.1:9\"]\nregistration_lifetime_ms = 90000\n").unwrap();
    let out = command("collector")
        .args(["show-config", "-c"])
        .arg(&collector_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(shown["template_lifetime"].as_str(), Some("1m"), "{shown}");
    assert_eq!(
        shown["pool"]["registration_lifetime"].as_str(),
        Some("1m 30s"),
        "{shown}"
    );
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("`pool.registration_lifetime_ms` is deprecated"),
        "{warning}"
    );
    let shown = show_config(
        command("collector")
            .args(["show-config", "-c"])
            .arg(&collector_file)
            .args(["--template-lifetime", "10m"]),
    );
    assert_eq!(shown["template_lifetime"].as_str(), Some("10m"), "{shown}");

    // The registrar too: `_ms` keys and flags are upgraded with a warning
    // naming the new spelling, and shown with their unit.
    std::fs::write(
        &registrar_file,
        "[timers]\nkeep_alive_period_ms = 200\n[enrp]\ntakeover_expiry_ms = 1500\n",
    )
    .unwrap();
    let out = command("registrar")
        .args(["show-config", "-c"])
        .arg(&registrar_file)
        .args(["--keep-alive-timeout-ms", "300"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(
        shown["timers"]["keep_alive_period"].as_str(),
        Some("200ms"),
        "{shown}"
    );
    assert_eq!(
        shown["timers"]["keep_alive_timeout"].as_str(),
        Some("300ms"),
        "{shown}"
    );
    assert_eq!(
        shown["enrp"]["takeover_expiry"].as_str(),
        Some("1s 500ms"),
        "{shown}"
    );
    let warning = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "`timers.keep_alive_period_ms` is deprecated: write `timers.keep_alive_period = \"200ms\"`",
        "`enrp.takeover_expiry_ms` is deprecated",
        "--keep-alive-timeout-ms is deprecated: use --keep-alive-timeout 300ms",
    ] {
        assert!(warning.contains(expected), "{expected} not in {warning}");
    }
    let shown =
        show_config(command("registrar").args(["show-config", "--keep-alive-period", "1m 30s"]));
    assert_eq!(
        shown["timers"]["keep_alive_period"].as_str(),
        Some("1m 30s"),
        "{shown}"
    );

    // A bad value is refused, not defaulted.
    let bad = command("collector")
        .args(["show-config", "--log-format", "xml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

fn write_exporter_config(path: &Path, exporter_id: u32, state: &Path, registrar: &str) {
    std::fs::write(
        path,
        format!(
            "exporter_id = {exporter_id}\npool_handle = \"billing-collectors\"\n\
             registrars = [\"sctp:{registrar}\"]\nstate_file = \"{}\"\n",
            state.display()
        ),
    )
    .unwrap();
}

/// SIGHUP is logged as not supported by the registrar (which has no
/// reload) and does not stop it; SIGTERM then stops it with exit 0.
#[test]
fn registrar_ignores_sighup_and_stops_on_sigterm() {
    let mut child = command("registrar")
        .args([
            "run",
            "--tcp",
            "127.0.0.1:0",
            "--sctp-over-udp",
            "",
            "--status",
            "",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = String::new();
    let wait_for = |needle: &str, log: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !log.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                }
                Err(_) => panic!("no {needle:?} within 60 s:\n{log}"),
            }
        }
    };
    // Logged after the handlers are installed.
    wait_for("registration_networks", &mut log);
    signal(child.id(), "HUP");
    wait_for("not supported", &mut log);
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the registrar:\n{log}"
    );
    signal(child.id(), "TERM");
    wait_for("stopped", &mut log);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "registrar still running 60 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "registrar exited with {status}:\n{log}");
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `exporter stream` stops gracefully on SIGTERM (not only Ctrl-C): the
/// input ends, the records sent are acknowledged, the state file is
/// written, exit 0; and the audit finds no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_stream_stops_gracefully_on_sigterm() {
    let pool = LocalPool::start(&[1]).await;
    let config = pool.exporter_config(31, "", "");
    let state = pool.path("exporter-31.state");
    // Far more records than it can send before the signal.
    let mut stream = pool.stream(&config, 10_000_000, 2_000);
    wait_stored(&[pool.store(0)], 31, 500).await;
    terminate(&mut stream);
    let (status, log) =
        tokio::task::spawn_blocking(move || wait_output(stream, Duration::from_secs(90)))
            .await
            .unwrap();
    assert!(
        status.success(),
        "exporter stream exited with {status} on SIGTERM:\n{log}"
    );
    assert!(log.contains("all acknowledged"), "{log}");
    assert!(
        !log.contains("10000000 records in"),
        "the signal did not end the input:\n{log}"
    );
    let saved = std::fs::read_to_string(&state).expect("state file written");
    assert!(!saved.is_empty());
    let report = pool.finish(false).await;
    assert!(report.passed(), "audit after the SIGTERM stop: {report:?}");
}
