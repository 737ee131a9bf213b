//! Closed pools end to end (docs/security.md), with real processes: a
//! registrar whose billing pool lists two membership authority keys (a
//! rotation in progress), a primary collector certified by the old key, a
//! backup certified by the new one, and two hostile collectors with the
//! highest priority: one without any proof, one with a certificate it
//! issued itself. The hostile ones never get into the handlespace (`registrar
//! dump` shows the refusals by reason and only the two members), and the
//! exporter's billing stream goes to the members only: the audit over their
//! two stores finds every record.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector::audit::{AuditOptions, Verdict};
use poolflow_tests::collector_config::{Listener, PoolCollector};
use poolflow_tests::{free_tcp_port, free_udp_port, run_ok, workspace_bin};
use protocol::signing::{SigningKey, pkcs8_private_pem, pkcs8_public_pem};
use registrar::config::RegistrarConfig;
use registrar::driver::Registrar;
use registrar::server::Status;

const POOL: &str = "billing-collectors";
const COOKIE_KEY: &str = "a shared pool key for the tests";
const RECORDS: u64 = 20_000;
const RATE: u64 = 10_000;

/// Writes `key` as owner-only PKCS#8 PEM plus its public half; returns
/// (private, public) paths.
fn write_key(dir: &Path, name: &str, seed: u8) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let key = SigningKey::from_bytes(&[seed; 32]);
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&private, pkcs8_private_pem(&key)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&public, pkcs8_public_pem(&key.verifying_key())).unwrap();
    (private, public)
}

/// `registrar issue-member`: the operator path under test.
fn issue(dir: &Path, authority: &Path, member_pub: &Path, name: &str) -> PathBuf {
    let cert = run_ok(
        Command::new(workspace_bin("registrar"))
            .arg("issue-member")
            .arg("--authority-key")
            .arg(authority)
            .args(["--pool", POOL, "--days", "1", "--member-key"])
            .arg(member_pub),
    );
    let path = dir.join(format!("{name}.cert"));
    std::fs::write(&path, cert).unwrap();
    path
}

struct Collectors(Vec<Child>);

impl Drop for Collectors {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_collector(
    dir: &Path,
    name: &str,
    registrar: std::net::SocketAddr,
    priority: u32,
    membership: Option<(&Path, &Path)>,
) -> Child {
    let port = free_udp_port();
    let member = membership.map_or(String::new(), |(key, cert)| {
        format!(
            "member_key_file = \"{}\"\nmember_certificate_file = \"{}\"\n",
            key.display(),
            cert.display()
        )
    });
    let database = dir.join(format!("{name}.sqlite"));
    PoolCollector {
        handle: POOL,
        database: &database,
        listener: Listener::Sctp(port),
        registrars: &[format!("sctp:{registrar}")],
        priority,
        pool_keys: &format!("cookie_key = \"{COOKIE_KEY}\"\n{member}"),
    }
    .start(&dir.join(format!("{name}.toml")))
}

/// `registrar dump --json`, through the binary as an operator runs it.
fn dump(status: std::net::SocketAddr) -> Status {
    let json = run_ok(
        Command::new(workspace_bin("registrar"))
            .args(["dump", "--json", "--status"])
            .arg(status.to_string()),
    );
    serde_json::from_str(&json).expect("dump --json is a Status")
}

fn priorities(status: &Status) -> Vec<String> {
    let mut list: Vec<String> = status
        .pools
        .iter()
        .filter(|pool| pool.handle == POOL)
        .flat_map(|pool| pool.elements.iter().map(|pe| pe.policy.clone()))
        .collect();
    list.sort();
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_collectors_cannot_join_a_closed_pool_and_get_no_records() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (old_authority, old_pub) = write_key(d, "authority-old", 1);
    let (new_authority, new_pub) = write_key(d, "authority-new", 2);
    let (primary_key, primary_pub) = write_key(d, "primary", 3);
    let (backup_key, backup_pub) = write_key(d, "backup", 4);
    let (forger_authority, _) = write_key(d, "forger-authority", 5);
    let (forger_key, forger_pub) = write_key(d, "forger", 6);
    // Rotation: the primary's certificate is from the old authority key,
    // the backup's from the new one; the registrar lists both.
    let primary_cert = issue(d, &old_authority, &primary_pub, "primary");
    let backup_cert = issue(d, &new_authority, &backup_pub, "backup");
    let forged_cert = issue(d, &forger_authority, &forger_pub, "forger");

    let status_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut config = RegistrarConfig::default();
    config.listen.tcp = String::new();
    config.listen.sctp_over_udp = "127.0.0.1:0".into();
    config.listen.status = status_addr.to_string();
    config.timers.keep_alive_period = Duration::from_millis(200);
    config.timers.keep_alive_timeout = Duration::from_millis(300);
    config.membership.authority_key_files.insert(
        POOL.into(),
        vec![old_pub.display().to_string(), new_pub.display().to_string()],
    );
    config.validate().unwrap();
    let registrar = Registrar::start(config, None).await.unwrap();
    let registrar_addr = registrar.sctp_over_udp_addr.unwrap();

    let mut collectors = Collectors(Vec::new());
    collectors.0.push(start_collector(
        d,
        "primary",
        registrar_addr,
        100,
        Some((&primary_key, &primary_cert)),
    ));
    collectors.0.push(start_collector(
        d,
        "backup",
        registrar_addr,
        10,
        Some((&backup_key, &backup_cert)),
    ));
    collectors
        .0
        .push(start_collector(d, "hostile", registrar_addr, 1000, None));
    collectors.0.push(start_collector(
        d,
        "forger",
        registrar_addr,
        1000,
        Some((&forger_key, &forged_cert)),
    ));

    // Both members in, both hostile ones refused (by reason), nobody else.
    let start = Instant::now();
    let status = loop {
        let status = tokio::task::spawn_blocking(move || dump(status_addr))
            .await
            .unwrap();
        let rejects = &status.counters.registration_rejects;
        if status.element_count == 2
            && rejects.get("no_membership_proof").is_some()
            && rejects.get("membership_unknown_authority").is_some()
        {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pool never settled: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        priorities(&status),
        vec!["Priority { priority: 10 }", "Priority { priority: 100 }"],
        "only the members are registered: {status:?}"
    );

    // The billing stream: the exporter resolves the pool and must end up
    // at members only; every record acknowledged, and all of them in the
    // members' stores.
    let exporter_config = d.join("exporter.toml");
    std::fs::write(
        &exporter_config,
        format!(
            r#"exporter_id = 7
pool_handle = "{POOL}"
registrars = ["sctp:{registrar_addr}"]
state_file = "{state}"
[buffer]
spill_dir = "{spill}"
[timers]
cookie_timeout_ms = 1000
retry_interval_ms = 200
connect_timeout_ms = 1000
cache_lifetime_ms = 500
registrar_request_timeout_ms = 1000
"#,
            state = d.join("exporter.state").display(),
            spill = d.join("spill").display(),
        ),
    )
    .unwrap();
    let exporter = Command::new(workspace_bin("exporter"))
        .args(["stream", "--config"])
        .arg(&exporter_config)
        .args(["--records", &RECORDS.to_string()])
        .args(["--rate", &RATE.to_string()])
        .args(["--exit-drain-timeout-secs", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || exporter.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "exporter failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Still only the members, and the refusals kept coming only from the
    // hostile ones (no member was ever refused).
    let status = tokio::task::spawn_blocking(move || dump(status_addr))
        .await
        .unwrap();
    assert_eq!(status.element_count, 2, "{status:?}");
    assert!(
        status
            .counters
            .registration_rejects
            .keys()
            .all(|reason| reason == "no_membership_proof"
                || reason == "membership_unknown_authority"),
        "{:?}",
        status.counters.registration_rejects
    );

    // Graceful stop of the members (deregistration with a proof), then the
    // audit over the members' stores only.
    for child in collectors.0.iter().take(2) {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
    }
    for child in collectors.0.iter_mut().take(2) {
        let exit = child.wait().unwrap();
        assert!(exit.success(), "member collector exited with {exit}");
    }
    // Both left with a signed Deregistration, accepted.
    let status = tokio::task::spawn_blocking(move || dump(status_addr))
        .await
        .unwrap();
    assert_eq!(status.counters.deregistrations, 2, "{status:?}");
    assert!(status.counters.deregistration_rejects.is_empty());
    registrar.stop().await;
    let report = collector::audit::run(&AuditOptions {
        databases: vec![d.join("primary.sqlite"), d.join("backup.sqlite")],
        exporter: None,
        domain: None,
        list_limit: 100,
        progress: false,
        ..AuditOptions::default()
    })
    .unwrap();
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.failures);
    assert_eq!(
        report.totals.records_present, RECORDS,
        "every record present"
    );
    assert_eq!(report.totals.missing_records, 0);
}

/// Certificate renewal without downtime: a member's certificate is
/// reissued by the new authority key and the collector reloaded (SIGHUP);
/// it re-registers at once with the new proof and never leaves the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reissued_certificate_is_used_after_sighup() {
    use protocol::signing::{key_id, verifying_key_from_pem};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (old_authority, old_pub) = write_key(d, "authority-old", 1);
    let (new_authority, new_pub) = write_key(d, "authority-new", 2);
    let (member_key, member_pub) = write_key(d, "member", 3);
    let cert = issue(d, &old_authority, &member_pub, "member");
    let id_of = |path: &Path| {
        key_id(&verifying_key_from_pem(&std::fs::read_to_string(path).unwrap()).unwrap())
    };
    let (old_id, new_id) = (id_of(&old_pub), id_of(&new_pub));

    let status_addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut config = RegistrarConfig::default();
    config.listen.tcp = String::new();
    config.listen.sctp_over_udp = "127.0.0.1:0".into();
    config.listen.status = status_addr.to_string();
    config.membership.authority_key_files.insert(
        POOL.into(),
        vec![old_pub.display().to_string(), new_pub.display().to_string()],
    );
    let registrar = Registrar::start(config, None).await.unwrap();
    let registrar_addr = registrar.sctp_over_udp_addr.unwrap();
    let mut collectors = Collectors(vec![start_collector(
        d,
        "member",
        registrar_addr,
        100,
        Some((&member_key, &cert)),
    )]);

    let authority_of = |status: &Status| {
        status
            .pools
            .iter()
            .flat_map(|pool| pool.elements.iter())
            .map(|pe| pe.membership_authority)
            .collect::<Vec<_>>()
    };
    let wait_for_authority = |id: u32| async move {
        let start = Instant::now();
        loop {
            let status = tokio::task::spawn_blocking(move || dump(status_addr))
                .await
                .unwrap();
            if authority_of(&status) == vec![Some(id)] {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "never registered with authority {id:#010x}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_for_authority(old_id).await;

    // Reissue with the new authority key in place, then reload.
    issue(d, &new_authority, &member_pub, "member");
    let pid = collectors.0[0].id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_for_authority(new_id).await;
    assert_eq!(
        status.counters.registrations, 1,
        "re-registered, never left"
    );
    assert!(status.counters.reregistrations >= 1);
    assert!(status.counters.registration_rejects.is_empty());

    let child = &mut collectors.0[0];
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    registrar.stop().await;
}
