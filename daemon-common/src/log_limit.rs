//! Rate limits for log lines that bad input can cause (malformed IPFIX or
//! NetFlow v9, dropped records): a broken or hostile exporter or router must
//! not flood the log, yet the first lines and the scale of what was not
//! written must show. The collector's decoders and the relay's listeners
//! share this one limiter; each picks the rule that suits where it counts:
//!
//! - [`LogLimiter::per_interval`]: at most one line per interval, which
//!   carries how many lines it stands for. For a counter shared by many
//!   sessions (a relay listener), where only a clock bounds the rate.
//! - [`LogLimiter::first_then_powers_of_two`]: the first lines in full, then
//!   only the 2^k-th. For a counter per session (a collector decoder), where
//!   the total seen is the useful figure and lines thin out as it grows.

use std::time::{Duration, Instant};

/// Decides which of a run of similar log lines are written.
///
/// Only [`LogLimiter::per_interval`] reads the clock, and only when a line
/// is asked for: the other rule keeps sans-IO code (the collector's
/// decoder, run in virtual time by the simulation) free of clock reads.
#[derive(Debug)]
pub struct LogLimiter {
    rule: Rule,
    /// Lines asked for so far (written or not).
    occurrences: u64,
    /// Lines not written since the last one that was.
    suppressed: u64,
}

#[derive(Debug, Clone, Copy)]
enum Rule {
    /// `next`: when the next line may be written; `None`: at once.
    PerInterval {
        interval: Duration,
        next: Option<Instant>,
    },
    FirstThenPowersOfTwo(u64),
}

/// A line may be written; what it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Lines asked for so far, this one included.
    pub occurrences: u64,
    /// Lines not written since the previous written one.
    pub suppressed: u64,
}

impl LogLimiter {
    /// At most one line per `interval`; the first one at once.
    pub fn per_interval(interval: Duration) -> Self {
        Self::new(Rule::PerInterval {
            interval,
            next: None,
        })
    }

    /// The first `full` lines, then the lines whose number is a power of two.
    pub fn first_then_powers_of_two(full: u64) -> Self {
        Self::new(Rule::FirstThenPowersOfTwo(full))
    }

    fn new(rule: Rule) -> Self {
        Self {
            rule,
            occurrences: 0,
            suppressed: 0,
        }
    }

    /// Counts one line; `Some` when it may be written.
    pub fn allow(&mut self) -> Option<Allowed> {
        self.occurrences += 1;
        let write = match &mut self.rule {
            Rule::PerInterval { interval, next } => {
                let now = Instant::now();
                let due = next.is_none_or(|next| now >= next);
                if due {
                    *next = Some(now + *interval);
                }
                due
            }
            Rule::FirstThenPowersOfTwo(full) => {
                self.occurrences <= *full || self.occurrences.is_power_of_two()
            }
        };
        if !write {
            self.suppressed += 1;
            return None;
        }
        Some(Allowed {
            occurrences: self.occurrences,
            suppressed: std::mem::take(&mut self.suppressed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_interval_writes_one_line_and_counts_the_rest() {
        let mut limiter = LogLimiter::per_interval(Duration::from_secs(3600));
        assert_eq!(
            limiter.allow(),
            Some(Allowed {
                occurrences: 1,
                suppressed: 0
            })
        );
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        limiter.rule = Rule::PerInterval {
            interval: Duration::from_secs(3600),
            next: Some(Instant::now()),
        };
        assert_eq!(
            limiter.allow(),
            Some(Allowed {
                occurrences: 4,
                suppressed: 2
            })
        );
    }

    #[test]
    fn first_lines_then_powers_of_two() {
        let mut limiter = LogLimiter::first_then_powers_of_two(3);
        let written: Vec<u64> = (0..40)
            .filter_map(|_| limiter.allow())
            .map(|a| a.occurrences)
            .collect();
        assert_eq!(written, [1, 2, 3, 4, 8, 16, 32]);
    }
}
