//! A UDP listener for datagram protocols whose sessions are the senders'
//! transport addresses, as IPFIX (RFC 7011 section 10.3) and NetFlow v9 are
//! over UDP: the collector's IPFIX receiver and the relay's router listener
//! are both this loop, with their own [`UdpService`].
//!
//! What it does: binds with a large receive buffer ([`bind`]); receives on a
//! thread of its own, blocking, many datagrams per system call (`recvmmsg`);
//! keeps one session per sender, at most `max_sessions` of them (the idlest
//! makes room for a new one) and none silent for `idle_timeout`; stops when
//! the stop flag is set. What a datagram means, where its records go, and
//! what is counted and logged is the service's.
//!
//! Blocking receive on a dedicated thread beats an async loop here: one
//! socket, one consumer, no wake-ups between datagrams. At moderate rates
//! the loop also pauses briefly after draining the socket (`Coalescing`),
//! so that it wakes once for several datagrams rather than for each; a
//! thread per socket of a `SO_REUSEPORT` group ([`bind_group`]) spreads
//! senders over cores.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

/// How [`bind`] sets the socket up.
#[derive(Debug, Clone)]
pub struct BindOptions {
    /// SO_RCVBUF asked of the kernel: absorbs bursts while the consumer is
    /// busy (the kernel caps it at `net.core.rmem_max`).
    pub receive_buffer_bytes: usize,
    /// Also try SO_RCVBUFFORCE, which passes `net.core.rmem_max` when the
    /// process is privileged and fails harmlessly otherwise.
    pub force_receive_buffer: bool,
    /// SO_REUSEADDR before binding.
    pub reuse_address: bool,
    /// The receive timeout: how long the loop may wait for a datagram
    /// before it looks at the stop flag and at its service's flush.
    pub poll_interval: Duration,
}

/// Binds a UDP socket for [`run`] as `options` say.
pub fn bind(addr: SocketAddr, options: &BindOptions) -> std::io::Result<UdpSocket> {
    bind_socket(addr, options, false)
}

/// Binds `count` sockets to one address for `count` receive threads, each
/// running [`run`] on its own socket. With more than one, they share the
/// address through `SO_REUSEPORT`: the kernel hashes each sender's address
/// and port to one socket of the group, so a sender's datagrams (one IPFIX
/// or NetFlow session: its templates and sequence numbers) always reach the
/// same thread, while different senders spread over the threads. Port 0
/// takes an ephemeral port for the first socket and that port for the rest.
///
/// Only processes of the same user can join a group; the group ends with
/// the sockets. Every socket gets the whole receive buffer of `options`.
pub fn bind_group(
    addr: SocketAddr,
    options: &BindOptions,
    count: usize,
) -> std::io::Result<Vec<UdpSocket>> {
    if count <= 1 {
        return Ok(vec![bind(addr, options)?]);
    }
    let first = bind_socket(addr, options, true)?;
    let shared = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind_socket(shared, options, true)?);
    }
    Ok(sockets)
}

fn bind_socket(
    addr: SocketAddr,
    options: &BindOptions,
    reuse_port: bool,
) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Before bind: the buffer is there from the first datagram on.
    if socket
        .set_recv_buffer_size(options.receive_buffer_bytes)
        .is_err()
    {
        warn!(
            "could not set UDP receive buffer to {} bytes",
            options.receive_buffer_bytes
        );
    }
    if options.force_receive_buffer {
        force_receive_buffer(&socket, options.receive_buffer_bytes);
    }
    if options.reuse_address {
        socket.set_reuse_address(true)?;
    }
    if reuse_port {
        set_reuse_port(&socket)?;
    }
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(options.poll_interval))?;
    Ok(socket)
}

/// SO_REUSEPORT (socket2 offers it only behind its `all` feature).
fn set_reuse_port(socket: &Socket) -> std::io::Result<()> {
    set_int_option(socket, libc::SO_REUSEPORT, 1)
}

/// SO_RCVBUFFORCE. Failure (not privileged) leaves the SO_RCVBUF value:
/// only burst capacity is lost.
fn force_receive_buffer(socket: &Socket, bytes: usize) {
    let _ = set_int_option(
        socket,
        libc::SO_RCVBUFFORCE,
        bytes.min(i32::MAX as usize) as libc::c_int,
    );
}

/// A `SOL_SOCKET` option that takes a C int.
fn set_int_option(socket: &Socket, name: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket fd and a pointer to a c_int of the right size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Session bookkeeping of [`run`].
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Senders tracked at once; the idlest is dropped to admit a new one.
    pub max_sessions: usize,
    /// A session silent this long is dropped.
    pub idle_timeout: Duration,
    /// How often idle sessions are looked for (and
    /// [`UdpService::housekeeping`] runs).
    pub housekeeping_interval: Duration,
}

/// Why a session came or went, for [`UdpService::session_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChange {
    /// A datagram from a new sender opened it.
    Opened,
    /// The session limit was reached: it was the idlest, and makes room.
    Evicted,
    /// Silent for the idle timeout.
    Idle,
}

/// What a listener does with its datagrams.
pub trait UdpService {
    /// Per-sender state.
    type Session;

    /// The session of a sender not seen (or forgotten) before.
    fn open(&mut self, peer: SocketAddr) -> Self::Session;

    /// One datagram of `peer`, received at `now`. `Break` ends the listener
    /// (its consumer is gone).
    fn datagram(
        &mut self,
        session: &mut Self::Session,
        peer: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> ControlFlow<()>;

    /// After the datagrams of one receive call: whether to [`Self::flush`]
    /// now, or receive more first. Always now while `stopping`.
    fn flush_now(&self, stopping: bool) -> bool {
        let _ = stopping;
        true
    }

    /// Hands on what the datagrams since the last flush produced; also
    /// called when the receive timed out. `Break` ends the listener.
    fn flush(&mut self) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    /// A session was opened or dropped; `sessions` is how many there are
    /// now (when evicting: before the new one is added).
    fn session_change(&mut self, peer: SocketAddr, change: SessionChange, sessions: usize) {
        let _ = (peer, change, sessions);
    }

    /// Every `housekeeping_interval`, after idle sessions were dropped, with
    /// the sessions left (to expire templates, say).
    fn housekeeping<'a>(&mut self, sessions: impl Iterator<Item = &'a mut Self::Session>)
    where
        Self::Session: 'a,
    {
        let _ = sessions;
    }

    /// The listener ends with `sessions` sessions still open.
    fn stopped(&mut self, sessions: usize) {
        let _ = sessions;
    }
}

struct Tracked<S> {
    session: S,
    last_seen: Instant,
}

/// Receives on `socket` (from [`bind`]) until `stop` is set or the service
/// breaks, and returns then.
pub fn run<S: UdpService>(
    socket: &UdpSocket,
    settings: &ListenerSettings,
    stop: &AtomicBool,
    service: &mut S,
) {
    let mut sessions: HashMap<SocketAddr, Tracked<S::Session>> = HashMap::new();
    let mut receiver = DatagramReceiver::new();
    let mut last_housekeeping = Instant::now();
    let mut coalescing = Coalescing::new(
        socket2::SockRef::from(socket)
            .recv_buffer_size()
            .unwrap_or(212_992),
    );
    loop {
        if let Some(pause) = coalescing.pause() {
            std::thread::sleep(pause);
        }
        match receiver.receive(socket) {
            Ok(count) => {
                // One clock read per receive call, not per datagram: they
                // arrived together.
                let now = Instant::now();
                coalescing.received(now, count, receiver.bytes(count));
                for i in 0..count {
                    let (bytes, peer) = receiver.datagram(i);
                    let Some(peer) = peer else { continue };
                    let tracked = match sessions.get_mut(&peer) {
                        Some(tracked) => tracked,
                        None => {
                            if sessions.len() >= settings.max_sessions {
                                evict_idlest(&mut sessions, service);
                            }
                            let session = service.open(peer);
                            service.session_change(peer, SessionChange::Opened, sessions.len() + 1);
                            sessions.entry(peer).or_insert(Tracked {
                                session,
                                last_seen: now,
                            })
                        }
                    };
                    tracked.last_seen = now;
                    if service
                        .datagram(&mut tracked.session, peer, bytes, now)
                        .is_break()
                    {
                        return;
                    }
                }
                if !service.flush_now(stop.load(Ordering::Acquire)) {
                    continue;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => warn!("UDP receive failed: {e}"),
        }
        if service.flush().is_break() {
            return;
        }
        if stop.load(Ordering::Acquire) {
            break;
        }
        if last_housekeeping.elapsed() >= settings.housekeeping_interval {
            last_housekeeping = Instant::now();
            let idle: Vec<SocketAddr> = sessions
                .iter()
                .filter(|(_, t)| t.last_seen.elapsed() >= settings.idle_timeout)
                .map(|(peer, _)| *peer)
                .collect();
            for peer in idle {
                sessions.remove(&peer);
                service.session_change(peer, SessionChange::Idle, sessions.len());
            }
            service.housekeeping(sessions.values_mut().map(|t| &mut t.session));
        }
    }
    service.stopped(sessions.len());
}

fn evict_idlest<S: UdpService>(
    sessions: &mut HashMap<SocketAddr, Tracked<S::Session>>,
    service: &mut S,
) {
    if let Some(peer) = sessions
        .iter()
        .min_by_key(|(_, t)| t.last_seen)
        .map(|(peer, _)| *peer)
    {
        sessions.remove(&peer);
        service.session_change(peer, SessionChange::Evicted, sessions.len());
    }
}

/// Datagrams received per system call.
const DATAGRAMS_PER_CALL: usize = 64;

/// The longest [`Coalescing`] pause: far below any flush interval, so a
/// record's way to the store is not measurably longer.
const MAX_COALESCING_PAUSE: Duration = Duration::from_micros(500);

/// Interrupt coalescing in user space. At a moderate rate (say 30,000
/// datagrams a second, one exporter at 800k records/s) a blocking receive
/// returns after every datagram or two, and the thread's sleep and wake-up
/// cost more than decoding: `perf` put an eighth of the collector's CPU in
/// `finish_task_switch` under softflowd's load. So after a receive that
/// drained the socket, while datagrams arrive faster than one per
/// `MAX_COALESCING_PAUSE / 2`, the loop pauses before the next receive, so
/// that it takes several at once. The pause is cut so that at the measured
/// byte rate at most an eighth of the socket's receive buffer fills (the
/// kernel counts a datagram's buffer overhead too, taken here as its size
/// again), so a pause never turns into loss; a trickle gets no pause.
#[derive(Debug)]
struct Coalescing {
    receive_buffer_bytes: usize,
    /// Datagrams and bytes per second, smoothed over recent receives.
    datagram_rate: f64,
    byte_rate: f64,
    last_receive: Option<Instant>,
    /// The last receive left nothing in the socket.
    drained: bool,
}

impl Coalescing {
    fn new(receive_buffer_bytes: usize) -> Self {
        Self {
            receive_buffer_bytes,
            datagram_rate: 0.0,
            byte_rate: 0.0,
            last_receive: None,
            drained: false,
        }
    }

    /// `count` datagrams of `bytes` in all were received at `now`.
    fn received(&mut self, now: Instant, count: usize, bytes: usize) {
        self.drained = count < DATAGRAMS_PER_CALL;
        if let Some(last) = self.last_receive {
            // Since the previous receive returned: its processing, any
            // pause and the wait for these datagrams.
            let elapsed = now.duration_since(last).as_secs_f64().max(1e-6);
            const WEIGHT: f64 = 0.125;
            self.datagram_rate += WEIGHT * (count as f64 / elapsed - self.datagram_rate);
            self.byte_rate += WEIGHT * (bytes as f64 / elapsed - self.byte_rate);
        }
        self.last_receive = Some(now);
    }

    /// How long to wait before the next receive, if at all.
    fn pause(&self) -> Option<Duration> {
        let max = MAX_COALESCING_PAUSE.as_secs_f64();
        if !self.drained || self.datagram_rate * max < 2.0 || self.byte_rate <= 0.0 {
            return None;
        }
        let safe = self.receive_buffer_bytes as f64 / 8.0 / (2.0 * self.byte_rate);
        let batch = DATAGRAMS_PER_CALL as f64 / self.datagram_rate;
        let pause = max.min(safe).min(batch);
        (pause >= 50e-6).then(|| Duration::from_secs_f64(pause))
    }
}

/// Receives many datagrams per system call (recvmmsg): at ~30 records per
/// datagram the per-datagram system call was a visible share of the cost.
struct DatagramReceiver {
    buffers: Vec<u8>,
    lengths: [usize; DATAGRAMS_PER_CALL],
    addresses: Vec<libc::sockaddr_storage>,
    address_lengths: [libc::socklen_t; DATAGRAMS_PER_CALL],
}

impl DatagramReceiver {
    /// Largest IPFIX message (its length field is 16 bits).
    const MAX_DATAGRAM: usize = 65_536;

    fn new() -> Self {
        Self {
            buffers: vec![0u8; Self::MAX_DATAGRAM * DATAGRAMS_PER_CALL],
            lengths: [0; DATAGRAMS_PER_CALL],
            // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
            addresses: vec![unsafe { std::mem::zeroed() }; DATAGRAMS_PER_CALL],
            address_lengths: [0; DATAGRAMS_PER_CALL],
        }
    }

    /// Waits for at least one datagram (up to the socket's read timeout),
    /// then takes what else is queued. Returns how many were received.
    fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut iovecs: [libc::iovec; DATAGRAMS_PER_CALL] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.buffers[i * Self::MAX_DATAGRAM..].as_mut_ptr().cast(),
            iov_len: Self::MAX_DATAGRAM,
        });
        // SAFETY: mmsghdr is plain data; all zeroes is a valid value.
        let mut headers: [libc::mmsghdr; DATAGRAMS_PER_CALL] = unsafe { std::mem::zeroed() };
        for (i, h) in headers.iter_mut().enumerate() {
            h.msg_hdr.msg_iov = &mut iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (&mut self.addresses[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: every header points at a live buffer and address of the
        // sizes given; they outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                DATAGRAMS_PER_CALL as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in headers[..n].iter().enumerate() {
            self.lengths[i] = h.msg_len as usize;
            self.address_lengths[i] = h.msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// Bytes in the first `count` datagrams of the last receive.
    fn bytes(&self, count: usize) -> usize {
        self.lengths[..count].iter().sum()
    }

    /// Datagram `i` of the last receive and its sender.
    fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let start = i * Self::MAX_DATAGRAM;
        let bytes = &self.buffers[start..start + self.lengths[i]];
        let peer = crate::sockaddr::from_raw(&self.addresses[i], self.address_lengths[i]);
        (bytes, peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rmem_max() -> usize {
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// CAP_NET_ADMIN (bit 12) in the effective set: what SO_RCVBUFFORCE needs.
    fn has_net_admin() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << 12) != 0)
    }

    fn options(receive_buffer_bytes: usize, force_receive_buffer: bool) -> BindOptions {
        BindOptions {
            receive_buffer_bytes,
            force_receive_buffer,
            reuse_address: false,
            poll_interval: Duration::from_millis(50),
        }
    }

    /// Without force the buffer is what plain SO_RCVBUF gives: at most the
    /// kernel's doubling of `net.core.rmem_max`, even when running as root
    /// (where SO_RCVBUFFORCE would pass the cap). The benchmark relies on
    /// this to treat every collector alike.
    #[test]
    fn unforced_buffer_stays_within_rmem_max() {
        let max = rmem_max();
        let asked = 4 * max;
        let socket = bind("127.0.0.1:0".parse().unwrap(), &options(asked, false)).unwrap();
        let got = Socket::from(socket).recv_buffer_size().unwrap();
        assert!(got <= 2 * max, "got {got} bytes, rmem_max {max}");
        assert!(got > 0);
    }

    /// With force, a privileged process gets the whole buffer past the cap
    /// (the default behaviour); without CAP_NET_ADMIN, it gets the capped one.
    #[test]
    fn forced_buffer_passes_rmem_max_when_privileged() {
        let max = rmem_max();
        let asked = 4 * max;
        let socket = bind("127.0.0.1:0".parse().unwrap(), &options(asked, true)).unwrap();
        let got = Socket::from(socket).recv_buffer_size().unwrap();
        if has_net_admin() {
            assert_eq!(got, 2 * asked, "rmem_max {max}");
        } else {
            assert!(got <= 2 * max, "got {got}, rmem_max {max}");
        }
    }

    /// A group of sockets on one address: every sender's datagrams reach
    /// one socket only (its session stays whole on one thread), and the
    /// senders spread over the group. 32 senders all hashed to one of two
    /// sockets would happen once in 2^31 runs.
    #[test]
    fn a_group_keeps_each_sender_on_one_socket_and_spreads_the_senders() {
        let sockets =
            bind_group("127.0.0.1:0".parse().unwrap(), &options(1 << 20, false), 2).unwrap();
        assert_eq!(sockets.len(), 2);
        let addr = sockets[0].local_addr().unwrap();
        assert_eq!(sockets[1].local_addr().unwrap(), addr);
        let senders: Vec<UdpSocket> = (0..32)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for round in 0..3u8 {
            for sender in &senders {
                sender.send_to(&[round], addr).unwrap();
            }
        }
        let mut seen_on: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 16];
        while received < 3 * senders.len() {
            assert!(
                Instant::now() < deadline,
                "only {received} datagrams arrived"
            );
            for (i, socket) in sockets.iter().enumerate() {
                // The poll interval of `options` bounds each wait.
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    seen_on.entry(from).or_default().push(i);
                    received += 1;
                }
            }
        }
        assert_eq!(seen_on.len(), senders.len());
        for (sender, on) in &seen_on {
            assert!(on.iter().all(|&i| i == on[0]), "{sender} reached {on:?}");
        }
        let on_first = seen_on.values().filter(|on| on[0] == 0).count();
        assert!(
            on_first > 0 && on_first < senders.len(),
            "{on_first} of {} senders on the first socket",
            senders.len()
        );
    }

    /// One socket: no SO_REUSEPORT, so a second bind of the address fails
    /// as before (a second collector on the same port is an error).
    #[test]
    fn a_group_of_one_keeps_the_address_exclusive() {
        let sockets =
            bind_group("127.0.0.1:0".parse().unwrap(), &options(1 << 20, false), 1).unwrap();
        let addr = sockets[0].local_addr().unwrap();
        assert!(bind(addr, &options(1 << 20, false)).is_err());
    }

    /// At 30,000 datagrams a second of 1,400 bytes into a 32 MiB buffer a
    /// drained socket waits the longest pause; the same rate into a small
    /// buffer waits only as long as an eighth of it takes to fill; a full
    /// receive (more queued) and a trickle never wait.
    #[test]
    fn coalescing_pauses_only_when_it_pays_and_never_fills_the_buffer() {
        let steady = |buffer: usize, per_second: f64, count: usize| {
            let mut c = Coalescing::new(buffer);
            let start = Instant::now();
            let interval = count as f64 / per_second;
            for i in 0..100 {
                let at = start + Duration::from_secs_f64(i as f64 * interval);
                c.received(at, count, count * 1_400);
            }
            c
        };
        let fast = steady(32 << 20, 30_000.0, 3);
        assert_eq!(fast.pause(), Some(MAX_COALESCING_PAUSE));
        // 212,992 bytes: an eighth at 2 × 42 MB/s fills in about 317 µs.
        let small = steady(212_992, 30_000.0, 3).pause().unwrap();
        assert!(
            small < MAX_COALESCING_PAUSE && small > Duration::from_micros(250),
            "{small:?}"
        );
        let full = steady(32 << 20, 30_000.0, DATAGRAMS_PER_CALL);
        assert_eq!(full.pause(), None, "more is queued: receive at once");
        let trickle = steady(32 << 20, 100.0, 1);
        assert_eq!(trickle.pause(), None, "a trickle is not delayed");
    }

    /// Records what the loop asks of its service.
    #[derive(Default)]
    struct Recorder {
        datagrams: Vec<(SocketAddr, Vec<u8>)>,
        changes: Vec<(SocketAddr, SessionChange, usize)>,
    }

    impl UdpService for Recorder {
        type Session = u32;

        fn open(&mut self, _peer: SocketAddr) -> u32 {
            0
        }

        fn datagram(
            &mut self,
            session: &mut u32,
            peer: SocketAddr,
            bytes: &[u8],
            _now: Instant,
        ) -> ControlFlow<()> {
            *session += 1;
            self.datagrams.push((peer, bytes.to_vec()));
            if bytes == b"last" {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }

        fn session_change(&mut self, peer: SocketAddr, change: SessionChange, sessions: usize) {
            self.changes.push((peer, change, sessions));
        }
    }

    /// Datagrams reach the service with their sender, one session per
    /// sender, and a full table gives up its idlest session.
    #[test]
    fn sessions_per_sender_and_the_idlest_makes_room() {
        let socket = bind("127.0.0.1:0".parse().unwrap(), &options(1 << 20, false)).unwrap();
        let addr = socket.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(b"a1", addr).unwrap();
        a.send_to(b"a2", addr).unwrap();
        b.send_to(b"b1", addr).unwrap();
        b.send_to(b"last", addr).unwrap();
        let settings = ListenerSettings {
            max_sessions: 1,
            idle_timeout: Duration::from_secs(60),
            housekeeping_interval: Duration::from_secs(60),
        };
        let mut recorder = Recorder::default();
        run(&socket, &settings, &AtomicBool::new(false), &mut recorder);
        let (a, b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let got: Vec<(SocketAddr, &[u8])> = recorder
            .datagrams
            .iter()
            .map(|(peer, bytes)| (*peer, &bytes[..]))
            .collect();
        assert_eq!(got, [(a, &b"a1"[..]), (a, b"a2"), (b, b"b1"), (b, b"last")]);
        assert_eq!(
            recorder.changes,
            [
                (a, SessionChange::Opened, 1),
                (a, SessionChange::Evicted, 0),
                (b, SessionChange::Opened, 1),
            ]
        );
    }
}
