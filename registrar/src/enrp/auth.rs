//! ENRP message authentication (`docs/enrp-security.md`): the HMAC-SHA-256
//! signature of every message we send, its sequence taken from the wall
//! clock, and the check of every message we receive (a configured key, a
//! fresh sequence not seen before from that sender) before it is decoded.

use std::net::SocketAddr;
use std::time::Instant;

use protocol::rserpool::enrp::{Message, auth};

use super::Enrp;

/// Signed sequences remembered per sender: a message may arrive up to this
/// many messages late (two associations briefly in flight) and still count.
const REPLAY_WINDOW: usize = 64;

impl Enrp {
    /// The wall clock at `now`, in microseconds since the Unix epoch (see
    /// [`Enrp::set_wall_clock`]).
    fn unix_us(&self, now: Instant) -> u64 {
        let (anchor, anchor_us) = self.wall_clock;
        let since = now.saturating_duration_since(anchor).as_micros();
        anchor_us.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// Authenticates and decodes one ENRP datagram or message from `from`;
    /// `None` (counted and logged with the source and the reason) when it is
    /// not a valid, authentic ENRP message. `what` names the channel in logs.
    pub(super) fn authenticated_message(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        what: &str,
    ) -> Option<Message> {
        if let Err(reason) = self.authenticate(now, bytes) {
            self.count_auth_rejected(from, bytes, reason);
            return None;
        }
        match Message::decode_with(bytes, &self.config.decode_limits) {
            Ok(decoded) => Some(decoded.message),
            Err(error) => {
                let reason = error.reason();
                tracing::warn!(%from, %error, reason, "malformed {what} message dropped");
                self.count_malformed(reason);
                None
            }
        }
    }

    /// Signs `payload`, an encoded message we send (`name` its type, for the
    /// log), when the configuration has `auth`; `false` (logged) when it
    /// cannot be signed and must not be sent.
    pub(super) fn sign_outgoing(&mut self, payload: &mut Vec<u8>, name: &str) -> bool {
        if let Some(keys) = &self.config.auth {
            // Strictly increasing even when the clock stands still or
            // steps back, so a receiver never takes ours for a replay.
            let sequence = self.unix_us(self.latest).max(self.last_sequence + 1);
            if let Err(error) = auth::sign(payload, keys.key_id, &keys.key, sequence) {
                tracing::warn!(%error, message = name, "ENRP message cannot be signed: not sent");
                return false;
            }
            self.last_sequence = sequence;
        }
        true
    }

    /// Checks a received message's authentication (before it is decoded).
    fn authenticate(&mut self, now: Instant, bytes: &[u8]) -> Result<(), &'static str> {
        let Some(keys) = &self.config.auth else {
            return Ok(());
        };
        let mut candidates: Vec<(u32, &[u8])> = Vec::with_capacity(1 + keys.accepted_keys.len());
        candidates.push((keys.key_id, &keys.key));
        candidates.extend(
            keys.accepted_keys
                .iter()
                .map(|(id, key)| (*id, key.as_slice())),
        );
        let signed = match auth::verify(bytes, &candidates) {
            Ok(signed) => signed,
            Err(auth::AuthError::Missing) if keys.accept_unsigned => return Ok(()),
            Err(error) => return Err(error.reason()),
        };
        let local = self.unix_us(now);
        let skew = u64::try_from(keys.max_clock_skew.as_micros()).unwrap_or(u64::MAX);
        if signed.sequence.abs_diff(local) > skew {
            return Err("stale");
        }
        let recent = self.replay.entry(signed.sender_server_id).or_default();
        let too_old = recent.len() >= REPLAY_WINDOW
            && recent
                .first()
                .is_some_and(|&oldest| signed.sequence <= oldest);
        if too_old || !recent.insert(signed.sequence) {
            return Err("replay");
        }
        if recent.len() > REPLAY_WINDOW {
            recent.pop_first();
        }
        Ok(())
    }

    fn count_auth_rejected(&mut self, from: SocketAddr, bytes: &[u8], reason: &'static str) {
        let count = self
            .counters
            .auth_rejected
            .entry(reason.to_string())
            .or_default();
        *count += 1;
        let count = *count;
        // Whoever forges messages controls how many arrive: log the first
        // ones of each reason, then every thousandth.
        if count <= 10 || count % 1000 == 0 {
            // Unverified, but it tells the operator who claims to send.
            let claimed_sender = bytes
                .get(4..8)
                .map(|id| u32::from_be_bytes(id.try_into().expect("4 bytes")));
            tracing::warn!(
                %from,
                claimed_sender = ?claimed_sender.map(|id| format!("{id:#010x}")),
                reason,
                count,
                "ENRP message failed authentication: dropped"
            );
        }
    }
}
