//! A minimal pcap (libpcap classic format) writer for IPv4 UDP and TCP
//! packets on Ethernet, so tests can hand exact packets to tshark and
//! softflowd without capturing live traffic.

use std::io::{self, Write};
use std::net::SocketAddrV4;

/// Layer 4 of a packet to write.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    Udp,
    /// TCP with these flags (e.g. 0x18 = PSH|ACK) and sequence number.
    Tcp {
        flags: u8,
        seq: u32,
    },
}

/// One packet: addresses, timestamp and payload.
#[derive(Debug, Clone)]
pub struct Packet {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub transport: Transport,
    /// Microseconds since the UNIX epoch.
    pub time_us: u64,
    pub payload: Vec<u8>,
}

/// Writes packets as an Ethernet (linktype 1) pcap file.
pub fn write(out: &mut impl Write, packets: &[Packet]) -> io::Result<()> {
    write_header(out)?;
    for p in packets {
        write_packet(out, p)?;
    }
    Ok(())
}

/// The pcap global header (Ethernet, linktype 1); [`write_packet`] follows,
/// for files too large to hold as a slice of packets.
pub fn write_header(out: &mut impl Write) -> io::Result<()> {
    // Global header: magic, version 2.4, zone 0, sigfigs 0, snaplen, linktype.
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&0i32.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&262_144u32.to_le_bytes())?;
    out.write_all(&1u32.to_le_bytes())
}

/// One packet record, after [`write_header`].
pub fn write_packet(out: &mut impl Write, p: &Packet) -> io::Result<()> {
    let frame = frame(p);
    out.write_all(&((p.time_us / 1_000_000) as u32).to_le_bytes())?;
    out.write_all(&((p.time_us % 1_000_000) as u32).to_le_bytes())?;
    out.write_all(&(frame.len() as u32).to_le_bytes())?;
    out.write_all(&(frame.len() as u32).to_le_bytes())?;
    out.write_all(&frame)
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = if pair.len() == 2 {
                u16::from_be_bytes([pair[0], pair[1]])
            } else {
                u16::from_be_bytes([pair[0], 0])
            };
            sum += word as u32;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn frame(p: &Packet) -> Vec<u8> {
    let (protocol, mut l4) = match p.transport {
        Transport::Udp => {
            let mut h = Vec::with_capacity(8 + p.payload.len());
            h.extend_from_slice(&p.src.port().to_be_bytes());
            h.extend_from_slice(&p.dst.port().to_be_bytes());
            h.extend_from_slice(&((8 + p.payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            (17u8, h)
        }
        Transport::Tcp { flags, seq } => {
            let mut h = Vec::with_capacity(20 + p.payload.len());
            h.extend_from_slice(&p.src.port().to_be_bytes());
            h.extend_from_slice(&p.dst.port().to_be_bytes());
            h.extend_from_slice(&seq.to_be_bytes());
            h.extend_from_slice(&0u32.to_be_bytes()); // ack
            h.push(5 << 4); // data offset: 5 words
            h.push(flags);
            h.extend_from_slice(&65_535u16.to_be_bytes()); // window
            h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
            (6u8, h)
        }
    };
    l4.extend_from_slice(&p.payload);
    // Transport checksum over the IPv4 pseudo-header.
    let pseudo = [
        &p.src.ip().octets()[..],
        &p.dst.ip().octets()[..],
        &[0, protocol],
        &(l4.len() as u16).to_be_bytes(),
    ]
    .concat();
    let sum = checksum(&[&pseudo, &l4]);
    let at = if protocol == 17 { 6 } else { 16 };
    l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());

    let mut ip = Vec::with_capacity(20);
    ip.push(0x45);
    ip.push(0);
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0]); // id, don't fragment
    ip.push(64);
    ip.push(protocol);
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&p.src.ip().octets());
    ip.extend_from_slice(&p.dst.ip().octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let mut frame = Vec::with_capacity(14 + ip.len() + l4.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&l4);
    frame
}
