//! The collector counts how each association ended
//! (`poolflow_collector_associations_ended_total{transport, how}`, see
//! docs/sctp-close.md): a graceful close is `shutdown`, a reset is `abort`,
//! so a cut-off exporter is never silent. Real `collector run` process,
//! framed TCP (the same session code as SCTP); every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use poolflow_tests::{child_log, free_tcp_port, workspace_bin};

fn scrape(metrics: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(&metrics, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

fn ended(metrics: SocketAddr, how: &str) -> u64 {
    let prefix = format!(
        "poolflow_collector_associations_ended_total{{transport=\"framed-tcp\",how=\"{how}\"}} "
    );
    scrape(metrics)
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str())?.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends RST instead of FIN on close (SO_LINGER with a zero timeout), as a
/// crashed or killed exporter's host would.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd owned by `stream`; the pointer and length describe a
    // live `linger`.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

#[test]
fn collector_counts_graceful_and_aborted_associations_apart() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut collector = Command::new(workspace_bin("collector"))
        .args(["run", "--no-udp", "--no-tcp", "--no-sctp", "--database"])
        .arg(dir.path().join("flows.sqlite"))
        .args(["--framed-tcp", &listen.to_string()])
        .args(["--metrics", &metrics.to_string()])
        .stdout(child_log())
        .stderr(child_log())
        .spawn()
        .expect("collector starts");
    wait_until("collector listening", || {
        TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok()
            && !scrape(metrics).is_empty()
    });
    // The probe connection above closed gracefully: wait for it to count.
    wait_until("probe connection counted", || {
        ended(metrics, "shutdown") >= 1
    });
    let graceful_before = ended(metrics, "shutdown");

    // An exporter that is cut off: reset, not closed.
    let cut = TcpStream::connect(listen).unwrap();
    wait_until("session active", || {
        scrape(metrics).lines().any(|l| {
            l.starts_with("poolflow_collector_sessions_active{transport=\"framed-tcp\"} 1")
        })
    });
    reset(cut);
    wait_until("abort counted", || ended(metrics, "abort") == 1);

    // And a graceful one still counts as such.
    drop(TcpStream::connect(listen).unwrap());
    wait_until("graceful close counted", || {
        ended(metrics, "shutdown") == graceful_before + 1
    });
    assert_eq!(ended(metrics, "abort"), 1, "only the reset one is an abort");

    let _ = Command::new("kill")
        .args(["-TERM", &collector.id().to_string()])
        .status();
    let _ = collector.wait();
}
