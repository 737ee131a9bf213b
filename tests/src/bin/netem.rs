//! A user-space stand-in for the `netem` queueing discipline, for the
//! multi-host tests: this host's kernel (like many CI kernels) is built
//! without `sch_netem`, but it has NFQUEUE. iptables hands the packets of a
//! test host's namespace to this program (`-j NFQUEUE --queue-num N
//! --queue-bypass`); it drops a random share of them and gives each of the
//! others its verdict after a random delay of `delay ± jitter`, uniformly
//! distributed, so packets overtake each other as behind netem's jitter
//! (reordering). Duplication is not done here: a verdict can only pass or
//! drop the one packet, so `deploy/netns-hosts.sh` clones packets with the
//! kernel's TEE target instead.
//!
//!   netem --queue 7 --loss 5 --delay 50ms --jitter 20ms --seed 3
//!
//! Runs until SIGTERM or SIGINT, then passes every packet it still holds
//! (none is left stuck in the kernel's queue) and prints its counts on one
//! line: `netem: queued Q dropped D passed P held-at-most H`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

struct Impairment {
    queue: u16,
    loss_percent: f64,
    delay: Duration,
    jitter: Duration,
    seed: u64,
}

fn parse_args() -> Result<Impairment, String> {
    let mut impairment = Impairment {
        queue: 0,
        loss_percent: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        seed: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--queue" => impairment.queue = value.parse().map_err(|e| bad(&e))?,
            "--loss" => impairment.loss_percent = value.parse().map_err(|e| bad(&e))?,
            "--delay" => {
                impairment.delay = humantime::parse_duration(&value).map_err(|e| bad(&e))?
            }
            "--jitter" => {
                impairment.jitter = humantime::parse_duration(&value).map_err(|e| bad(&e))?
            }
            "--seed" => impairment.seed = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !(0.0..=100.0).contains(&impairment.loss_percent) {
        return Err("--loss is a percentage, 0 to 100".into());
    }
    if impairment.jitter > impairment.delay {
        return Err("--jitter must not exceed --delay (a packet cannot leave early)".into());
    }
    Ok(impairment)
}

/// A packet waiting for its verdict, ordered by when it is due (then by
/// arrival, so equal due times keep their order).
struct Held {
    due: Instant,
    arrival: u64,
    message: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.arrival) == (other.due, other.arrival)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.arrival).cmp(&(other.due, other.arrival))
    }
}

fn main() {
    let impairment = parse_args().unwrap_or_else(|error| {
        eprintln!("netem: {error}");
        eprintln!(
            "usage: netem --queue N [--loss PERCENT] [--delay 50ms] [--jitter 20ms] [--seed N]"
        );
        std::process::exit(2);
    });
    if let Err(error) = run(&impairment) {
        eprintln!("netem: {error}");
        std::process::exit(1);
    }
}

fn run(impairment: &Impairment) -> std::io::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
    }
    let mut queue = nfq::Queue::open()?;
    queue.bind(impairment.queue)?;
    // Metadata only: a verdict needs the packet id, not its bytes.
    queue.set_copy_range(impairment.queue, 0)?;
    // Room for a 50 ms backlog at far more packets a second than a test sends,
    // so the queue itself never adds loss.
    queue.set_queue_max_len(impairment.queue, 65_536)?;
    queue.set_nonblocking(true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(impairment.seed);
    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let (mut queued, mut dropped, mut passed, mut held_at_most) = (0u64, 0u64, 0u64, 0usize);
    println!(
        "netem: queue {} loss {} % delay {:?} ± {:?}",
        impairment.queue, impairment.loss_percent, impairment.delay, impairment.jitter
    );
    while !STOP.load(Ordering::Relaxed) {
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    queued += 1;
                    if rng.random_bool(impairment.loss_percent / 100.0) {
                        dropped += 1;
                        message.set_verdict(nfq::Verdict::Drop);
                        queue.verdict(message)?;
                        continue;
                    }
                    let spread = impairment.jitter.as_secs_f64();
                    let offset = if spread > 0.0 {
                        rng.random_range(-spread..=spread)
                    } else {
                        0.0
                    };
                    let delay =
                        Duration::from_secs_f64((impairment.delay.as_secs_f64() + offset).max(0.0));
                    held.push(Reverse(Held {
                        due: Instant::now() + delay,
                        arrival: queued,
                        message,
                    }));
                    held_at_most = held_at_most.max(held.len());
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => break,
                Err(error) => return Err(error),
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse(next)| next.due <= now) {
            let Reverse(mut due) = held.pop().expect("peeked");
            due.message.set_verdict(nfq::Verdict::Accept);
            queue.verdict(due.message)?;
            passed += 1;
        }
        // No descriptor to poll (the nfq crate keeps it), so nap: 1 ms is
        // netem's own timer granularity and costs little CPU at test rates.
        let nap = held
            .peek()
            .map_or(Duration::from_millis(1), |Reverse(next)| {
                next.due.saturating_duration_since(now)
            })
            .min(Duration::from_millis(1));
        std::thread::sleep(nap);
    }
    while let Some(Reverse(mut left)) = held.pop() {
        left.message.set_verdict(nfq::Verdict::Accept);
        queue.verdict(left.message)?;
        passed += 1;
    }
    println!(
        "netem: queued {queued} dropped {dropped} passed {passed} held-at-most {held_at_most}"
    );
    Ok(())
}
