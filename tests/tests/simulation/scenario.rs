//! What happens in one simulated run, drawn from its seed: the pool's
//! shape, the network's delay and loss, the input, and the fault schedule.
//! The schedule is fixed before the run starts (partitions know their end),
//! so the network can compute delivery times without looking ahead.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The process-level scenarios the simulation ports, plus a mix of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// tests/tests/failover.rs: the primary is killed, the exporter fails
    /// over to the backup, the primary comes back and the exporter fails
    /// back to it.
    PrimaryKilled,
    /// Collectors killed (SIGKILL) and restarted over and over, sometimes
    /// stopped gracefully instead, sometimes with a stalled disk.
    CollectorsKilledRepeatedly,
    /// Partitions between an exporter and a collector, some shorter than
    /// the association's failure threshold (only delay), some longer.
    Partitions,
    /// Everything above plus exporter crashes and restarts and registrar
    /// crashes and restarts.
    Mixed,
}

impl Kind {
    /// The test function running this kind (for the reproduce line).
    pub fn test_name(self) -> &'static str {
        match self {
            Kind::PrimaryKilled => "primary_killed_fails_over_and_back",
            Kind::CollectorsKilledRepeatedly => "collectors_killed_repeatedly",
            Kind::Partitions => "partitions_between_exporter_and_collectors",
            Kind::Mixed => "mixed_faults_with_exporter_crashes",
        }
    }
}

/// One fault, at a point of virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL: volatile state gone, the SQLite store stays.
    CrashCollector(usize),
    /// The collector process starts again on its store.
    RestartCollector(usize),
    /// SIGTERM: graceful stop (final cookies, deregistration), then down.
    StopCollector(usize),
    /// The collector's disk stalls: no commit completes for this long
    /// (the exporter's cookie timeout may fail over from a live collector,
    /// which then stores what it received after all).
    StallCollector(usize, Duration),
    /// The registrar process dies: its handlespace is gone.
    CrashRegistrar,
    /// It starts again, empty: pool elements register again.
    RestartRegistrar,
    /// The exporter process dies: only its persisted state survives.
    CrashExporter(usize),
    /// The exporter starts again from its persisted state.
    RestartExporter(usize),
}

/// Nothing passes between `exporter` and `collector` during `from..until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// The exporter's index.
    pub exporter: usize,
    /// The collector's index.
    pub collector: usize,
    /// Start (virtual time).
    pub from: Duration,
    /// End (virtual time).
    pub until: Duration,
}

/// A node that talks ASAP to the registrar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsapNode {
    /// A collector (its pool element), by index.
    Collector(usize),
    /// An exporter (its pool user), by index.
    Exporter(usize),
}

/// Nothing passes between the registrar and `node` during `from..until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrarPartition {
    /// The node cut off from the registrar.
    pub node: AsapNode,
    /// Start (virtual time).
    pub from: Duration,
    /// End (virtual time).
    pub until: Duration,
}

/// Network behaviour of the run.
#[derive(Debug, Clone, Copy)]
pub struct NetworkModel {
    /// One-way latency, lower bound.
    pub latency_min: Duration,
    /// One-way latency, upper bound.
    pub latency_max: Duration,
    /// Probability that one transmission of a message is lost (SCTP then
    /// retransmits it after `rto`, doubling).
    pub loss: f64,
    /// First retransmission timeout.
    pub rto: Duration,
    /// Retransmissions of one message after which the association fails
    /// (SCTP's Association.Max.Retrans, small here).
    pub max_retransmissions: u32,
    /// How long an association survives a path that delivers nothing
    /// before it fails (a partition shorter than this is only delay).
    pub failure_threshold: Duration,
    /// How long a dead peer takes to be noticed by the other end of an
    /// association, lower and upper bound.
    pub detect_min: Duration,
    /// See `detect_min`.
    pub detect_max: Duration,
    /// Longest a connect attempt to an unreachable PE takes to fail.
    pub connect_timeout: Duration,
    /// Registrar round trip (handle resolution, failback checks).
    pub registrar_rtt: Duration,
    /// How often the registrar sends a PE an Endpoint Keep Alive ...
    pub keepalive_period: Duration,
    /// ... and how long it waits for the Ack before removing the PE.
    pub keepalive_timeout: Duration,
    /// SQLite commit latency of the collectors' writers.
    pub commit_latency: Duration,
}

/// The exporter's timers and sizes (`ExporterConfig`), drawn around what
/// the process-level tests configure.
#[derive(Debug, Clone, Copy)]
pub struct ExporterTimers {
    /// No cookie progress for this long: fail over.
    pub cookie_timeout: Duration,
    /// Failback poll period.
    pub failback_check: Duration,
    /// Longest drain before a failback.
    pub drain_timeout: Duration,
    /// Wait before selecting again when nothing is reachable.
    pub retry_interval: Duration,
    /// No failback to a PE within this long of its failure.
    pub failback_holdoff: Duration,
    /// Cookies persisted at most this often.
    pub state_sync_interval: Duration,
    /// Sequences reserved per state write.
    pub sequence_reservation: u64,
}

/// One simulated run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The seed everything was drawn from.
    pub seed: u64,
    /// What is being ported.
    pub kind: Kind,
    /// Collector priorities (Priority policy), index = collector.
    pub collector_priorities: Vec<u32>,
    /// Records each exporter takes in, index = exporter.
    pub exporter_records: Vec<u64>,
    /// Observation domains each exporter streams (records go round robin).
    pub domains: Vec<u32>,
    /// Records taken in per input tick, and the tick.
    pub input_burst: u64,
    /// See `input_burst`.
    pub input_interval: Duration,
    /// Replay buffer size per domain (back-pressure beyond it).
    pub replay_records: usize,
    /// Faults, in time order.
    pub faults: Vec<(Duration, Fault)>,
    /// Partitions between exporters and collectors.
    pub partitions: Vec<Partition>,
    /// Partitions between the registrar and a collector or an exporter.
    pub registrar_partitions: Vec<RegistrarPartition>,
    /// After this every fault is over: crashed nodes are restarted and the
    /// stream must finish.
    pub faults_end: Duration,
    /// The network.
    pub network: NetworkModel,
    /// The exporters' timers.
    pub exporter_timers: ExporterTimers,
    /// Version 2 cookies: each collector signs with its own Ed25519 key
    /// and exporters check every cookie against the pool's public keys
    /// (slow in a debug build, so only in some seeds); otherwise version 1
    /// (HMAC) cookies the exporter cannot check.
    pub signed_cookies: bool,
    /// Durable intake (`[buffer] durable`) with this many records per
    /// journal segment; `None`: memory only.
    pub journal_segment_records: Option<usize>,
    /// A replay spill behind a memory window of this many records per
    /// domain (`replay_records` in all); `None`: memory only.
    pub spill_window: Option<usize>,
}

/// When the exporters start: after the collectors registered.
pub const EXPORTERS_START: Duration = Duration::from_secs(1);

fn millis(rng: &mut StdRng, from: u64, to: u64) -> Duration {
    Duration::from_millis(rng.random_range(from..=to))
}

impl Scenario {
    /// Draws the run of `seed` for `kind`.
    pub fn generate(kind: Kind, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let latency_min = millis(&mut rng, 0, 5);
        let network = NetworkModel {
            latency_min,
            latency_max: latency_min + millis(&mut rng, 0, 20),
            // Mostly a clean or slightly lossy network; sometimes a bad one
            // on which retransmissions run out and associations fail.
            loss: match rng.random_range(0..10) {
                0..=2 => 0.0,
                3..=8 => rng.random_range(0.0..0.05),
                _ => rng.random_range(0.1..0.35),
            },
            rto: millis(&mut rng, 50, 300),
            max_retransmissions: 5,
            failure_threshold: millis(&mut rng, 800, 3000),
            detect_min: millis(&mut rng, 100, 500),
            detect_max: millis(&mut rng, 600, 4000),
            connect_timeout: millis(&mut rng, 200, 2000),
            registrar_rtt: millis(&mut rng, 1, 50),
            keepalive_period: millis(&mut rng, 500, 5000),
            keepalive_timeout: millis(&mut rng, 200, 3000),
            commit_latency: millis(&mut rng, 1, 30),
        };
        let collectors = match kind {
            Kind::PrimaryKilled => 2,
            _ => rng.random_range(2..=3),
        };
        // Distinct priorities, the first collector highest: it is the
        // preferred primary.
        let collector_priorities: Vec<u32> = (0..collectors).map(|i| 100 - 10 * i as u32).collect();
        let exporters = match kind {
            Kind::Mixed => rng.random_range(1..=2),
            _ => 1,
        };
        let exporter_records = (0..exporters)
            .map(|_| rng.random_range(600..=1800))
            .collect();
        let domains = if rng.random_bool(0.3) {
            vec![1, 2]
        } else {
            vec![1]
        };
        let input_burst = rng.random_range(5..=40);
        let input_interval = millis(&mut rng, 5, 20);
        let replay_records = if rng.random_bool(0.3) {
            rng.random_range(64..=512)
        } else {
            100_000
        };
        let exporter_timers = ExporterTimers {
            cookie_timeout: millis(&mut rng, 1000, 3000),
            failback_check: millis(&mut rng, 200, 1000),
            drain_timeout: millis(&mut rng, 2000, 5000),
            retry_interval: millis(&mut rng, 200, 1000),
            failback_holdoff: millis(&mut rng, 500, 2000),
            state_sync_interval: millis(&mut rng, 50, 500),
            sequence_reservation: rng.random_range(50..=5000),
        };
        let mut scenario = Self {
            seed,
            kind,
            collector_priorities,
            exporter_records,
            domains,
            input_burst,
            input_interval,
            replay_records,
            faults: Vec::new(),
            partitions: Vec::new(),
            registrar_partitions: Vec::new(),
            faults_end: Duration::ZERO,
            network,
            exporter_timers,
            journal_segment_records: (kind == Kind::Mixed && rng.random_bool(0.5))
                .then(|| rng.random_range(16..=512)),
            signed_cookies: rng.random_bool(0.01),
            spill_window: None,
        };
        scenario.draw_faults(&mut rng);
        // Drawn last, so every earlier draw of a seed stays what it was.
        scenario.spill_window = rng
            .random_bool(0.3)
            .then(|| rng.random_range(8..=64).min(scenario.replay_records));
        scenario
    }

    fn collectors(&self) -> usize {
        self.collector_priorities.len()
    }

    fn draw_faults(&mut self, rng: &mut StdRng) {
        // The exporter is streaming to the primary by then.
        let start = EXPORTERS_START + millis(rng, 300, 1500);
        let mut end = start;
        match self.kind {
            Kind::PrimaryKilled => {
                // The primary dies while the stream runs and comes back
                // long enough before the end for the failback.
                let down = millis(rng, 500, 6000);
                let crash = if rng.random_bool(0.2) {
                    Fault::StopCollector(0)
                } else {
                    Fault::CrashCollector(0)
                };
                self.faults.push((start, crash));
                self.faults.push((start + down, Fault::RestartCollector(0)));
                end = start + down;
            }
            Kind::CollectorsKilledRepeatedly => {
                let mut at = start;
                for _ in 0..rng.random_range(2..=6) {
                    let victim = rng.random_range(0..self.collectors());
                    if rng.random_bool(0.15) {
                        let stall = millis(rng, 500, 5000);
                        self.faults.push((at, Fault::StallCollector(victim, stall)));
                        end = end.max(at + stall);
                        at += millis(rng, 100, 3000);
                        continue;
                    }
                    let fault = if rng.random_bool(0.25) {
                        Fault::StopCollector(victim)
                    } else {
                        Fault::CrashCollector(victim)
                    };
                    self.faults.push((at, fault));
                    let back = at + millis(rng, 50, 4000);
                    self.faults.push((back, Fault::RestartCollector(victim)));
                    end = end.max(back);
                    // The next kill may come before this one is back.
                    at += millis(rng, 100, 3000);
                }
            }
            Kind::Partitions => {
                self.draw_partitions(rng, start, &mut end, 1..=5);
                self.draw_registrar_partitions(rng, start, &mut end);
            }
            Kind::Mixed => {
                let mut at = start;
                for _ in 0..rng.random_range(1..=6) {
                    let fault_at = at;
                    match rng.random_range(0..6) {
                        5 => {
                            self.faults.push((fault_at, Fault::CrashRegistrar));
                            let back = fault_at + millis(rng, 100, 5000);
                            self.faults.push((back, Fault::RestartRegistrar));
                            end = end.max(back);
                        }
                        4 => {
                            let victim = rng.random_range(0..self.collectors());
                            let stall = millis(rng, 500, 5000);
                            self.faults
                                .push((fault_at, Fault::StallCollector(victim, stall)));
                            end = end.max(fault_at + stall);
                        }
                        0 => {
                            let exporter = rng.random_range(0..self.exporter_records.len());
                            self.faults.push((fault_at, Fault::CrashExporter(exporter)));
                            let back = fault_at + millis(rng, 10, 3000);
                            self.faults.push((back, Fault::RestartExporter(exporter)));
                            end = end.max(back);
                        }
                        1 if rng.random_bool(0.3) => {
                            let node = if rng.random_bool(0.5) {
                                AsapNode::Collector(rng.random_range(0..self.collectors()))
                            } else {
                                AsapNode::Exporter(rng.random_range(0..self.exporter_records.len()))
                            };
                            let until = fault_at + millis(rng, 100, 6000);
                            self.registrar_partitions.push(RegistrarPartition {
                                node,
                                from: fault_at,
                                until,
                            });
                            end = end.max(until);
                        }
                        1 => {
                            let until = fault_at + millis(rng, 100, 6000);
                            self.partitions.push(Partition {
                                exporter: rng.random_range(0..self.exporter_records.len()),
                                collector: rng.random_range(0..self.collectors()),
                                from: fault_at,
                                until,
                            });
                            end = end.max(until);
                        }
                        kind => {
                            let victim = rng.random_range(0..self.collectors());
                            let fault = if kind == 2 {
                                Fault::CrashCollector(victim)
                            } else {
                                Fault::StopCollector(victim)
                            };
                            self.faults.push((fault_at, fault));
                            let back = fault_at + millis(rng, 50, 4000);
                            self.faults.push((back, Fault::RestartCollector(victim)));
                            end = end.max(back);
                        }
                    }
                    at += millis(rng, 50, 3000);
                }
            }
        }
        self.faults.sort_by_key(|(at, _)| *at);
        self.faults_end = end;
    }

    /// 0-2 partitions between the registrar and a node: a collector that
    /// misses its keep-alives is removed while exporters still reach it;
    /// an exporter cut off cannot resolve.
    fn draw_registrar_partitions(&mut self, rng: &mut StdRng, start: Duration, end: &mut Duration) {
        for _ in 0..rng.random_range(0..=2) {
            let node = if rng.random_bool(0.5) {
                AsapNode::Collector(rng.random_range(0..self.collectors()))
            } else {
                AsapNode::Exporter(rng.random_range(0..self.exporter_records.len()))
            };
            let from = start + millis(rng, 0, 6000);
            let until = from + millis(rng, 100, 8000);
            self.registrar_partitions
                .push(RegistrarPartition { node, from, until });
            *end = (*end).max(until);
        }
    }

    fn draw_partitions(
        &mut self,
        rng: &mut StdRng,
        start: Duration,
        end: &mut Duration,
        count: std::ops::RangeInclusive<usize>,
    ) {
        let mut at = start;
        for _ in 0..rng.random_range(count) {
            // Short ones are only delay, long ones fail the association.
            let length = if rng.random_bool(0.5) {
                millis(rng, 50, self.network.failure_threshold.as_millis() as u64)
            } else {
                millis(rng, 1000, 8000)
            };
            self.partitions.push(Partition {
                exporter: 0,
                collector: rng.random_range(0..self.collectors()),
                from: at,
                until: at + length,
            });
            *end = (*end).max(at + length);
            at += millis(rng, 100, 4000);
        }
    }
}
