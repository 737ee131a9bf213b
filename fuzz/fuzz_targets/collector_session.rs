//! The collector's billing transport session, sans-IO: what one SCTP (or
//! framed TCP) association does with the messages it receives — IPFIX
//! decoding (`SessionDecoder`), Cookie Echo handling and block tagging
//! (`AssociationBilling`), commits to a real (in-memory) SQLite `Store`
//! with its replay deduplication, and the cookies owed after each commit.
//!
//! The input is a script of operations (first byte of each picks one):
//! an IPFIX message, a Cookie Echo (introduction, validly signed by another
//! collector of the pool, or arbitrary bytes), or a commit. After every
//! commit, every cookie sent must be signed by us, name the association's
//! exporter, and vouch only for records the store really holds or the
//! exporter's reliability statistics declared lost, contiguously from
//! where the association started.

#![no_main]

use std::collections::HashMap;
use std::path::Path;

use collector::billing::{AssociationBilling, CookieSigner, RangeSet, covered_through};
use collector::ingest::{Batch, SessionDecoder};
use collector::store::Store;
use libfuzzer_sys::fuzz_target;
use protocol::billing::{BillingCookie, CookieMessageKind, cookie_from_asap_bytes};
use protocol::ipfix::{SessionConfig, TransportKind};

const KEY: &[u8] = b"the pool key of the fuzz target";
const PE: u32 = 0x0000_c011;
const PEER: &str = "192.0.2.7:9899";

struct Harness {
    store: Store,
    decoder: SessionDecoder,
    billing: AssociationBilling,
    signer: CookieSigner,
    batch: Batch,
    /// Per domain: where the association's current Cookie Echo started it.
    starts: HashMap<u32, u64>,
    now_ms: i64,
}

fuzz_target!(|data: &[u8]| {
    let Ok(store) = Store::open(Path::new(":memory:")) else {
        panic!("in-memory store does not open");
    };
    let mut config = SessionConfig::new(TransportKind::Sctp);
    config.max_templates = 8;
    let mut h = Harness {
        store,
        decoder: SessionDecoder::new(PEER.to_owned(), config),
        billing: AssociationBilling::default(),
        signer: CookieSigner::hmac(KEY.to_vec(), PE),
        batch: Batch::default(),
        starts: HashMap::new(),
        now_ms: 1_700_000_000_000,
    };
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        h.now_ms += 1;
        match op % 5 {
            0 => {
                let Some(message) = take_chunk(&mut input) else {
                    break;
                };
                let first_new = h.batch.blocks.len();
                let first_totals = h.batch.totals.len();
                h.decoder
                    .handle(message, u16::from(op >> 6), h.now_ms, &mut h.batch);
                h.billing.tag_blocks(&mut h.batch.blocks[first_new..]);
                // Reliability statistics may declare losses: cookies may
                // then pass over declared ranges, never over other holes.
                h.billing
                    .attach_statistics(&mut h.batch.totals[first_totals..]);
            }
            1 => {
                let Some(&[exporter, domain]) = take(&mut input, 2) else {
                    break;
                };
                let cookie =
                    BillingCookie::introduction(u32::from(exporter & 1) + 7, domain.into());
                h.echo(&cookie.cookie_echo_message_bytes());
            }
            2 => {
                let Some(fields) = take(&mut input, 14) else {
                    break;
                };
                // A cookie another collector of the pool signed: the pool
                // key holders are trusted, their claims are not checked.
                let last = u64::from_be_bytes(fields[2..10].try_into().unwrap());
                let pe = u32::from_be_bytes(fields[10..14].try_into().unwrap());
                let cookie = BillingCookie::sign(
                    KEY,
                    u32::from(fields[0] & 1) + 7,
                    fields[1].into(),
                    last,
                    pe,
                    h.now_ms as u64,
                );
                h.echo(&cookie.cookie_echo_message_bytes());
            }
            3 => {
                let Some(asap) = take_chunk(&mut input) else {
                    break;
                };
                h.echo(asap);
            }
            _ => h.commit(),
        }
    }
    h.commit();
});

impl Harness {
    fn echo(&mut self, asap: &[u8]) {
        match self
            .billing
            .on_cookie_echo(asap, &self.signer, PEER, self.now_ms)
        {
            Ok(handover) => {
                let (_, cookie) = cookie_from_asap_bytes(asap).expect("it was accepted");
                assert!(
                    cookie.introduction || cookie.verify(KEY).is_ok(),
                    "unsigned cookie accepted"
                );
                assert_eq!(Some(handover.exporter_id), self.billing.exporter_id());
                self.starts
                    .insert(handover.domain, cookie.next_record_sequence());
                self.batch.handovers.push(handover);
            }
            Err(err) => {
                let _ = err.reason();
            }
        }
    }

    fn commit(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.store
            .commit(&[batch], self.now_ms)
            .expect("committing decoded records");
        let ledger = self.store.ledger();
        let ledger = ledger.lock().expect("ledger lock");
        let cookies = self.billing.cookies_due(&ledger, &self.signer, self.now_ms);
        let Some(exporter_id) = self.billing.exporter_id() else {
            assert!(cookies.is_empty(), "cookies before any Cookie Echo");
            return;
        };
        for bytes in cookies {
            let (kind, cookie) = cookie_from_asap_bytes(&bytes).expect("our cookie decodes");
            assert_eq!(kind, CookieMessageKind::Cookie);
            cookie.verify(KEY).expect("our cookie verifies");
            assert_eq!(cookie.exporter_id, exporter_id);
            assert_eq!(cookie.pe_identifier, PE);
            let start = *self
                .starts
                .get(&cookie.domain)
                .expect("cookie for an announced domain");
            // The store's rows, not the ledger, are the truth: rebuild the
            // held ranges from them.
            let held = stored_ranges(&self.store, exporter_id, cookie.domain);
            let declared = declared_ranges(&self.store, exporter_id, cookie.domain);
            assert!(
                covered_through(Some(&held), Some(&declared), start)
                    .is_some_and(|end| end >= cookie.last_record_sequence),
                "cookie vouches for {start}..={} of domain {} but the store holds {:?}, declared {:?}",
                cookie.last_record_sequence,
                cookie.domain,
                held.ranges().collect::<Vec<_>>(),
                declared.ranges().collect::<Vec<_>>()
            );
        }
    }
}

fn stored_ranges(store: &Store, exporter_id: u32, domain: u32) -> RangeSet {
    let mut held = RangeSet::default();
    let mut statement = store
        .connection()
        .prepare(
            "SELECT first_record_sequence, record_count FROM record_blocks
             WHERE billing_exporter = ?1 AND domain = ?2",
        )
        .expect("query prepares");
    let rows = statement
        .query_map([i64::from(exporter_id), i64::from(domain)], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .expect("query runs");
    for row in rows {
        let (first, count) = row.expect("row reads");
        // Sequences are stored as SQLite's signed integers (bit pattern).
        let first = first as u64;
        if count > 0 {
            held.insert(first, first + (count as u64 - 1));
        }
    }
    held
}

fn declared_ranges(store: &Store, exporter_id: u32, domain: u32) -> RangeSet {
    let mut declared = RangeSet::default();
    let mut statement = store
        .connection()
        .prepare(
            "SELECT first, last FROM declared_losses WHERE billing_exporter = ?1 AND domain = ?2",
        )
        .expect("query prepares");
    let rows = statement
        .query_map([i64::from(exporter_id), i64::from(domain)], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .expect("query runs");
    for row in rows {
        let (first, last) = row.expect("row reads");
        declared.insert(first as u64, last as u64);
    }
    declared
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Some(head)
}

/// A chunk preceded by its two-byte length (cut short at the input's end).
fn take_chunk<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take(input, 2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]])).min(input.len());
    take(input, len)
}
