//! IPFIX over TLS (RFC 7011 section 11) into a real collector process:
//! Debian's `openssl s_client`, a TLS client nobody here wrote, checks the
//! collector's certificate against the test CA and pipes IPFIX bytes made by
//! our encoder through the TLS session; `exporter generate --transport tls`
//! sends synthetic records; mutual authentication refuses (and counts) a
//! client without a certificate from the configured CA; an exporter that
//! trusts another CA fails with a clear error. Certificates are made by
//! `openssl` in a temporary directory.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use collector::query::{self, Filter, Format};
use collector::store::Store;
use poolflow_tests::{free_tcp_port, require_tool, workspace_bin};
use protocol::ipfix::MessageWriter;
use protocol::ipfix::flow::{FlowRecord, flow_template};

/// Common name of the collector's certificate, looked for in s_client's
/// report of the peer certificate.
const COLLECTOR_CN: &str = "poolflow-test-collector";

/// A test PKI: a CA, a collector certificate (subjectAltName 127.0.0.1 and
/// localhost) and an exporter client certificate signed by it, and a
/// second CA that signed nothing of ours.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(openssl: &Path, args: &[&str], dir: &Path) {
    let out = Command::new(openssl)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA (P-256 key): `openssl req -x509` marks it CA:TRUE.
fn make_ca(tool: &Path, dir: &Path, name: &str) -> PathBuf {
    let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
    openssl(
        tool,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
        dir,
    );
    dir.join(cert)
}

/// A leaf certificate signed by `ca` with the given extensions.
fn make_leaf(tool: &Path, dir: &Path, ca: &str, name: &str, cn: &str, extensions: &str) {
    let (key, csr, cert, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    openssl(
        tool,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
        dir,
    );
    std::fs::write(dir.join(&ext), extensions).unwrap();
    openssl(
        tool,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
        dir,
    );
    set_mode(&dir.join(key), 0o600);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn make_pki(tool: &Path, dir: &Path) -> Pki {
    let ca = make_ca(tool, dir, "ca");
    let other_ca = make_ca(tool, dir, "other-ca");
    make_leaf(
        tool,
        dir,
        "ca",
        "collector",
        COLLECTOR_CN,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    make_leaf(
        tool,
        dir,
        "ca",
        "exporter",
        "poolflow-test-exporter",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    );
    Pki {
        ca,
        other_ca,
        server_cert: dir.join("collector.pem"),
        server_key: dir.join("collector.key"),
        client_cert: dir.join("exporter.pem"),
        client_key: dir.join("exporter.key"),
    }
}

/// A `collector run` process with one TLS listener and a metrics endpoint.
struct Collector {
    child: Child,
    tls: SocketAddr,
    metrics: SocketAddr,
    database: PathBuf,
    log: PathBuf,
}

impl Collector {
    fn start(dir: &Path, pki: &Pki, mutual: bool) -> Collector {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let database = dir.join("collector.sqlite");
        let client_ca = if mutual {
            format!("client_ca_file = \"{}\"\n", pki.ca.display())
        } else {
            String::new()
        };
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "database = \"{}\"\nudp_listen = []\ntcp_listen = []\nsctp_listen = []\n\
                 tls_listen = [\"127.0.0.1:0\"]\nmetrics_listen = \"{metrics}\"\n\
                 [tls]\ncertificate_file = \"{}\"\nprivate_key_file = \"{}\"\n{client_ca}",
                database.display(),
                pki.server_cert.display(),
                pki.server_key.display(),
            ),
        )
        .unwrap();
        let log = dir.join("collector.log");
        let mut child = Command::new(workspace_bin("collector"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting the collector");
        // It prints "listening tls ADDR" once the listener is bound.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("listening tls ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let tls = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "collector did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Collector {
            child,
            tls,
            metrics,
            database,
            log,
        }
    }

    fn metrics_text(&self) -> String {
        let mut stream = TcpStream::connect(self.metrics).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    /// Waits (bounded) until the metric reaches `at_least`; returns it.
    fn wait_metric(&self, selector: &str, at_least: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = metric(&self.metrics_text(), selector);
            if value >= at_least {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{selector} is {value}, expected {at_least}; log: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (graceful: commits and closes the store), then the stored
    /// records as `collector query` JSON rows.
    fn stop_and_query(mut self) -> Vec<serde_json::Value> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "collector did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        let store = Store::open_read_only(&self.database).unwrap();
        let mut out = Vec::new();
        query::run(&store, &Filter::default(), Format::Json, &mut out).unwrap();
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metric's value from Prometheus text, `0` when absent.
fn metric(text: &str, selector: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == selector).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

const STORED: &str = "poolflow_collector_records_stored_total";

/// IPFIX messages (template first, then data) with synthetic records
/// `first..first + count`, as one byte stream for TCP.
fn ipfix_stream(first: u64, count: u64) -> Vec<u8> {
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut writer = MessageWriter::new(1400);
    let mut out = Vec::new();
    let (mut n, mut sequence, mut with_template) = (first, 0u32, true);
    while n < first + count {
        writer.start(1, (base / 1000) as u32, sequence);
        if with_template {
            writer.add_template(&flow_template()).unwrap();
            with_template = false;
        }
        while n < first + count && FlowRecord::synthetic(n, base).write_to(&mut writer).is_ok() {
            n += 1;
        }
        sequence = sequence.wrapping_add(writer.data_records());
        out.extend_from_slice(writer.finish());
    }
    out
}

/// The synthetic record numbers present, identified by their source port
/// (1024 + n for n < 60000) and checked against the record's other fields.
fn stored_record_numbers(rows: &[serde_json::Value]) -> BTreeSet<u64> {
    rows.iter()
        .map(|row| {
            let n = row["src_port"].as_u64().expect("src_port") - 1024;
            let expected = FlowRecord::synthetic(n, 0);
            assert_eq!(row["src_addr"], expected.source.to_string(), "{row}");
            assert_eq!(row["octets"], expected.octets, "{row}");
            assert_eq!(row["packets"], expected.packets, "{row}");
            n
        })
        .collect()
}

/// Pipes `input` through `openssl s_client` to the collector; returns its
/// exit success and its stdout and stderr together.
fn s_client(
    tool: &Path,
    collector: &Collector,
    pki: &Pki,
    dir: &Path,
    input: &[u8],
    cert: bool,
) -> (bool, String) {
    let input_file = dir.join("input.ipfix");
    std::fs::write(&input_file, input).unwrap();
    let mut cmd = Command::new(tool);
    cmd.arg("s_client")
        .args(["-connect", &collector.tls.to_string()])
        .arg("-CAfile")
        .arg(&pki.ca)
        // Check the certificate's IP subjectAltName too, and give up on
        // any verification failure instead of carrying on.
        .args(["-verify_ip", "127.0.0.1", "-verify_return_error"])
        // Binary input: no line may be taken for a command (Q, R, k...);
        // end of input closes the session (close_notify).
        .args(["-nocommands", "-no_ign_eof"]);
    if cert {
        cmd.arg("-cert")
            .arg(&pki.client_cert)
            .arg("-key")
            .arg(&pki.client_key);
    }
    let mut child = cmd
        .stdin(std::fs::File::open(&input_file).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting openssl s_client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("openssl s_client did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn openssl_s_client_verifies_the_collector_and_its_ipfix_is_stored() {
    let Some(tool) = require_tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&tool, dir.path());
    let collector = Collector::start(dir.path(), &pki, false);

    const RECORDS: u64 = 500;
    let (ok, output) = s_client(
        &tool,
        &collector,
        &pki,
        dir.path(),
        &ipfix_stream(0, RECORDS),
        false,
    );
    assert!(ok, "s_client failed: {output}");
    // s_client's own verdict on our certificate, checked against the CA.
    assert!(
        output.contains("Verify return code: 0 (ok)"),
        "certificate not verified: {output}"
    );
    assert!(
        output.contains(&format!("CN = {COLLECTOR_CN}"))
            || output.contains(&format!("CN={COLLECTOR_CN}")),
        "peer certificate is not the collector's: {output}"
    );
    collector.wait_metric(STORED, RECORDS as f64);
    let rows = collector.stop_and_query();
    assert_eq!(rows.len() as u64, RECORDS, "each record stored once");
    assert_eq!(
        stored_record_numbers(&rows),
        (0..RECORDS).collect::<BTreeSet<_>>()
    );
}

#[test]
fn mutual_authentication_refuses_and_counts_a_client_without_certificate() {
    let Some(tool) = require_tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&tool, dir.path());
    let collector = Collector::start(dir.path(), &pki, true);

    // No client certificate: the collector refuses the handshake, counts
    // it by reason, and stores nothing from that connection.
    let (_, output) = s_client(
        &tool,
        &collector,
        &pki,
        dir.path(),
        &ipfix_stream(0, 100),
        false,
    );
    collector.wait_metric(
        "poolflow_collector_tls_handshake_failures_total{reason=\"no_client_certificate\"}",
        1.0,
    );
    let log = collector.log_text();
    assert!(
        log.contains("TLS handshake refused") && log.contains("127.0.0.1"),
        "refusal not logged with the peer: {log}"
    );

    // With the exporter's certificate (signed by the CA) the same bytes,
    // other record numbers, get through.
    let (ok, with_cert) = s_client(
        &tool,
        &collector,
        &pki,
        dir.path(),
        &ipfix_stream(1000, 100),
        true,
    );
    assert!(ok, "s_client with a client certificate failed: {with_cert}");
    collector.wait_metric(STORED, 100.0);
    let rows = collector.stop_and_query();
    assert_eq!(
        stored_record_numbers(&rows),
        (1000..1100).collect::<BTreeSet<_>>(),
        "only the authenticated client's records are stored; refused s_client said: {output}"
    );
}

#[test]
fn exporter_generate_over_tls_stores_every_record() {
    let Some(tool) = require_tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&tool, dir.path());
    let collector = Collector::start(dir.path(), &pki, true);

    const RECORDS: u64 = 20_000;
    let out = Command::new(workspace_bin("exporter"))
        .args(["generate", "--to", &collector.tls.to_string()])
        .args(["--transport", "tls", "--records", &RECORDS.to_string()])
        .arg("--ca-file")
        .arg(&pki.ca)
        .arg("--client-cert")
        .arg(&pki.client_cert)
        .arg("--client-key")
        .arg(&pki.client_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "exporter generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    collector.wait_metric(STORED, RECORDS as f64);
    let rows = collector.stop_and_query();
    assert_eq!(rows.len() as u64, RECORDS, "each record stored once");
    assert_eq!(
        stored_record_numbers(&rows),
        (0..RECORDS).collect::<BTreeSet<_>>()
    );
}

#[test]
fn exporter_trusting_another_ca_fails_clearly_and_is_counted() {
    let Some(tool) = require_tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&tool, dir.path());
    let collector = Collector::start(dir.path(), &pki, false);

    let out = Command::new(workspace_bin("exporter"))
        .args(["generate", "--to", &collector.tls.to_string()])
        .args(["--transport", "tls", "--records", "100"])
        .arg("--ca-file")
        .arg(&pki.other_ca)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(
        stderr.contains("TLS handshake with") && stderr.contains("--ca-file"),
        "error does not say what failed: {stderr}"
    );
    assert!(
        stderr.contains("UnknownIssuer"),
        "error does not name the reason: {stderr}"
    );
    // The exporter's alert reaches the collector, which counts it.
    collector.wait_metric(
        "poolflow_collector_tls_handshake_failures_total{reason=\"alert_received\"}",
        1.0,
    );
    assert_eq!(metric(&collector.metrics_text(), STORED), 0.0);
}

#[test]
fn collector_refuses_a_private_key_others_can_read() {
    let Some(tool) = require_tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&tool, dir.path());
    set_mode(&pki.server_key, 0o644);
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"{}\"\nudp_listen = []\ntcp_listen = []\nsctp_listen = []\n\
             tls_listen = [\"127.0.0.1:0\"]\n[tls]\ncertificate_file = \"{}\"\n\
             private_key_file = \"{}\"\n",
            dir.path().join("c.sqlite").display(),
            pki.server_cert.display(),
            pki.server_key.display(),
        ),
    )
    .unwrap();
    let out = Command::new(workspace_bin("collector"))
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse to start: {stderr}");
    assert!(
        stderr.contains("collector.key") && stderr.contains("chmod 600"),
        "error does not name the key and the fix: {stderr}"
    );
}

/// Log text without the terminal colour codes the daemons' logs carry.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The framed TCP transport (pool user to pool element) over TLS at the
/// transport level: messages with their stream and PPID arrive in order
/// both ways; a client trusting another CA gets a clear connect error; with
/// mutual authentication a client without a certificate never yields an
/// association and is counted (the counter itself is checked through the
/// collector in `exporter_stream_over_framed_tls_...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_tcp_over_tls_carries_messages_and_checks_certificates() {
    use transport::tls::{ClientTlsFiles, ServerTlsFiles, StreamTls};
    use transport::{Config, Endpoint, Event, Message, TransportKind};
    let Some(tool) = require_tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&tool, dir.path());
    let server_tls = StreamTls::server(&ServerTlsFiles {
        certificate_file: pki.server_cert.clone(),
        private_key_file: pki.server_key.clone(),
        client_ca_file: Some(pki.ca.clone()),
    })
    .unwrap();
    let mut endpoint = Endpoint::bind(
        Config {
            transport: TransportKind::Tcp,
            tls: Some(server_tls),
            ..Config::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let addr = endpoint.local_addr();
    // The listener runs on its own, as in the collector: handshakes happen
    // inside accept().
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(association) = endpoint.accept().await {
            if accepted_tx.send(association).await.is_err() {
                return;
            }
        }
    });
    let client = |ca: &Path, identity: bool| Config {
        transport: TransportKind::Tcp,
        connect_timeout: Duration::from_secs(10),
        tls: Some(
            StreamTls::client(
                &ClientTlsFiles {
                    ca_file: ca.to_owned(),
                    identity: identity.then(|| (pki.client_cert.clone(), pki.client_key.clone())),
                },
                None,
            )
            .unwrap(),
        ),
        ..Config::default()
    };

    // A wrong CA: refused by the client, saying why.
    let Err(err) = transport::connect(client(&pki.other_ca, true), addr).await else {
        panic!("must not trust the collector");
    };
    let text = err.to_string();
    assert!(
        text.contains("TLS handshake with") && text.contains("UnknownIssuer"),
        "{text}"
    );

    // No client certificate: the server refuses; no association comes out
    // of accept, and the client's association ends.
    if let Ok(mut refused) = transport::connect(client(&pki.ca, false), addr).await {
        let _ = refused.recv().await; // Up (TLS 1.3: the client finished first)
        let _ = refused
            .send(Message::new(0, 1, b"must not arrive".to_vec()))
            .await;
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match refused.recv().await {
                    Some(Event::Down(_)) | Some(Event::Failed(_)) | None => break,
                    Some(_) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "refused association did not end");
    }

    // The real client: 500 messages each way, stream and PPID kept.
    let mut association = transport::connect(client(&pki.ca, true), addr)
        .await
        .unwrap();
    let mut accepted = tokio::time::timeout(Duration::from_secs(10), accepted_rx.recv())
        .await
        .expect("the authenticated client is accepted")
        .unwrap();

    const MESSAGES: usize = 500;
    let sender = association.sender();
    let send = tokio::spawn(async move {
        for i in 0..MESSAGES {
            let payload = format!("message {i}").into_bytes();
            sender
                .send(Message::new((i % 3) as u16, 7, payload))
                .await
                .unwrap();
        }
    });
    let mut received = 0;
    while received < MESSAGES {
        let event = tokio::time::timeout(Duration::from_secs(10), accepted.recv())
            .await
            .expect("messages keep coming")
            .expect("association open");
        if let Event::Message(m) = event {
            assert_eq!(m.payload, format!("message {received}").into_bytes());
            assert_eq!((m.stream, m.ppid), ((received % 3) as u16, 7));
            received += 1;
        }
    }
    send.await.unwrap();
    accepted
        .send(Message::new(1, 9, b"cookie".to_vec()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Event::Message(m)) = association.recv().await {
                return m;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (reply.stream, reply.ppid, &reply.payload[..]),
        (1, 9, &b"cookie"[..])
    );
}

/// The billing pool over TLS: a collector registered with framed TCP and
/// `framed_tcp_tls` (mutual authentication), `exporter stream` with `[tls]`;
/// the exporter exits 0 only when every record is acknowledged by a cookie,
/// and the audit finds each one stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_stream_over_framed_tls_delivers_every_record() {
    use collector::audit::{AuditOptions, Verdict};
    use registrar::config::RegistrarConfig;
    use registrar::driver::Registrar;
    let Some(tool) = require_tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&tool, dir.path());
    let mut config = RegistrarConfig::default();
    config.listen.tcp = String::new();
    config.listen.sctp_over_udp = "127.0.0.1:0".into();
    config.listen.status = String::new();
    let registrar = Registrar::start(config, None).await.unwrap();
    let registrar_addr = registrar.sctp_over_udp_addr.unwrap();

    let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let database = dir.path().join("c.sqlite");
    let collector_config = dir.path().join("c.toml");
    std::fs::write(
        &collector_config,
        format!(
            "database = \"{db}\"\nudp_listen = []\ntcp_listen = []\nsctp_listen = []\n\
             framed_tcp_listen = [\"127.0.0.1:{port}\"]\nframed_tcp_tls = true\n\
             metrics_listen = \"{metrics}\"\n\
             [tls]\ncertificate_file = \"{cert}\"\nprivate_key_file = \"{key}\"\n\
             client_ca_file = \"{ca}\"\n\
             [pool]\nhandle = \"tls-pool\"\nregistrars = [\"sctp:{registrar_addr}\"]\n\
             cookie_key = \"a shared pool key for the tests\"\n",
            db = database.display(),
            port = free_tcp_port(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
            ca = pki.ca.display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("c.log");
    let mut collector = Command::new(workspace_bin("collector"))
        .args(["run", "--config"])
        .arg(&collector_config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    const RECORDS: u64 = 10_000;
    let exporter_config = dir.path().join("e.toml");
    std::fs::write(
        &exporter_config,
        format!(
            "exporter_id = 7\npool_handle = \"tls-pool\"\nregistrars = [\"sctp:{registrar_addr}\"]\n\
             state_file = \"{state}\"\n[buffer]\nspill_dir = \"{spill}\"\n\
             [timers]\nretry_interval_ms = 200\nconnect_timeout_ms = 2000\ncache_lifetime_ms = 500\n\
             [tls]\nca_file = \"{ca}\"\ncertificate_file = \"{cert}\"\nprivate_key_file = \"{key}\"\n",
            state = dir.path().join("e.state").display(),
            spill = dir.path().join("spill").display(),
            ca = pki.ca.display(),
            cert = pki.client_cert.display(),
            key = pki.client_key.display(),
        ),
    )
    .unwrap();
    let exporter = Command::new(workspace_bin("exporter"))
        .args(["stream", "--config"])
        .arg(&exporter_config)
        .args(["--records", &RECORDS.to_string(), "--rate", "20000"])
        .args(["--exit-drain-timeout-secs", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut exporter = exporter;
    while exporter.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = exporter.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = exporter.wait_with_output().unwrap();
    let exporter_log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "exporter failed: {exporter_log}\ncollector: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Command::new("kill")
        .args(["-TERM", &collector.id().to_string()])
        .status()
        .unwrap();
    assert!(collector.wait().unwrap().success());
    registrar.stop().await;
    let collector_log = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
    assert!(
        !collector_log.contains("TLS handshake refused"),
        "the exporter's certificate was refused: {collector_log}"
    );
    assert!(
        collector_log.contains("TLS session established")
            && collector_log.contains("client_certificate=true"),
        "the records did not come over mutually authenticated TLS: {collector_log}"
    );
    let report = collector::audit::run(&AuditOptions {
        databases: vec![database],
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
        "every record stored"
    );
    assert_eq!(report.totals.missing_records, 0);
}
