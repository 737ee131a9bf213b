//! What a [`crate::decoder::SessionDecoder`] counted: messages, records,
//! malformed messages by reason and records lost in sequence gaps.
//!
//! The decoder is sans-IO, so it counts into this plain value instead of
//! the global metrics registry; the driver that owns the decoder takes the
//! counts ([`crate::decoder::SessionDecoder::take_counts`]) and publishes
//! them through its [`DecodeMetrics`] at its own pace: the UDP receiver once
//! per batch handed to the writer, the TCP sessions at each flush, the SCTP
//! sessions after each input (docs/architecture.md, "Crates and the sans-IO
//! rule").

/// Counts of one decoder since they were last taken.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DecodeCounts {
    /// Transport label of the counted messages (`udp`, `tcp`, `sctp`).
    pub transport: &'static str,
    /// IPFIX messages decoded (well-formed or not).
    pub messages: u64,
    /// Data records taken in (reliability statistics excluded).
    pub records: u64,
    /// Records lost in sequence gaps, tails included.
    pub sequence_lost_records: u64,
    /// Malformed messages or sets, by [`protocol::ipfix::DecodeError::reason`]:
    /// a short list, there are few reasons.
    pub errors: Vec<(&'static str, u64)>,
}

impl DecodeCounts {
    /// Counts one error of `reason`.
    pub fn count_error(&mut self, reason: &'static str) {
        self.add_errors(reason, 1);
    }

    fn add_errors(&mut self, reason: &'static str, n: u64) {
        match self.errors.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, total)) => *total += n,
            None => self.errors.push((reason, n)),
        }
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: DecodeCounts) {
        if self.transport.is_empty() {
            self.transport = other.transport;
        }
        self.messages += other.messages;
        self.records += other.records;
        self.sequence_lost_records += other.sequence_lost_records;
        for (reason, n) in other.errors {
            self.add_errors(reason, n);
        }
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        self.messages == 0
            && self.records == 0
            && self.sequence_lost_records == 0
            && self.errors.is_empty()
    }
}

/// A driver's handles on the decode metrics of one transport, registered
/// once, so that publishing costs atomic additions, not a registry look-up
/// per message (what the decoder's own handles cost before it counted into
/// [`DecodeCounts`]): `poolflow_collector_messages_total{transport}`,
/// `poolflow_collector_records_received_total{transport}`,
/// `poolflow_collector_sequence_lost_records_total` and, looked up when
/// they happen, `poolflow_collector_decode_errors_total{reason}`.
pub struct DecodeMetrics {
    transport: &'static str,
    messages: metrics::Counter,
    records: metrics::Counter,
    sequence_lost_records: metrics::Counter,
}

impl DecodeMetrics {
    /// Handles for the decoders of `transport` (`udp`, `tcp`, `sctp`: the
    /// session configuration's transport, as the decoder labels its counts).
    pub fn new(transport: &'static str) -> Self {
        Self {
            transport,
            messages: metrics::counter!("poolflow_collector_messages_total", "transport" => transport),
            records: metrics::counter!(
                "poolflow_collector_records_received_total", "transport" => transport),
            sequence_lost_records: metrics::counter!(
                "poolflow_collector_sequence_lost_records_total"
            ),
        }
    }

    /// Adds `counts` to the process' metrics.
    pub fn publish(&self, counts: &DecodeCounts) {
        if counts.is_zero() {
            return;
        }
        debug_assert_eq!(
            counts.transport, self.transport,
            "counts of another transport"
        );
        self.messages.increment(counts.messages);
        self.records.increment(counts.records);
        self.sequence_lost_records
            .increment(counts.sequence_lost_records);
        for &(reason, n) in &counts.errors {
            metrics::counter!("poolflow_collector_decode_errors_total", "reason" => reason)
                .increment(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_reason() {
        let mut a = DecodeCounts {
            transport: "udp",
            messages: 2,
            records: 40,
            ..DecodeCounts::default()
        };
        a.count_error("truncated");
        let mut b = DecodeCounts {
            transport: "udp",
            messages: 3,
            sequence_lost_records: 7,
            ..DecodeCounts::default()
        };
        b.count_error("truncated");
        b.count_error("unknown_version");
        a.add(b);
        assert_eq!(a.messages, 5);
        assert_eq!(a.records, 40);
        assert_eq!(a.sequence_lost_records, 7);
        assert_eq!(a.errors, vec![("truncated", 2), ("unknown_version", 1)]);
        assert!(!a.is_zero());
        assert!(DecodeCounts::default().is_zero());
    }
}
