//! Just enough SCTP packet handling (RFC 9260 section 3) to run path supervision next to
//! `sctp-proto`: that crate answers HEARTBEATs but never sends them and never fails an
//! association on retransmission exhaustion (it was written for WebRTC, where ICE detects
//! dead peers). We therefore send HEARTBEAT and ABORT ourselves, consume HEARTBEAT ACKs before
//! they reach `sctp-proto` (which cannot parse them and would drop the whole packet), and
//! apply the RFC rules for unknown chunk types that `sctp-proto` does not.

use crc::{CRC_32_ISCSI, Crc};

pub(crate) const COMMON_HEADER_LEN: usize = 12;

pub(crate) const CHUNK_INIT: u8 = 1;
pub(crate) const CHUNK_HEARTBEAT: u8 = 4;
pub(crate) const CHUNK_HEARTBEAT_ACK: u8 = 5;
pub(crate) const CHUNK_ABORT: u8 = 6;
pub(crate) const CHUNK_SHUTDOWN_COMPLETE: u8 = 14;
/// RFC 9260 section 3.3.5: Heartbeat Info parameter type.
const PARAM_HEARTBEAT_INFO: u16 = 1;
/// The T bit of ABORT and SHUTDOWN COMPLETE: the packet carries the sender's own tag.
const FLAG_T_BIT: u8 = 0x01;

/// Chunk types the vendored `sctp-proto` can unmarshal (see its `packet.rs`).
fn sctp_proto_parses(chunk_type: u8) -> bool {
    matches!(
        chunk_type,
        0 | 1 | 2 | 3 | 4 | 6 | 7 | 8 | 9 | 10 | 11 | 14 | 130 | 192 | 194
    )
}

/// CRC32c (Castagnoli) as RFC 9260 appendix A defines it for SCTP.
const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommonHeader {
    pub source_port: u16,
    pub destination_port: u16,
    pub verification_tag: u32,
}

pub(crate) fn parse_common_header(packet: &[u8]) -> Option<CommonHeader> {
    if packet.len() < COMMON_HEADER_LEN {
        return None;
    }
    Some(CommonHeader {
        source_port: u16::from_be_bytes([packet[0], packet[1]]),
        destination_port: u16::from_be_bytes([packet[2], packet[3]]),
        verification_tag: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
    })
}

/// Type and flags of the first chunk, if any.
pub(crate) fn first_chunk(packet: &[u8]) -> Option<(u8, u8)> {
    (packet.len() >= COMMON_HEADER_LEN + 4)
        .then(|| (packet[COMMON_HEADER_LEN], packet[COMMON_HEADER_LEN + 1]))
}

/// Whether an outgoing packet carries the peer's verification tag (everything except INIT,
/// which carries 0, and T-bit ABORT / SHUTDOWN COMPLETE, which carry our own tag).
pub(crate) fn carries_peer_tag(packet: &[u8]) -> bool {
    match first_chunk(packet) {
        Some((CHUNK_INIT, _)) | None => false,
        Some((CHUNK_ABORT | CHUNK_SHUTDOWN_COMPLETE, flags)) => flags & FLAG_T_BIT == 0,
        Some(_) => true,
    }
}

fn packet_checksum(packet: &[u8]) -> u32 {
    let mut digest = CRC32C.digest();
    digest.update(&packet[..8]);
    digest.update(&[0; 4]);
    digest.update(&packet[COMMON_HEADER_LEN..]);
    digest.finalize()
}

/// The checksum field holds the CRC in the byte order RFC 9260 appendix A prescribes, which
/// for the reflected CRC32c register is its little-endian encoding.
pub(crate) fn checksum_is_valid(packet: &[u8]) -> bool {
    packet.len() >= COMMON_HEADER_LEN && packet[8..12] == packet_checksum(packet).to_le_bytes()[..]
}

fn seal(packet: &mut [u8]) {
    let checksum = packet_checksum(packet);
    packet[8..12].copy_from_slice(&checksum.to_le_bytes());
}

fn header_bytes(source_port: u16, destination_port: u16, verification_tag: u32) -> Vec<u8> {
    let mut packet = Vec::with_capacity(48);
    packet.extend_from_slice(&source_port.to_be_bytes());
    packet.extend_from_slice(&destination_port.to_be_bytes());
    packet.extend_from_slice(&verification_tag.to_be_bytes());
    packet.extend_from_slice(&[0; 4]);
    packet
}

/// HEARTBEAT (RFC 9260 section 3.3.5) whose Heartbeat Info is our nonce: the peer echoes it
/// opaquely in its HEARTBEAT ACK.
pub(crate) fn heartbeat_packet(ids: &CommonHeader, nonce: u64) -> Vec<u8> {
    let mut packet = header_bytes(ids.source_port, ids.destination_port, ids.verification_tag);
    let info_len: u16 = 4 + 8;
    packet.extend_from_slice(&[CHUNK_HEARTBEAT, 0]);
    packet.extend_from_slice(&(4 + info_len).to_be_bytes());
    packet.extend_from_slice(&PARAM_HEARTBEAT_INFO.to_be_bytes());
    packet.extend_from_slice(&info_len.to_be_bytes());
    packet.extend_from_slice(&nonce.to_be_bytes());
    seal(&mut packet);
    packet
}

/// ABORT without error causes (RFC 9260 section 3.3.7), sent when path supervision gives
/// the peer up, so a half-alive peer learns it at once instead of by its own timers.
pub(crate) fn abort_packet(ids: &CommonHeader) -> Vec<u8> {
    let mut packet = header_bytes(ids.source_port, ids.destination_port, ids.verification_tag);
    packet.extend_from_slice(&[CHUNK_ABORT, 0, 0, 4]);
    seal(&mut packet);
    packet
}

/// What to do with an out-of-the-blue packet (RFC 9260 section 8.4): one that no
/// association of ours claims.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OutOfTheBlue {
    /// Send this back (an ABORT, or a SHUTDOWN COMPLETE for a SHUTDOWN ACK, with the T bit
    /// and the packet's own tag reflected): the sender holds an association we do not
    /// have, e.g. to our earlier incarnation, and learns it at its next packet instead of
    /// by its timers.
    Reply(Vec<u8>),
    /// A reflected ABORT (T bit): the peer has no association with the tag this header
    /// carries, which is the tag we put in our packets to that peer.
    ReflectedAbort(CommonHeader),
    /// Nothing to do (an ABORT, SHUTDOWN COMPLETE, COOKIE ACK, COOKIE ECHO, INIT, an ERROR,
    /// or a packet that is not valid SCTP).
    Discard,
}

/// RFC 9260 section 8.4 for a packet that no association claims.
pub(crate) fn out_of_the_blue(packet: &[u8]) -> OutOfTheBlue {
    const CHUNK_ERROR: u8 = 9;
    const CHUNK_COOKIE_ECHO: u8 = 10;
    const CHUNK_COOKIE_ACK: u8 = 11;
    const CHUNK_SHUTDOWN_ACK: u8 = 8;
    let (Some(header), Some((chunk_type, flags))) =
        (parse_common_header(packet), first_chunk(packet))
    else {
        return OutOfTheBlue::Discard;
    };
    if !checksum_is_valid(packet) {
        return OutOfTheBlue::Discard;
    }
    let reply = |chunk: u8| {
        let mut reply = header_bytes(
            header.destination_port,
            header.source_port,
            header.verification_tag,
        );
        reply.extend_from_slice(&[chunk, FLAG_T_BIT, 0, 4]);
        seal(&mut reply);
        OutOfTheBlue::Reply(reply)
    };
    match chunk_type {
        CHUNK_ABORT if flags & FLAG_T_BIT != 0 => OutOfTheBlue::ReflectedAbort(header),
        CHUNK_ABORT
        | CHUNK_SHUTDOWN_COMPLETE
        | CHUNK_COOKIE_ACK
        | CHUNK_COOKIE_ECHO
        | CHUNK_INIT
        | CHUNK_ERROR => OutOfTheBlue::Discard,
        // A tag of 0 is only valid on INIT: nothing to reflect.
        _ if header.verification_tag == 0 => OutOfTheBlue::Discard,
        CHUNK_SHUTDOWN_ACK => reply(CHUNK_SHUTDOWN_COMPLETE),
        _ => reply(CHUNK_ABORT),
    }
}

/// What to do with a received packet before `sctp-proto` sees it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InboundVerdict {
    /// Hand the packet over as received (the common case: no allocation).
    PassUnchanged,
    /// Hand over this rewritten packet (chunks removed, checksum recomputed).
    PassRewritten(Vec<u8>),
    /// Nothing left for `sctp-proto`.
    Consumed,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InboundFilter {
    pub verdict: InboundVerdict,
    /// Nonces echoed in HEARTBEAT ACK chunks (only from packets whose checksum is valid).
    pub heartbeat_acks: Vec<u64>,
}

/// Removes HEARTBEAT ACKs (reporting their nonces) and chunks `sctp-proto` cannot parse,
/// following RFC 9260 section 3.2: an unknown type with high bits 00/01 ends processing of
/// the packet, 10/11 is skipped.
pub(crate) fn filter_inbound(packet: &[u8]) -> InboundFilter {
    let mut heartbeat_acks = Vec::new();
    // The packet without the chunks taken out, started at the first one taken out (every
    // chunk before it is kept, so the packet up to there is its beginning): a packet that
    // passes unchanged, nearly all of them, costs no allocation.
    let mut rewritten: Option<Vec<u8>> = None;
    let mut kept_any = false;
    let mut offset = COMMON_HEADER_LEN;
    while offset + 4 <= packet.len() {
        let chunk_type = packet[offset];
        let length = u16::from_be_bytes([packet[offset + 2], packet[offset + 3]]) as usize;
        if length < 4 || offset + length > packet.len() {
            // Malformed: let sctp-proto reject it with its own diagnostics.
            return InboundFilter {
                verdict: InboundVerdict::PassUnchanged,
                heartbeat_acks: Vec::new(),
            };
        }
        let padded_end = (offset + length.next_multiple_of(4)).min(packet.len());
        if chunk_type == CHUNK_HEARTBEAT_ACK {
            rewritten.get_or_insert_with(|| packet[..offset].to_vec());
            if let Some(nonce) = heartbeat_ack_nonce(&packet[offset..offset + length]) {
                heartbeat_acks.push(nonce);
            }
        } else if sctp_proto_parses(chunk_type) {
            kept_any = true;
            if let Some(rewritten) = &mut rewritten {
                rewritten.extend_from_slice(&packet[offset..padded_end]);
            }
        } else {
            rewritten.get_or_insert_with(|| packet[..offset].to_vec());
            if chunk_type & 0x80 == 0 {
                break;
            }
        }
        offset = padded_end;
    }
    if !heartbeat_acks.is_empty() && !checksum_is_valid(packet) {
        heartbeat_acks.clear();
    }
    let verdict = match rewritten {
        None => InboundVerdict::PassUnchanged,
        Some(_) if !kept_any => InboundVerdict::Consumed,
        Some(mut rewritten) => {
            seal(&mut rewritten);
            InboundVerdict::PassRewritten(rewritten)
        }
    };
    InboundFilter {
        verdict,
        heartbeat_acks,
    }
}

fn heartbeat_ack_nonce(chunk: &[u8]) -> Option<u64> {
    let param = chunk.get(4..)?;
    let param_type = u16::from_be_bytes([*param.first()?, *param.get(1)?]);
    let param_len = u16::from_be_bytes([*param.get(2)?, *param.get(3)?]) as usize;
    if param_type != PARAM_HEARTBEAT_INFO || param_len != 12 {
        return None;
    }
    Some(u64::from_be_bytes(param.get(4..12)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> CommonHeader {
        CommonHeader {
            source_port: 9899,
            destination_port: 3863,
            verification_tag: 0xdead_beef,
        }
    }

    /// A packet from `ids()` whose first chunk is `chunk_type`/`flags` (4 bytes).
    fn packet_with(chunk_type: u8, flags: u8, verification_tag: u32) -> Vec<u8> {
        let mut packet = header_bytes(9899, 3863, verification_tag);
        packet.extend_from_slice(&[chunk_type, flags, 0, 4]);
        seal(&mut packet);
        packet
    }

    #[test]
    fn out_of_the_blue_packets_get_a_reflected_abort() {
        // DATA (or SACK, HEARTBEAT ...) for an association we do not have.
        let OutOfTheBlue::Reply(reply) = out_of_the_blue(&packet_with(0, 0x03, 0xdead_beef)) else {
            panic!("an ABORT expected");
        };
        assert!(checksum_is_valid(&reply));
        assert_eq!(
            parse_common_header(&reply),
            Some(CommonHeader {
                source_port: 3863,
                destination_port: 9899,
                verification_tag: 0xdead_beef,
            })
        );
        assert_eq!(first_chunk(&reply), Some((CHUNK_ABORT, FLAG_T_BIT)));
        // SHUTDOWN ACK gets a SHUTDOWN COMPLETE with the T bit.
        let OutOfTheBlue::Reply(reply) = out_of_the_blue(&packet_with(8, 0, 7)) else {
            panic!("a SHUTDOWN COMPLETE expected");
        };
        assert_eq!(
            first_chunk(&reply),
            Some((CHUNK_SHUTDOWN_COMPLETE, FLAG_T_BIT))
        );
        // Never answered: ABORT, SHUTDOWN COMPLETE, COOKIE ACK, COOKIE ECHO, INIT, ERROR,
        // a zero tag, a bad checksum, garbage.
        for chunk in [CHUNK_ABORT, CHUNK_SHUTDOWN_COMPLETE, 11, 10, CHUNK_INIT, 9] {
            assert_eq!(
                out_of_the_blue(&packet_with(chunk, 0, 7)),
                OutOfTheBlue::Discard
            );
        }
        assert_eq!(
            out_of_the_blue(&packet_with(0, 0, 0)),
            OutOfTheBlue::Discard
        );
        let mut corrupted = packet_with(0, 0, 7);
        corrupted[13] ^= 0x40;
        assert_eq!(out_of_the_blue(&corrupted), OutOfTheBlue::Discard);
        assert_eq!(out_of_the_blue(&[1, 2, 3]), OutOfTheBlue::Discard);
    }

    #[test]
    fn a_reflected_abort_names_the_tag_it_carries() {
        assert_eq!(
            out_of_the_blue(&packet_with(CHUNK_ABORT, FLAG_T_BIT, 0x1234)),
            OutOfTheBlue::ReflectedAbort(CommonHeader {
                source_port: 9899,
                destination_port: 3863,
                verification_tag: 0x1234,
            })
        );
        // Our own reply, seen by the peer that sent the stray packet.
        let OutOfTheBlue::Reply(reply) = out_of_the_blue(&packet_with(0, 0, 0x1234)) else {
            panic!("an ABORT expected");
        };
        assert_eq!(
            out_of_the_blue(&reply),
            OutOfTheBlue::ReflectedAbort(CommonHeader {
                source_port: 3863,
                destination_port: 9899,
                verification_tag: 0x1234,
            })
        );
    }

    #[test]
    fn crc32c_matches_rfc_3720_check_value() {
        // RFC 3720 B.4: 32 bytes of zeros -> aa 36 91 8a (as transmitted, little endian).
        assert_eq!(
            CRC32C.checksum(&[0u8; 32]).to_le_bytes(),
            [0xaa, 0x36, 0x91, 0x8a]
        );
    }

    #[test]
    fn heartbeat_is_well_formed_and_sealed() {
        let packet = heartbeat_packet(&ids(), 42);
        assert_eq!(packet.len(), 12 + 16);
        assert_eq!(parse_common_header(&packet), Some(ids()));
        assert!(checksum_is_valid(&packet));
        assert_eq!(first_chunk(&packet), Some((CHUNK_HEARTBEAT, 0)));
    }

    #[test]
    fn heartbeat_ack_is_consumed_and_reported() {
        let mut packet = heartbeat_packet(&ids(), 7);
        packet[12] = CHUNK_HEARTBEAT_ACK;
        seal(&mut packet);
        let filtered = filter_inbound(&packet);
        assert_eq!(filtered.verdict, InboundVerdict::Consumed);
        assert_eq!(filtered.heartbeat_acks, vec![7]);
        // A corrupted copy must not count as proof of life.
        packet[20] ^= 1;
        assert!(filter_inbound(&packet).heartbeat_acks.is_empty());
    }

    #[test]
    fn unknown_skippable_chunk_is_removed_and_rest_kept() {
        let mut packet = header_bytes(1, 2, 3);
        packet.extend_from_slice(&[0x84, 0, 0, 8, 1, 2, 3, 4]); // PAD-like, high bits 10
        packet.extend_from_slice(&[CHUNK_HEARTBEAT, 0, 0, 8, 0, 1, 0, 4]);
        seal(&mut packet);
        let filtered = filter_inbound(&packet);
        let InboundVerdict::PassRewritten(rewritten) = filtered.verdict else {
            panic!("expected rewrite, got {:?}", filtered.verdict);
        };
        assert_eq!(&rewritten[12..], &[CHUNK_HEARTBEAT, 0, 0, 8, 0, 1, 0, 4]);
        assert!(checksum_is_valid(&rewritten));
    }

    #[test]
    fn plain_data_passes_unchanged() {
        let mut packet = header_bytes(1, 2, 3);
        packet.extend_from_slice(&[
            0, 3, 0, 17, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 11, 0xff, 0, 0, 0,
        ]);
        seal(&mut packet);
        assert_eq!(
            filter_inbound(&packet).verdict,
            InboundVerdict::PassUnchanged
        );
        assert!(carries_peer_tag(&packet));
    }
}
