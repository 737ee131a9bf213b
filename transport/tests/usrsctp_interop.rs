//! Interop with usrsctp (an independent SCTP stack) over RFC 6951 UDP encapsulation, with a
//! live tshark capture checked for bad checksums and malformed packets.
//!
//! The C peer (tests/usrsctp_peer/peer.c) is compiled here with `cc`; when the compiler,
//! the usrsctp library or tshark is missing the test prints a SKIP line saying so, except
//! in CI (`CI` set), which installs them all and where a skip would hide a broken install.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use transport::{Config, Endpoint, Event, Message, TransportKind};

const STEP: Duration = Duration::from_secs(20);

/// Prints why a test cannot run here; in CI, which must have every tool, fails instead.
fn skip(reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{reason}, but CI must have it (.ci/run installs it)"
    );
    println!("SKIP {reason}");
}

fn build_peer() -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/usrsctp_peer/peer.c");
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("usrsctp_peer");
    let output = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&binary)
        .arg(&source)
        .args(["-lusrsctp", "-lpthread"])
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cc failed (is libusrsctp-dev installed?): {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(binary)
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Live capture on loopback; `None` (with the reason printed) when tshark cannot capture.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(udp_port: u16) -> Option<Capture> {
        let file =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("interop-{udp_port}.pcapng"));
        let _ = std::fs::remove_file(&file);
        let mut child = match Command::new("tshark")
            .args(["-i", "lo", "-f", &format!("udp port {udp_port}"), "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(error) => {
                skip(&format!("tshark capture: cannot start tshark: {error}"));
                return None;
            }
        };
        // tshark reports "Capturing on 'Loopback: lo'" once the capture filter is active.
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Capturing on") {
                    let _ = ready_tx.send(());
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(15)).is_err() {
            skip("tshark capture: tshark did not start capturing on lo");
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // The message comes slightly before dumpcap's filter is attached: without this
        // pause the handshake is sometimes missing from the capture.
        std::thread::sleep(Duration::from_millis(1500));
        Some(Capture { child, file })
    }

    fn stop(mut self) -> PathBuf {
        // Give the last packets time to reach the capture, then stop it the way Ctrl-C
        // would, so tshark finishes writing the file.
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: signalling our own child process by pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.wait();
        self.file
    }
}

fn tshark(file: &Path, udp_port: u16, extra: &[&str]) -> String {
    let output = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-d", &format!("udp.port=={udp_port},sctp")])
        // Wireshark does not verify SCTP checksums unless asked to.
        .args(["-o", "sctp.checksum:CRC 32c"])
        .args(extra)
        .output()
        .expect("tshark runs");
    assert!(
        output.status.success(),
        "tshark -r failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Protocols Wireshark stacked on SCTP by PPID (ASAP for 11, ENRP for 12, S1AP for 18, ...).
/// Our test payloads are plain text, so those dissectors report "malformed" about the
/// application layer; they are disabled to check the SCTP layer itself.
fn payload_dissectors(file: &Path, udp_port: u16) -> Vec<String> {
    let mut above_sctp = BTreeSet::new();
    for line in tshark(file, udp_port, &["-T", "fields", "-e", "frame.protocols"]).lines() {
        if let Some((_, upper)) = line.split_once(":sctp:") {
            above_sctp.extend(
                upper
                    .split(':')
                    .filter(|p| *p != "data")
                    .map(str::to_string),
            );
        }
    }
    above_sctp.into_iter().collect()
}

/// `tshark -r` with the payload dissectors switched off and a display filter.
fn tshark_read(file: &Path, udp_port: u16, disabled: &[String], filter: &str) -> String {
    let mut extra = Vec::new();
    for protocol in disabled {
        extra.push("--disable-protocol");
        extra.push(protocol.as_str());
    }
    extra.extend(["-Y", filter]);
    tshark(file, udp_port, &extra)
}

fn expected_from_peer() -> BTreeSet<(u16, u32, bool, Vec<u8>)> {
    let streams = [0u16, 1, 2, 5];
    let ppids = [11u32, 12, 18, 0xabcd_ef01];
    let mut expected = BTreeSet::new();
    for i in 0..8 {
        expected.insert((
            streams[i % 4],
            ppids[i % 4],
            false,
            format!("usrsctp message {i}").into_bytes(),
        ));
    }
    expected.insert((3, 7, true, b"usrsctp message 8".to_vec()));
    expected.insert((
        4,
        8,
        false,
        (0..3000).map(|b| b'a' + (b % 26) as u8).collect(),
    ));
    expected.insert((
        6,
        9,
        false,
        (0..20000usize).map(|b| (b * 7) as u8).collect(),
    ));
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usrsctp_peer_exchanges_messages_over_udp_encapsulation() {
    usrsctp_exchange(false).await;
}

/// The same exchange with our packets handed to the kernel in GSO batches (the default): the
/// usrsctp peer's socket must receive them as the individual UDP datagrams they are. No
/// capture: tshark on `lo` sees each batch as one oversized datagram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usrsctp_peer_exchanges_messages_with_our_gso_batches() {
    usrsctp_exchange(true).await;
}

async fn usrsctp_exchange(udp_segmentation_offload: bool) {
    let peer_binary = match build_peer() {
        Ok(binary) => binary,
        Err(reason) => {
            skip(&format!("usrsctp interop: {reason}"));
            return;
        }
    };
    let config = Config {
        transport: TransportKind::SctpOverUdp,
        // Short enough that our HEARTBEATs reach usrsctp while the peer idles before closing.
        heartbeat_interval: Duration::from_millis(100),
        udp_segmentation_offload,
        ..Config::default()
    };
    let sctp_port = config.sctp_port;
    let mut endpoint = Endpoint::bind(config, "127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    let udp_port = endpoint.local_addr().port();
    let capture = if udp_segmentation_offload {
        None
    } else {
        Capture::start(udp_port)
    };

    let peer_udp_port = free_udp_port();
    let peer = Command::new(&peer_binary)
        .args([
            "127.0.0.1".to_string(),
            udp_port.to_string(),
            sctp_port.to_string(),
            peer_udp_port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut association = tokio::time::timeout(STEP, endpoint.accept())
        .await
        .expect("usrsctp associates within the timeout")
        .unwrap();
    let mut received = BTreeSet::new();
    let last = loop {
        let Ok(event) = tokio::time::timeout(STEP, association.recv()).await else {
            break None;
        };
        match event {
            Some(Event::Up) => {}
            Some(Event::Message(message)) => {
                received.insert((
                    message.stream,
                    message.ppid,
                    message.unordered,
                    message.payload.to_vec(),
                ));
                let echo = Message {
                    reliability: Default::default(),
                    ..message
                };
                association.send(echo).await.unwrap();
            }
            other => break other,
        }
    };
    let output = tokio::task::spawn_blocking(move || peer.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let capture_file = capture.map(Capture::stop);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    println!("our side ended with {last:?}");

    assert_eq!(
        received,
        expected_from_peer(),
        "streams, PPIDs, flags, payloads from usrsctp"
    );
    assert!(output.status.success(), "usrsctp peer verified our echoes");
    assert!(stdout.contains("PEER OK 11 echoes matched"));
    assert_eq!(last, Some(Event::Down(transport::DownReason::Shutdown)));

    let Some(file) = capture_file else { return };
    let disabled = payload_dissectors(&file, udp_port);
    println!("tshark: payload dissectors disabled for the check: {disabled:?}");
    let bad = tshark_read(
        &file,
        udp_port,
        &disabled,
        r#"sctp.checksum.status == "Bad" || _ws.malformed"#,
    );
    assert!(bad.trim().is_empty(), "tshark flagged packets:\n{bad}");
    let all = tshark_read(&file, udp_port, &disabled, "sctp")
        .lines()
        .count();
    let good = tshark_read(
        &file,
        udp_port,
        &disabled,
        r#"sctp.checksum.status == "Good""#,
    )
    .lines()
    .count();
    println!(
        "tshark: {all} SCTP packets captured, {good} with a verified-good CRC32c, 0 bad or malformed"
    );
    assert!(all > 0, "capture saw SCTP packets");
    assert_eq!(good, all, "every packet's checksum verified");
    // Both stacks' packets must be in there: ours carry DATA from the echo direction too.
    let heartbeat_acks_from_usrsctp = tshark_read(
        &file,
        udp_port,
        &disabled,
        &format!("udp.dstport == {udp_port} && sctp.chunk_type == 5"),
    );
    assert!(
        !heartbeat_acks_from_usrsctp.trim().is_empty(),
        "usrsctp answered our HEARTBEATs"
    );
    let ours = tshark_read(
        &file,
        udp_port,
        &disabled,
        &format!("udp.srcport == {udp_port} && sctp.data_payload_proto_id == 0xabcdef01"),
    );
    assert!(
        !ours.trim().is_empty(),
        "our DATA with PPID 0xabcdef01 decoded by tshark"
    );
}

/// Our own path supervision writes HEARTBEAT and ABORT packets itself (not via sctp-proto):
/// capture a Rust-to-Rust association through heartbeats and a killed peer and let tshark
/// judge them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_heartbeat_and_abort_packets_decode_cleanly() {
    let config = Config {
        // tshark on `lo` would see GSO batches as one oversized UDP datagram each.
        udp_segmentation_offload: false,
        // The killed peer's port answers with ICMP; ignoring it makes path supervision
        // give up and write the ABORT this test decodes.
        icmp_port_unreachable: false,
        ..Config::fast_failure_detection(TransportKind::SctpOverUdp)
    };
    let mut server = Endpoint::bind(config.clone(), "127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    let udp_port = server.local_addr().port();
    let Some(capture) = Capture::start(udp_port) else {
        return;
    };
    let server_addr = server.local_addr();
    // Any packet from the peer postpones a side's own HEARTBEAT, so with equal intervals
    // whichever side heartbeats first keeps doing so and the other never does. The client
    // waits longer, so the HEARTBEATs in the capture are ours and the ACKs are the peer's.
    let client_config = Config {
        heartbeat_interval: config.heartbeat_interval * 10,
        ..config.clone()
    };
    let (runtime, client) = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = runtime
            .block_on(transport::connect(client_config, server_addr))
            .unwrap();
        (runtime, client)
    })
    .await
    .unwrap();
    let mut accepted = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap();
    accepted
        .send(Message::new(1, 11, &b"hello"[..]))
        .await
        .unwrap();
    // Idle long enough for several heartbeat rounds.
    tokio::time::sleep(config.heartbeat_interval * 6).await;
    std::mem::forget(client);
    runtime.shutdown_background();
    let last = tokio::time::timeout(STEP, async {
        loop {
            match accepted.recv().await {
                Some(Event::Up) | Some(Event::Message(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        last,
        Some(Event::Failed(transport::FailureReason::PeerUnreachable))
    );
    let file = capture.stop();
    let disabled = payload_dissectors(&file, udp_port);
    let bad = tshark_read(
        &file,
        udp_port,
        &disabled,
        r#"sctp.checksum.status == "Bad" || _ws.malformed"#,
    );
    assert!(bad.trim().is_empty(), "tshark flagged packets:\n{bad}");
    let count = |filter: &str| {
        tshark_read(&file, udp_port, &disabled, filter)
            .lines()
            .count()
    };
    let heartbeats = count(&format!(
        "udp.srcport == {udp_port} && sctp.chunk_type == 4"
    ));
    let heartbeat_acks = count(&format!(
        "udp.dstport == {udp_port} && sctp.chunk_type == 5"
    ));
    let aborts = count(&format!(
        "udp.srcport == {udp_port} && sctp.chunk_type == 6"
    ));
    let good = count(r#"sctp.checksum.status == "Good""#);
    let all = count("sctp");
    println!(
        "tshark: {all} packets, {good} good CRC32c; our HEARTBEATs {heartbeats}, \
         HEARTBEAT ACKs back {heartbeat_acks}, our ABORTs {aborts}"
    );
    assert!(heartbeats > 0 && heartbeat_acks > 0 && aborts > 0);
    assert_eq!(good, all);
}
