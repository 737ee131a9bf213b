//! The collector side of billing continuity (docs/billing-continuity.md):
//! per association the Cookie Echo received and the Cookies owed
//! ([`AssociationBilling`]), and the keys cookies are signed and checked
//! with ([`CookieSigner`]). What the store holds is the [`Ledger`]
//! (`ledger.rs`). Pure logic; the session (`session.rs`) decides with it,
//! the store and the drivers do the IO.
//!
//! Depends on `batch` and `ledger` only.

use std::collections::HashMap;

use protocol::billing::{
    BillingCookie, CookieError, CookieKeys, CookieMessageKind, SequenceExtender,
};
use protocol::signing::SigningKey;

use crate::batch::{RecordBlock, TotalsReport};
// Re-exported where they lived before `batch` and `ledger` were split off.
pub use crate::batch::{BillingTag, Handover};
pub use crate::ledger::{Ledger, MAX_ECHOED_SEQUENCE, RangeSet, SharedLedger, covered_through};

/// Signs cookies for this collector and checks the cookies exporters echo.
#[derive(Debug, Clone)]
pub struct CookieSigner {
    /// Ed25519 key: cookies are version 2, checkable by exporters. `None`:
    /// version 1 with the HMAC key of `trusted` (before the migration).
    pub signing_key: Option<SigningKey>,
    /// Keys a Cookie Echo may be signed with: the pool's public keys (any
    /// collector's cookie is a valid handover) and, during the migration,
    /// the old HMAC key.
    pub trusted: CookieKeys,
    /// The HMAC key, when version 1 cookies are signed with it.
    hmac_key: Option<Vec<u8>>,
    /// This collector's PE identifier, named in its cookies.
    pub pe_identifier: u32,
    /// Accept every well-formed Cookie Echo without checking it. Unsafe:
    /// only for tests that play a hostile or misconfigured pool element.
    pub trust_any_echo: bool,
}

impl CookieSigner {
    /// Version 1 cookies: HMAC with the pool's shared key, which also
    /// checks the echoes.
    pub fn hmac(key: Vec<u8>, pe_identifier: u32) -> Self {
        Self {
            signing_key: None,
            trusted: CookieKeys::default().with_hmac_key(key.clone()),
            hmac_key: Some(key),
            pe_identifier,
            trust_any_echo: false,
        }
    }

    /// Version 2 cookies signed with `key`; echoes are checked with
    /// `trusted` plus this key's own public half.
    pub fn ed25519(key: SigningKey, mut trusted: CookieKeys, pe_identifier: u32) -> Self {
        trusted.add_public_key(key.verifying_key());
        Self {
            signing_key: Some(key),
            trusted,
            hmac_key: None,
            pe_identifier,
            trust_any_echo: false,
        }
    }

    /// "Everything of (exporter, domain) through `through` is stored."
    pub fn sign(&self, exporter_id: u32, domain: u32, through: u64, now_ms: u64) -> BillingCookie {
        match (&self.signing_key, &self.hmac_key) {
            (Some(key), _) => BillingCookie::sign_ed25519(
                key,
                exporter_id,
                domain,
                through,
                self.pe_identifier,
                now_ms,
            ),
            (None, Some(key)) => BillingCookie::sign(
                key,
                exporter_id,
                domain,
                through,
                self.pe_identifier,
                now_ms,
            ),
            // Both constructors set one of the two.
            (None, None) => unreachable!("a CookieSigner holds a signing or an HMAC key"),
        }
    }
}

/// Why a Cookie Echo was refused (the association is then closed).
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// Not a well-formed (or not a validly signed) billing Cookie Echo.
    #[error("not a billing Cookie Echo: {0}")]
    Malformed(#[from] CookieError),
    /// The exporter sent a Cookie, which only collectors send.
    #[error("an ASAP Cookie (not Cookie Echo) from the exporter")]
    WrongDirection,
    /// A Cookie Echo for another exporter than the association's.
    #[error("cookie for exporter {got}, but this association belongs to exporter {expected}")]
    OtherExporter {
        /// The exporter of this association's first Cookie Echo.
        expected: u32,
        /// The exporter the cookie names.
        got: u32,
    },
    /// A cookie claiming a record sequence no exporter reaches (2^63 and
    /// beyond): only a broken signer writes one, and the sequences after it
    /// would overflow 64 bits (found by fuzzing).
    #[error("cookie claims record sequence {0}, beyond any exporter's range")]
    SequenceOutOfRange(u64),
}

impl EchoError {
    /// The `reason` label of `poolflow_collector_cookie_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(CookieError::BadHmac) => "cookie_bad_hmac",
            Self::Malformed(CookieError::BadSignature(_)) => "cookie_bad_signature",
            Self::Malformed(CookieError::UnknownKey(_)) => "cookie_unknown_key",
            Self::Malformed(CookieError::HmacNotTrusted) => "cookie_hmac_not_trusted",
            Self::Malformed(_) => "cookie_malformed",
            Self::WrongDirection => "cookie_wrong_direction",
            Self::OtherExporter { .. } => "cookie_other_exporter",
            Self::SequenceOutOfRange(_) => "cookie_sequence_out_of_range",
        }
    }
}

#[derive(Debug)]
struct DomainBilling {
    /// First record sequence this association is responsible for.
    start: u64,
    extender: SequenceExtender,
    last_cookie: Option<u64>,
    /// Highest record sequence received on this association.
    last_received: Option<u64>,
}

/// Billing state of one data association.
#[derive(Debug, Default)]
pub struct AssociationBilling {
    exporter_id: Option<u32>,
    domains: HashMap<u32, DomainBilling>,
}

impl AssociationBilling {
    /// The billing exporter of this association, once it echoed a cookie.
    pub fn exporter_id(&self) -> Option<u32> {
        self.exporter_id
    }

    /// Handles an ASAP message from the exporter. A validly signed cookie
    /// for this exporter is accepted even if this store already holds more
    /// (its own cookie got lost): the exporter then replays, the store drops
    /// what it has, and [`Self::cookies_due`] answers with the real point.
    pub fn on_cookie_echo(
        &mut self,
        asap: &[u8],
        signer: &CookieSigner,
        peer: &str,
        now_ms: i64,
    ) -> Result<Handover, EchoError> {
        let (kind, cookie) = protocol::billing::cookie_from_asap_bytes(asap)?;
        if kind != CookieMessageKind::CookieEcho {
            return Err(EchoError::WrongDirection);
        }
        if !cookie.introduction {
            if !signer.trust_any_echo {
                signer.trusted.verify(&cookie)?;
            }
            if cookie.last_record_sequence >= MAX_ECHOED_SEQUENCE {
                return Err(EchoError::SequenceOutOfRange(cookie.last_record_sequence));
            }
        }
        if let Some(expected) = self.exporter_id
            && expected != cookie.exporter_id
        {
            return Err(EchoError::OtherExporter {
                expected,
                got: cookie.exporter_id,
            });
        }
        self.exporter_id = Some(cookie.exporter_id);
        let start = cookie.next_record_sequence();
        self.domains.insert(
            cookie.domain,
            DomainBilling {
                start,
                extender: SequenceExtender::new(start),
                last_cookie: None,
                last_received: None,
            },
        );
        Ok(Handover {
            at_ms: now_ms,
            exporter_id: cookie.exporter_id,
            domain: cookie.domain,
            peer: peer.to_owned(),
            from_pe: (!cookie.introduction).then_some(cookie.pe_identifier),
            to_pe: signer.pe_identifier,
            record_sequence: (!cookie.introduction).then_some(cookie.last_record_sequence),
        })
    }

    /// Record sequence of the first record of a message of `domain` whose
    /// IPFIX header carries `message_sequence`; `None` for a domain the
    /// exporter did not announce (not billing data).
    pub fn message_base(&mut self, domain: u32, message_sequence: u32) -> Option<u64> {
        let d = self.domains.get_mut(&domain)?;
        Some(d.extender.extend(message_sequence))
    }

    /// Tags the blocks decoded from one message with their billing exporter
    /// and first record sequence (blocks of domains the exporter did not
    /// announce stay untagged) and notes them as received. Shared by every
    /// billing transport session and by the fuzz target.
    pub fn tag_blocks(&mut self, blocks: &mut [RecordBlock]) {
        for block in blocks {
            let Some(exporter_id) = self.exporter_id else {
                return;
            };
            if let Some(base) = self.message_base(block.domain, block.message_sequence) {
                let first = base + block.first_record_index as u64;
                block.billing = Some(BillingTag {
                    exporter_id,
                    first_record_sequence: first,
                });
                if block.record_count > 0 {
                    self.note_received(block.domain, first + block.record_count as u64 - 1);
                }
            }
        }
    }

    /// The billing exporter and the first record sequence this association
    /// is responsible for in `domain` (after the echoed cookie), if the
    /// exporter announced the domain with a Cookie Echo.
    pub fn domain_start(&self, domain: u32) -> Option<(u32, u64)> {
        Some((self.exporter_id?, self.domains.get(&domain)?.start))
    }

    /// Marks the reliability statistics of domains the exporter announced
    /// with a Cookie Echo as billing statistics (the writer reconciles them
    /// with the store). They come on the billing stream after the records
    /// they account for. Those naming another exporter than the Cookie Echo
    /// stay plain reports (kept as received, never a declaration), logged;
    /// returns how many those were, for the driver to count.
    pub fn attach_statistics(&self, totals: &mut [TotalsReport]) -> u64 {
        let mut refused = 0;
        for report in totals {
            let Some((exporter, start)) = self.domain_start(report.stats.observation_domain_id)
            else {
                continue;
            };
            if report.stats.exporting_process_id != exporter {
                refused += 1;
                tracing::warn!(peer = %report.peer, exporter,
                      claimed = report.stats.exporting_process_id,
                      "reliability statistics name another exporter than the Cookie Echo: not reconciled");
                continue;
            }
            report.billing = Some((exporter, start));
        }
        refused
    }

    /// Notes that records through `last` arrived (they go to the writer).
    pub fn note_received(&mut self, domain: u32, last: u64) {
        if let Some(d) = self.domains.get_mut(&domain) {
            d.last_received = Some(d.last_received.map_or(last, |l| l.max(last)));
        }
    }

    /// Whether every record received here has been acknowledged by a
    /// cookie: a graceful stop waits for this, so the exporter need not
    /// replay what this store already holds.
    pub fn all_acknowledged(&self) -> bool {
        self.domains
            .values()
            .all(|d| match (d.last_received, d.last_cookie) {
                (None, _) => true,
                (Some(received), Some(cookie)) => cookie >= received,
                (Some(_), None) => false,
            })
    }

    /// Cookies owed: for each domain, when the store holds every record from
    /// this association's start through a point beyond the last cookie
    /// sent, a cookie naming that point. Returns ASAP Cookie messages.
    pub fn cookies_due(
        &mut self,
        ledger: &Ledger,
        signer: &CookieSigner,
        now_ms: i64,
    ) -> Vec<Vec<u8>> {
        let Some(exporter_id) = self.exporter_id else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (&domain, d) in &mut self.domains {
            let Some(through) = ledger.covered_through((exporter_id, domain), d.start) else {
                continue;
            };
            // Never beyond what the exporter sent on this association, even
            // when the store holds more from an earlier one: an exporter
            // refuses such a claim (a hostile collector could make it about
            // records it never saw). The replay of those records is
            // dropped as duplicates and acknowledged at its commit. Ranges
            // the exporter declared never to be sent lie below its send
            // cursor too, so a cookie may pass over them.
            let declared_end = ledger
                .declared
                .get(&(exporter_id, domain))
                .and_then(|set| set.ranges().map(|(_, end)| end).max());
            let Some(limit) = d.last_received.max(declared_end) else {
                continue;
            };
            let through = through.min(limit);
            if d.last_cookie.is_some_and(|last| last >= through) {
                continue;
            }
            d.last_cookie = Some(through);
            let cookie = signer.sign(exporter_id, domain, through, now_ms.max(0) as u64);
            out.push(cookie.cookie_message_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_pass_over_declared_ranges_but_not_over_holes() {
        let mut a = AssociationBilling::default();
        let echo = BillingCookie::sign(b"pool key", 42, 1, 99, 3, 1);
        a.on_cookie_echo(&echo.cookie_echo_message_bytes(), &signer(), "p", 1)
            .unwrap();
        assert_eq!(a.domain_start(1), Some((42, 100)));
        assert_eq!(a.domain_start(2), None);
        let mut ledger = Ledger::default();
        ledger.stored.entry((42, 1)).or_default().insert(100, 149);
        ledger.stored.entry((42, 1)).or_default().insert(300, 399);
        // Received on this association (cookies never claim more).
        a.note_received(1, 399);
        let last = |a: &mut AssociationBilling, ledger: &Ledger| {
            let due = a.cookies_due(ledger, &signer(), 2);
            due.last().map(|c| {
                protocol::billing::cookie_from_asap_bytes(c)
                    .unwrap()
                    .1
                    .last_record_sequence
            })
        };
        assert_eq!(last(&mut a, &ledger), Some(149), "150..=299 missing");
        // The exporter declares 150..=249 lost: still a hole at 250.
        ledger.declared.entry((42, 1)).or_default().insert(150, 249);
        assert_eq!(last(&mut a, &ledger), Some(249));
        ledger.declared.entry((42, 1)).or_default().insert(250, 299);
        assert_eq!(last(&mut a, &ledger), Some(399), "declared, then stored");
        // A declared range overlapping stored records changes nothing.
        let mut s = RangeSet::default();
        s.insert(0, 10);
        let mut d = RangeSet::default();
        d.insert(5, 20);
        assert_eq!(covered_through(Some(&s), Some(&d), 0), Some(20));
        assert_eq!(covered_through(Some(&s), Some(&d), 21), None);
    }

    #[test]
    fn statistics_of_announced_domains_of_this_exporter_are_billing() {
        use protocol::ipfix::reliability::ReliabilityStatistics;
        let mut a = AssociationBilling::default();
        let echo = BillingCookie::sign(b"pool key", 42, 1, 99, 3, 1);
        a.on_cookie_echo(&echo.cookie_echo_message_bytes(), &signer(), "p", 1)
            .unwrap();
        let report = |exporter, domain| TotalsReport {
            peer: "p".into(),
            transport: "sctp",
            received_ms: 0,
            stats: ReliabilityStatistics {
                exporting_process_id: exporter,
                observation_domain_id: domain,
                exported_messages: 0,
                exported_records: 100,
                not_sent_records: 50,
                system_init_ms: 0,
                observation_ms: 0,
            },
            billing: None,
        };
        let mut totals = vec![report(42, 1), report(42, 2), report(43, 1)];
        a.attach_statistics(&mut totals);
        let billing: Vec<_> = totals.iter().map(|t| t.billing).collect();
        assert_eq!(billing, [Some((42, 100)), None, None]);
    }

    fn signer() -> CookieSigner {
        CookieSigner::hmac(b"pool key".to_vec(), 7)
    }

    #[test]
    fn echo_then_cookies_follow_the_ledger() {
        let mut a = AssociationBilling::default();
        let echo = BillingCookie::introduction(42, 1).cookie_echo_message_bytes();
        let h = a.on_cookie_echo(&echo, &signer(), "peer", 5).unwrap();
        assert_eq!(
            (h.exporter_id, h.from_pe, h.record_sequence),
            (42, None, None)
        );
        assert_eq!(a.message_base(1, 0), Some(0));
        assert_eq!(a.message_base(2, 0), None, "domain not announced");
        let mut ledger = Ledger::default();
        assert!(a.cookies_due(&ledger, &signer(), 6).is_empty());
        ledger.stored.entry((42, 1)).or_default().insert(0, 57);
        assert!(
            a.cookies_due(&ledger, &signer(), 6).is_empty(),
            "stored, but not (yet) received on this association"
        );
        a.note_received(1, 57);
        let cookies = a.cookies_due(&ledger, &signer(), 7);
        assert_eq!(cookies.len(), 1);
        let (_, c) = protocol::billing::cookie_from_asap_bytes(&cookies[0]).unwrap();
        c.verify(b"pool key").unwrap();
        assert_eq!(
            (
                c.exporter_id,
                c.domain,
                c.last_record_sequence,
                c.pe_identifier
            ),
            (42, 1, 57, 7)
        );
        // No progress, no new cookie.
        assert!(a.cookies_due(&ledger, &signer(), 8).is_empty());
        a.note_received(1, 60);
        assert!(!a.all_acknowledged(), "58..=60 not acknowledged yet");
        ledger.stored.entry((42, 1)).or_default().insert(58, 60);
        assert_eq!(a.cookies_due(&ledger, &signer(), 9).len(), 1);
        assert!(a.all_acknowledged());
    }

    #[test]
    fn signed_echo_starts_after_its_sequence_and_forged_ones_fail() {
        let mut a = AssociationBilling::default();
        let good = BillingCookie::sign(b"pool key", 42, 1, 999, 3, 1);
        let h = a
            .on_cookie_echo(&good.cookie_echo_message_bytes(), &signer(), "p", 1)
            .unwrap();
        assert_eq!((h.from_pe, h.record_sequence), (Some(3), Some(999)));
        let mut ledger = Ledger::default();
        // Records before 1000 are elsewhere: this store's 1000..1999 count.
        ledger.stored.entry((42, 1)).or_default().insert(1000, 1999);
        a.note_received(1, 1999);
        let (_, c) =
            protocol::billing::cookie_from_asap_bytes(&a.cookies_due(&ledger, &signer(), 2)[0])
                .unwrap();
        assert_eq!(c.last_record_sequence, 1999);

        let forged = BillingCookie::sign(b"other key", 42, 1, 5, 3, 1);
        let err = AssociationBilling::default()
            .on_cookie_echo(&forged.cookie_echo_message_bytes(), &signer(), "p", 1)
            .unwrap_err();
        assert_eq!(err.reason(), "cookie_bad_hmac");
        let other = BillingCookie::sign(b"pool key", 43, 1, 5, 3, 1);
        let err = a
            .on_cookie_echo(&other.cookie_echo_message_bytes(), &signer(), "p", 1)
            .unwrap_err();
        assert_eq!(err.reason(), "cookie_other_exporter");
    }

    fn ed25519(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn cookies_never_claim_more_than_this_association_received() {
        let mut a = AssociationBilling::default();
        let echo = BillingCookie::introduction(42, 1).cookie_echo_message_bytes();
        a.on_cookie_echo(&echo, &signer(), "peer", 5).unwrap();
        let mut ledger = Ledger::default();
        // Held from an earlier association: 0..=999.
        ledger.stored.entry((42, 1)).or_default().insert(0, 999);
        a.note_received(1, 400);
        let (_, c) =
            protocol::billing::cookie_from_asap_bytes(&a.cookies_due(&ledger, &signer(), 6)[0])
                .unwrap();
        assert_eq!(c.last_record_sequence, 400);
        a.note_received(1, 999);
        let (_, c) =
            protocol::billing::cookie_from_asap_bytes(&a.cookies_due(&ledger, &signer(), 7)[0])
                .unwrap();
        assert_eq!(c.last_record_sequence, 999);
    }

    #[test]
    fn v2_signer_signs_with_ed25519_and_accepts_pool_keys_and_migrating_hmac() {
        let (own, peer, stranger) = (ed25519(1), ed25519(2), ed25519(3));
        let mut pool = CookieKeys::default().with_hmac_key(b"pool key".to_vec());
        pool.add_public_key(peer.verifying_key());
        let me = CookieSigner::ed25519(own.clone(), pool, 9);
        // Its cookies are version 2 and check with its public key alone.
        let mut a = AssociationBilling::default();
        let echo = BillingCookie::introduction(42, 1).cookie_echo_message_bytes();
        a.on_cookie_echo(&echo, &me, "p", 1).unwrap();
        let mut ledger = Ledger::default();
        ledger.stored.entry((42, 1)).or_default().insert(0, 9);
        a.note_received(1, 9);
        let (_, c) =
            protocol::billing::cookie_from_asap_bytes(&a.cookies_due(&ledger, &me, 2)[0]).unwrap();
        assert_eq!(c.version, protocol::billing::COOKIE_VERSION_ED25519);
        let mut exporter_keys = CookieKeys::default();
        exporter_keys.add_public_key(own.verifying_key());
        assert_eq!(exporter_keys.verify(&c), Ok(()));
        // Echoes: its own, a pool peer's, and the old HMAC cookies.
        for cookie in [
            BillingCookie::sign_ed25519(&own, 42, 1, 5, 9, 1),
            BillingCookie::sign_ed25519(&peer, 42, 1, 5, 8, 1),
            BillingCookie::sign(b"pool key", 42, 1, 5, 7, 1),
        ] {
            AssociationBilling::default()
                .on_cookie_echo(&cookie.cookie_echo_message_bytes(), &me, "p", 1)
                .unwrap();
        }
        let err = AssociationBilling::default()
            .on_cookie_echo(
                &BillingCookie::sign_ed25519(&stranger, 42, 1, 5, 6, 1).cookie_echo_message_bytes(),
                &me,
                "p",
                1,
            )
            .unwrap_err();
        assert_eq!(err.reason(), "cookie_unknown_key");
        // Without the HMAC key (migration over) v1 echoes are refused.
        let done = CookieSigner::ed25519(own, CookieKeys::default(), 9);
        let err = AssociationBilling::default()
            .on_cookie_echo(
                &BillingCookie::sign(b"pool key", 42, 1, 5, 7, 1).cookie_echo_message_bytes(),
                &done,
                "p",
                1,
            )
            .unwrap_err();
        assert_eq!(err.reason(), "cookie_hmac_not_trusted");
    }

    #[test]
    fn trust_any_echo_accepts_what_no_key_signed() {
        let mut hostile = CookieSigner::ed25519(ed25519(5), CookieKeys::default(), 66);
        let forged = BillingCookie::sign(b"nobody's key", 42, 1, 5, 7, 1);
        assert!(
            AssociationBilling::default()
                .on_cookie_echo(&forged.cookie_echo_message_bytes(), &hostile, "p", 1)
                .is_err()
        );
        hostile.trust_any_echo = true;
        let h = AssociationBilling::default()
            .on_cookie_echo(&forged.cookie_echo_message_bytes(), &hostile, "p", 1)
            .unwrap();
        assert_eq!(h.record_sequence, Some(5));
    }
}
