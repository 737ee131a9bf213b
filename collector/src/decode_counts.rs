//! What a [`crate::decoder::SessionDecoder`] counted: messages, records,
//! malformed messages by reason and records lost in sequence gaps.
//!
//! The decoder is sans-IO, so it counts into this plain value instead of
//! the global metrics registry; the driver that owns the decoder takes the
//! counts ([`crate::decoder::SessionDecoder::take_counts`]) and publishes
//! them ([`DecodeCounts::publish`]) at its own pace: the UDP receiver once
//! per batch handed to the writer, the stream sessions after each message
//! (docs/architecture.md, "Metrics").

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
        match self.errors.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((reason, 1)),
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
            match self.errors.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, total)) => *total += n,
                None => self.errors.push((reason, n)),
            }
        }
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        self.messages == 0
            && self.records == 0
            && self.sequence_lost_records == 0
            && self.errors.is_empty()
    }

    /// Adds the counts to the process' metrics (a driver's job):
    /// `poolflow_collector_messages_total{transport}`,
    /// `poolflow_collector_records_received_total{transport}`,
    /// `poolflow_collector_decode_errors_total{reason}` and
    /// `poolflow_collector_sequence_lost_records_total`.
    pub fn publish(&self) {
        if self.is_zero() {
            return;
        }
        let transport = self.transport;
        if self.messages > 0 {
            metrics::counter!("poolflow_collector_messages_total", "transport" => transport)
                .increment(self.messages);
        }
        if self.records > 0 {
            metrics::counter!("poolflow_collector_records_received_total", "transport" => transport)
                .increment(self.records);
        }
        if self.sequence_lost_records > 0 {
            metrics::counter!("poolflow_collector_sequence_lost_records_total")
                .increment(self.sequence_lost_records);
        }
        for &(reason, n) in &self.errors {
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
