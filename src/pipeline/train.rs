//! The GRO-train shortcut: a datagram after the first in a train is decoded by comparison
//! with the one before it, and a copy of the datagram judged before it (same flow, same TCP
//! flags that leave the flow's state as it is) takes that outcome, its counts settled once
//! when the run of copies ends.
//!
//! Must not depend on: sockets, the flow log.

use super::decode::DecodedPacket;
use super::{Outcome, Pipeline};
use crate::packet::{InnerPacket, Transport};

/// Decodes `datagram` by comparing it with the datagram before it in the same GRO train,
/// `previous`, which decoded to `decoded`: when the two have the same length, the same GENEVE
/// header and options, and the same inner headers apart from the fields that change from one
/// segment of a flow to the next (IPv4 identification and checksum; TCP sequence and
/// acknowledgment numbers, flags, window, checksum, urgent pointer), every check of [`decode`]
/// has the same outcome for both, and only those fields need reading. `None` when that does
/// not hold (then [`decode`] decides); never a result [`decode`] would not give.
pub fn decode_after(
    previous: &[u8],
    decoded: &DecodedPacket,
    datagram: &[u8],
) -> Option<DecodedPacket> {
    let transport = segment_after(previous, decoded, datagram)?;
    Some(DecodedPacket { inner: InnerPacket { transport, ..decoded.inner }, ..*decoded })
}

/// The comparisons of [`decode_after`]: the transport header of `datagram` when it is a
/// segment of the same flow as `previous` in the sense given there.
pub(super) fn segment_after(
    previous: &[u8],
    decoded: &DecodedPacket,
    datagram: &[u8],
) -> Option<Transport> {
    let inner = &decoded.inner;
    let g = decoded.geneve_header_len;
    if datagram.len() != previous.len() || inner.fragment.is_some() {
        return None;
    }
    // GENEVE base header and every option, byte for byte.
    if datagram.get(..g)? != previous.get(..g)? {
        return None;
    }
    let (ip, previous_ip) = (&datagram[g..], &previous[g..]);
    // The inner IP header up to the transport header, minus the per-segment fields.
    let transport_at = match inner.src {
        std::net::IpAddr::V4(_) => {
            let header_len = usize::from(previous_ip.first()? & 0x0f) * 4;
            let same = ip.get(..4)? == previous_ip.get(..4)?
                && ip.get(6..10)? == previous_ip.get(6..10)?
                && ip.get(12..header_len)? == previous_ip.get(12..header_len)?;
            same.then_some(header_len)?
        }
        // Only without extension headers: the next header must be the transport itself.
        std::net::IpAddr::V6(_) => {
            let same = ip.get(..40)? == previous_ip.get(..40)?;
            (same && previous_ip[6] == inner.protocol).then_some(40)?
        }
    };
    let (l4, previous_l4) = (ip.get(transport_at..)?, previous_ip.get(transport_at..)?);
    let transport = match inner.transport {
        Transport::Tcp { payload_len, .. } => {
            // Ports, and the data offset (so the header length and the payload are the same).
            if l4.get(..4)? != previous_l4.get(..4)? || l4.get(12)? >> 4 != previous_l4[12] >> 4 {
                return None;
            }
            let be32 = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
            Transport::Tcp {
                src_port: u16::from_be_bytes([l4[0], l4[1]]),
                dst_port: u16::from_be_bytes([l4[2], l4[3]]),
                flags: l4[13],
                seq: be32(4),
                ack: be32(8),
                payload_len,
            }
        }
        // Ports and length.
        Transport::Udp { .. } if l4.get(..6)? == previous_l4.get(..6)? => inner.transport,
        _ => return None,
    };
    Some(transport)
}

/// What the datagram judged last in a train decided, for the datagrams after it that are
/// copies of it but for the per-segment fields ([`segment_after`]) and carry the same TCP
/// flags, which leave the flow's TCP state as it is. Judging such a copy changes nothing but
/// the counters (same flow, same snapshot, same batch clock, same cookie), so a copy takes the
/// outcome as it is and its counts are added to the flow and the rule once, when the run of
/// copies ends ([`Pipeline::settle_repeats`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Repeat {
    pub(super) outcome: Outcome,
    pub(super) rule: Option<usize>,
    pub(super) flags: u8,
    /// Copies since the judged datagram, not yet counted.
    pub(super) packets: u64,
    pub(super) bytes: u64,
}

impl Pipeline {
    /// Counts the copies the last [`Repeat`] stood for into its flow and rule.
    #[inline(never)]
    pub(super) fn settle_repeats(&mut self) {
        let Some(repeat) = self.repeat.take() else { return };
        if repeat.packets == 0 {
            return;
        }
        if let Some(snapshot) = &self.snapshot {
            snapshot.rule_hits.add_many(self.worker, repeat.rule, repeat.packets);
        }
        // The judged datagram's flow: nothing touched the table since.
        if let Some(flow) = self.flows.recent_mut() {
            flow.packets += repeat.packets;
            flow.bytes += repeat.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::fuzzing::flow_states;
    use crate::packet::{ip_proto, tcp_flags};
    use crate::pipeline::decode;
    use crate::reject::MAX_REJECT_LEN;
    use etherparse::PacketBuilder;
    use std::net::IpAddr;

    /// Segments of one flow as a train carries them: a TCP/IPv4 flow with IP options, UDP/IPv4,
    /// TCP/IPv6 and UDP/IPv6, each with 100 payload bytes.
    fn train_heads() -> Vec<Vec<u8>> {
        let payload = [7u8; 100];
        let mut out = Vec::new();
        let mut v4 = etherparse::Ipv4Header::new(
            0,
            64,
            etherparse::IpNumber::TCP,
            [10, 0, 1, 15],
            [10, 20, 0, 5],
        )
        .unwrap();
        v4.options = [1, 1, 1, 1][..].try_into().unwrap(); // four NOPs
        let tcp = etherparse::TcpHeader::new(40_000, 3306, 1000, 65_000);
        let mut bytes = Vec::new();
        PacketBuilder::ip(etherparse::IpHeaders::Ipv4(v4, Default::default()))
            .tcp_header(tcp)
            .write(&mut bytes, &payload)
            .unwrap();
        out.push(geneve(bytes));
        let mut bytes = Vec::new();
        PacketBuilder::ipv4([10, 0, 1, 15], [10, 20, 0, 5], 64)
            .udp(5000, 53)
            .write(&mut bytes, &payload)
            .unwrap();
        out.push(geneve(bytes));
        let (a, b) = (
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        );
        let mut bytes = Vec::new();
        PacketBuilder::ipv6(a, b, 64)
            .tcp(40_000, 443, 5, 1000)
            .ack(9)
            .write(&mut bytes, &payload)
            .unwrap();
        let mut ipv6 = geneve(bytes);
        let protocol = crate::wire::geneve::PROTOCOL_IPV6.to_be_bytes();
        ipv6[2..4].copy_from_slice(&protocol);
        out.push(ipv6);
        let mut bytes = Vec::new();
        PacketBuilder::ipv6(a, b, 64).udp(5000, 53).write(&mut bytes, &payload).unwrap();
        let mut udp6 = geneve(bytes);
        udp6[2..4].copy_from_slice(&protocol);
        out.push(udp6);
        for datagram in &out {
            decode(datagram).expect("a valid train head");
        }
        out
    }

    /// The next segment of a flow: what changes between segments (IPv4 id and checksum, TCP
    /// sequence, acknowledgment, flags, window, checksum) changed.
    fn next_segment(head: &[u8], n: u8) -> Vec<u8> {
        let decoded = decode(head).unwrap();
        let mut next = head.to_vec();
        let ip = decoded.geneve_header_len;
        let l4 = match decoded.inner.src {
            IpAddr::V4(_) => {
                next[ip + 4] ^= n; // identification
                next[ip + 10] ^= n.rotate_left(3); // checksum (not checked by decode)
                ip + usize::from(head[ip] & 0x0f) * 4
            }
            IpAddr::V6(_) => ip + 40,
        };
        if decoded.inner.protocol == ip_proto::TCP {
            for at in [4, 5, 8, 11, 13, 14, 16, 17, 18] {
                next[l4 + at] ^= n.wrapping_mul(at as u8 + 1);
            }
        }
        next
    }

    #[test]
    fn the_segments_of_a_train_decode_by_comparison_as_decode_would() {
        for head in train_heads() {
            let decoded = decode(&head).unwrap();
            for n in 1..=40u8 {
                let next = next_segment(&head, n);
                let shortcut = decode_after(&head, &decoded, &next);
                assert!(shortcut.is_some(), "a segment of the same flow takes the shortcut");
                assert_eq!(shortcut, decode(&next).ok(), "segment {n}");
            }
        }
    }

    #[test]
    fn whatever_a_segment_differs_in_the_shortcut_never_disagrees_with_decode() {
        // Every single-byte change, and random multi-byte ones, of a following segment: the
        // shortcut either declines or gives exactly what the full decode gives (including
        // for segments the full decode drops).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut taken = 0;
        for head in train_heads() {
            let decoded = decode(&head).unwrap();
            let next = next_segment(&head, 3);
            for at in 0..next.len().min(140) {
                for value in [0u8, 1, 0x45, 0x60, 0x80, 0xff, next[at] ^ 0x10] {
                    let mut changed = next.clone();
                    changed[at] = value;
                    if let Some(shortcut) = decode_after(&head, &decoded, &changed) {
                        taken += 1;
                        assert_eq!(Ok(shortcut), decode(&changed), "byte {at} = {value:#x}");
                    }
                }
            }
            for _ in 0..3000 {
                let mut changed = next.clone();
                for _ in 0..1 + random(4) {
                    let at = random(changed.len().min(140));
                    changed[at] = random(256) as u8;
                }
                if let Some(shortcut) = decode_after(&head, &decoded, &changed) {
                    taken += 1;
                    assert_eq!(Ok(shortcut), decode(&changed));
                }
            }
            // A different length, a fragment, or another protocol: the full decode decides.
            assert_eq!(decode_after(&head, &decoded, &next[..next.len() - 1]), None);
        }
        assert!(taken > 1000, "the shortcut was taken {taken} times");
    }

    /// `next_segment` with the TCP flags set to `flags` (TCP only).
    fn segment_with_flags(head: &[u8], n: u8, flags: u8) -> Vec<u8> {
        let mut next = next_segment(head, n);
        let decoded = decode(head).unwrap();
        if decoded.inner.protocol == ip_proto::TCP {
            let ip = decoded.geneve_header_len;
            let l4 = match decoded.inner.src {
                IpAddr::V4(_) => ip + usize::from(head[ip] & 0x0f) * 4,
                IpAddr::V6(_) => ip + 40,
            };
            next[l4 + 13] = flags;
        }
        next
    }

    #[test]
    fn a_copy_of_a_syn_that_would_start_a_flow_of_its_own_is_judged_as_such() {
        // Found by the fuzz target: copies of a SYN that judging would take for a flow of its
        // own (SYN+RST on the flow it closed; a SYN from the responder side of a known flow)
        // were counted as packets of the flow instead.
        const SYN_RST: u8 = SYN | tcp_flags::RST;
        let client = [10, 0, 1, 5];
        let trains: [&[Vec<u8>]; 2] = [
            &[
                tcp(client, DB, 4000, 3306, SYN_RST),
                tcp(client, DB, 4000, 3306, SYN_RST),
                tcp(client, DB, 4000, 3306, SYN_RST),
            ],
            &[
                tcp(client, DB, 4001, 3306, SYN),
                tcp(DB, client, 3306, 4001, SYN),
                tcp(DB, client, 3306, 4001, SYN),
                tcp(DB, client, 3306, 4001, SYN),
            ],
        ];
        for train in trains {
            let (mut by_repeats, _) = pipeline();
            let (mut one_by_one, _) = pipeline();
            let (mut inject_a, mut inject_b) = ([0u8; MAX_REJECT_LEN], [0u8; MAX_REJECT_LEN]);
            let mut previous: Option<&[u8]> = None;
            for datagram in train {
                let a = by_repeats.process_after(previous, datagram, &mut inject_a);
                assert_eq!(a, one_by_one.process(datagram, &mut inject_b));
                previous = Some(datagram);
            }
            assert_eq!(flow_states(&mut by_repeats), flow_states(&mut one_by_one));
        }
    }

    #[test]
    fn copies_in_a_train_take_the_judged_outcome_and_count_as_judging_each_would() {
        const PSH_ACK: u8 = tcp_flags::PSH | tcp_flags::ACK;
        const FIN_ACK: u8 = tcp_flags::FIN | tcp_flags::ACK;
        const RST: u8 = tcp_flags::RST;
        let flag_runs: [&[u8]; 5] = [
            &[ACK, ACK, ACK, PSH_ACK, PSH_ACK, ACK],
            // Two FINs: the second closes what the first half-closed (not steady).
            &[ACK, ACK, FIN_ACK, FIN_ACK, ACK, ACK],
            &[ACK, FIN_ACK, FIN_ACK, FIN_ACK, ACK],
            &[SYN, SYN, SYN_ACK, ACK, ACK, RST, RST, ACK, SYN, SYN],
            &[PSH_ACK; 12],
        ];
        let mut heads = train_heads();
        // Refused by a reject rule: every reject is built from its own trigger.
        let mut rejected = heads[0].clone();
        let at = decode(&rejected).unwrap().geneve_header_len + 24 + 2;
        rejected[at..at + 2].copy_from_slice(&3307u16.to_be_bytes());
        heads.push(rejected);
        let (mut by_repeats, cell_a) = pipeline();
        let (mut one_by_one, cell_b) = pipeline();
        let (mut inject_a, mut inject_b) = ([0u8; MAX_REJECT_LEN], [0u8; MAX_REJECT_LEN]);
        let mut taken = 0;
        for (batch, flags) in flag_runs.iter().enumerate() {
            for head in &heads {
                let train: Vec<Vec<u8>> = flags
                    .iter()
                    .enumerate()
                    .map(|(n, &f)| segment_with_flags(head, n as u8 + 1, f))
                    .collect();
                let mut previous: Option<&[u8]> = None;
                for (n, datagram) in train.iter().enumerate() {
                    let before = by_repeats.repeat.map_or(0, |r| r.packets);
                    let a = by_repeats.process_after(previous, datagram, &mut inject_a);
                    let b = one_by_one.process(datagram, &mut inject_b);
                    assert_eq!(a, b, "batch {batch}, segment {n}");
                    if let Outcome::Reject { len } = a {
                        assert_eq!(inject_a[..len], inject_b[..len]);
                    }
                    taken += usize::from(by_repeats.repeat.is_some_and(|r| r.packets > before));
                    previous = Some(datagram);
                }
            }
            assert_eq!(flow_states(&mut by_repeats), flow_states(&mut one_by_one), "batch {batch}");
            by_repeats.begin_batch(2 + batch as u64);
            one_by_one.begin_batch(2 + batch as u64);
        }
        assert!(taken > 40, "copies were taken {taken} times");
        let (hits_a, hits_b) = (&cell_a.load().rule_hits, &cell_b.load().rule_hits);
        for rule in [Some(0), Some(1), None] {
            assert_eq!(hits_a.count(0, rule), hits_b.count(0, rule), "rule {rule:?}");
        }
        assert_eq!(flow_states(&mut by_repeats), flow_states(&mut one_by_one));
    }
}
