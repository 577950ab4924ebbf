//! The receive path as one function over arbitrary bytes, shared by the cargo-fuzz target
//! (tests/fuzz) and the stable test that replays its seed corpus, so both exercise exactly
//! the code a worker runs on a datagram.
//!
//! An input is read in one of two ways, by its first byte:
//! - `0x60..=0x7f`: a script for a small generator of well-formed GWLB datagrams (new flows,
//!   packets of them both ways, first and later fragments of remembered datagrams, ICMP errors
//!   quoting packets sent before, raw and mutated datagrams, clock steps and policy changes),
//!   so that the fuzzer reaches flow, fragment and ICMP-error states that random bytes never
//!   would, and invariants about them can be checked against what the script did;
//! - anything else: the datagrams themselves, one, or a GRO train of them when the high bit
//!   is set (its low bits pick the stride).
//!
//! Must not depend on: sockets, tokio, logging.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use etherparse::{
    IpFragOffset, IpNumber, Ipv4Header, Ipv6FragmentHeader, Ipv6Header, PacketBuilder,
};

use crate::conntrack::{FlowKey, TcpState, Timeouts};
use crate::labels::LabelTable;
use crate::packet::{InnerPacket, Transport, ip_proto, tcp_flags};
use crate::pipeline::{self, DecodedPacket, FlowSettings, Mode, NameLimits, Outcome, Pipeline};
use crate::policy::CompiledPolicy;
use crate::reject::MAX_REJECT_LEN;
use crate::snapshot::{RuleHits, Snapshot, SnapshotCell};
use crate::wire::outer::{self, OUTER_HEADER_LEN, OuterAddressing};
use crate::wire::{DropReason, GwlbOptions, geneve};

/// First bytes that select the generator (see the module documentation).
const GENERATOR: std::ops::RangeInclusive<u8> = 0x60..=0x7f;

/// Runs `data` through the worker's per-datagram steps and checks the invariants that must
/// hold for any input; panics (which the fuzzer reports) when one does not.
pub fn receive_path(data: &[u8]) {
    match data.split_first() {
        Some((&mode, script)) if GENERATOR.contains(&mode) => generated(mode, script),
        _ => datagrams(data),
    }
}

/// The input as datagrams: one, or a GRO train of them.
fn datagrams(data: &[u8]) {
    // The first byte picks a GRO stride so that trains of segments are covered too.
    let (stride, train) = match data.split_first() {
        Some((&s, rest)) if s & 0x80 != 0 => (usize::from(s & 0x7f).max(1) * 8, rest),
        _ => (data.len().max(1), data),
    };
    let mut harness =
        Harness::new(FlowSettings { max_flows: 64, names: FUZZ_NAMES, ..FlowSettings::default() });
    // As a worker does: each datagram of a train after the first is decoded by comparison
    // with the one before when it can be, which must agree with the full decode.
    let mut previous: Option<&[u8]> = None;
    for datagram in train.chunks(stride) {
        harness.feed(previous, datagram);
        previous = Some(datagram);
    }
    harness.finish();
}

/// Two pipelines fed the same datagrams: `inspect` as a worker runs it (trains decoded by
/// comparison, copies taking the judged datagram's outcome), `reference` judging every
/// datagram in full on its own. Every outcome is checked as it comes, and they must agree.
struct Harness {
    cell: Arc<SnapshotCell>,
    reference_cell: Arc<SnapshotCell>,
    inspect: Pipeline,
    reference: Pipeline,
    inject: [u8; MAX_REJECT_LEN],
    reference_inject: [u8; MAX_REJECT_LEN],
    settings: FlowSettings,
    now_ms: u64,
    generation: u64,
}

impl Harness {
    fn new(settings: FlowSettings) -> Harness {
        let (cell, reference_cell) = (fuzz_snapshot(false, 1), fuzz_snapshot(false, 1));
        let mut inspect = Pipeline::new(Mode::Inspect, 0, Some(Arc::clone(&cell)), settings, false);
        inspect.begin_batch(0);
        // Judges every datagram in full: what the train shortcuts must agree with.
        let mut reference =
            Pipeline::new(Mode::Inspect, 0, Some(Arc::clone(&reference_cell)), settings, false);
        reference.begin_batch(0);
        Harness {
            cell,
            reference_cell,
            inspect,
            reference,
            inject: [0u8; MAX_REJECT_LEN],
            reference_inject: [0u8; MAX_REJECT_LEN],
            settings,
            now_ms: 0,
            generation: 1,
        }
    }

    /// Runs one datagram through both pipelines (`previous`: the datagram before it in the
    /// same batch) and checks the per-datagram invariants.
    fn feed(&mut self, previous: Option<&[u8]>, datagram: &[u8]) -> Judged {
        let decoded = pipeline::decode(datagram);
        if let Some(before) = previous
            && let Ok(before_decoded) = pipeline::decode(before)
            && let Some(shortcut) = pipeline::decode_after(before, &before_decoded, datagram)
        {
            assert_eq!(Ok(shortcut), decoded, "the train shortcut agrees with decode");
        }
        let outcome = self.inspect.process_after(previous, datagram, &mut self.inject);
        let judged_alone = self.reference.process(datagram, &mut self.reference_inject);
        assert_eq!(outcome, judged_alone, "a datagram of a train is judged as on its own");
        if let Outcome::Reject { len } = outcome {
            assert_eq!(self.inject[..len], self.reference_inject[..len]);
        }
        match outcome {
            Outcome::SendBack(_) => {
                let packet = decoded.expect("only decodable datagrams are sent back");
                assert_eq!(
                    packet.geneve_header_len + packet.inner.len,
                    datagram.len(),
                    "the inner packet fills the datagram exactly"
                );
                let addressing = OuterAddressing {
                    src: Ipv4Addr::new(10, 0, 0, 1),
                    dst: Ipv4Addr::new(10, 0, 0, 2),
                    src_port: 50000,
                    dst_port: 6081,
                };
                let mut header = [0u8; OUTER_HEADER_LEN];
                outer::emit(&mut header, &addressing, datagram.len()).expect("fits in IPv4");
            }
            Outcome::Drop(reason) => assert_eq!(decoded.err(), Some(reason)),
            Outcome::Withhold(_) | Outcome::Held => assert!(decoded.is_ok()),
            Outcome::Reject { len } => {
                let packet = decoded.expect("only decodable datagrams are rejected");
                assert!(
                    packet.inner.fragment.is_none_or(|f| f.is_first()),
                    "no reject for a later fragment"
                );
                assert!(!packet.inner.is_icmp_error(), "no reject for an ICMP error");
                let reply = &self.inject[..len];
                assert_eq!(
                    &reply[..packet.geneve_header_len],
                    &datagram[..packet.geneve_header_len]
                );
                // What we inject must itself be a valid GWLB datagram.
                pipeline::decode(reply).expect("a reject decodes");
            }
        }
        Judged { outcome, decoded }
    }

    /// A new receive batch at `now_ms` for both pipelines.
    fn begin_batch(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.inspect.begin_batch(now_ms);
        self.reference.begin_batch(now_ms);
    }

    /// Publishes the other policy (a new generation) and starts a batch under it; the rule
    /// counters of the snapshot it replaces must agree once the batch has settled them.
    fn switch_policy(&mut self, second: bool) {
        let (old, reference_old) = (self.cell.load_full(), self.reference_cell.load_full());
        self.generation += 1;
        self.cell.store(Arc::new(snapshot(second, self.generation)));
        self.reference_cell.store(Arc::new(snapshot(second, self.generation)));
        self.begin_batch(self.now_ms);
        same_rule_hits(&old, &reference_old);
    }

    /// The reference pipeline's flow of `key`: packets, whether it passes and whether it is
    /// still live (not idle past its timeout, so a lookup now finds it).
    fn flow(&mut self, key: &FlowKey) -> Option<FlowView> {
        let (now, timeouts) = (self.now_ms, self.settings.timeouts);
        let flow = self.reference.flows().find(|f| f.key == *key)?;
        Some(FlowView {
            packets: flow.packets,
            passes: flow.decision.action.passes(),
            live: now.saturating_sub(flow.last_seen_ms) <= idle_timeout(&timeouts, flow.tcp),
        })
    }

    /// The end of an input: both pipelines hold the same flows and counted the same.
    fn finish(mut self) {
        assert_eq!(
            flow_states(&mut self.inspect),
            flow_states(&mut self.reference),
            "same flows, same counts"
        );
        same_rule_hits(&self.cell.load(), &self.reference_cell.load());
    }
}

/// What became of a datagram fed to the harness.
#[derive(Debug)]
struct Judged {
    outcome: Outcome,
    decoded: Result<DecodedPacket, DropReason>,
}

#[derive(Debug, Clone, Copy)]
struct FlowView {
    packets: u64,
    passes: bool,
    live: bool,
}

/// The idle timeout of a flow in TCP state `tcp` (as the flow table applies it).
fn idle_timeout(timeouts: &Timeouts, tcp: TcpState) -> u64 {
    match tcp {
        TcpState::NotTcp => timeouts.other_ms,
        TcpState::Closed => timeouts.tcp_closed_ms,
        _ => timeouts.tcp_ms,
    }
}

fn same_rule_hits(snapshot: &Snapshot, reference: &Snapshot) {
    let (hits, reference_hits) = (&snapshot.rule_hits, &reference.rule_hits);
    for rule in (0..3).map(Some).chain([None]) {
        assert_eq!(hits.count(0, rule), reference_hits.count(0, rule), "rule {rule:?} counts");
    }
}

fn passes(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::SendBack(_))
}

/// Every flow of `pipeline` (key, TCP state, decision, packets, bytes), sorted: comparable
/// between two pipelines fed the same datagrams.
pub fn flow_states(pipeline: &mut Pipeline) -> Vec<String> {
    let mut flows: Vec<String> = pipeline
        .flows()
        .map(|f| format!("{:?} {:?} {:?} {} {}", f.key, f.tcp, f.decision, f.packets, f.bytes))
        .collect();
    flows.sort();
    flows
}

/// A small hold pool: a few pending flows fill it, so that its limit is exercised too.
const FUZZ_NAMES: NameLimits = NameLimits { max_bytes: 1024, timeout_ms: 5_000, max_pending: 4 };

/// The first policy exercises every action: allow TCP to 10.20.0.0/24:3306, reject other
/// traffic to it, audit 10.30/16, deny the rest. The second turns it around: allow tcp/3307
/// and udp/53 to db, audit what 10.30/16 sends, reject what goes to it. Each call gets its
/// own rule counters.
fn fuzz_snapshot(second: bool, generation: u64) -> Arc<SnapshotCell> {
    Arc::new(arc_swap::ArcSwap::from_pointee(snapshot(second, generation)))
}

fn snapshot(second: bool, generation: u64) -> Snapshot {
    const GROUPS: &str = "default_action: deny\ngroups:\n  db: {cidrs: [10.20.0.0/24, \"fd00:20::/64\"]}\n\
        \x20 audited: {cidrs: [10.30.0.0/16, \"fd00:30::/64\"]}\n\
        \x20 named: {domains: [\"*.example.com\"]}\nrules:\n";
    const FIRST: &str = "\x20 - {name: db, from: [any], to: [db], ports: [tcp/3306], action: allow}\n\
        \x20 - {name: no-db, from: [any], to: [db], action: reject}\n\
        \x20 - {name: audit, from: [any], to: [audited], action: audit}\n";
    // A name rule first: new TCP and UDP flows to port 443 wait for their server name.
    const SECOND: &str = "\x20 - {name: named, from: [any], to: [named], ports: [tcp/443, udp/443], action: allow}\n\
        \x20 - {name: db, from: [any], to: [db], ports: [tcp/3307, udp/53], action: allow}\n\
        \x20 - {name: audit, from: [audited], to: [any], action: audit}\n\
        \x20 - {name: no-audited, from: [any], to: [audited], action: reject}\n";
    static POLICIES: OnceLock<[Arc<CompiledPolicy>; 2]> = OnceLock::new();
    let policies = POLICIES.get_or_init(|| {
        [FIRST, SECOND].map(|rules| {
            let text = format!("{GROUPS}{rules}");
            let policy = CompiledPolicy::parse(std::path::Path::new("fuzz.yaml"), &text)
                .expect("the fuzz policy compiles");
            Arc::new(policy)
        })
    });
    let policy = Arc::clone(&policies[usize::from(second)]);
    static LABELS: OnceLock<Arc<LabelTable>> = OnceLock::new();
    let labels = Arc::clone(LABELS.get_or_init(|| Arc::new(LabelTable::default())));
    let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
    Snapshot::new(generation, labels, policy, hits)
}

// ---- The generator ----

/// Steps one script runs at most (so that one source never fills its share of the fragment
/// table, which would make later fragments unmatched for reasons the script does not track).
const MAX_STEPS: usize = 200;
/// How long the fragment table surely remembers a first fragment.
const FRAGMENT_MEMORY_MS: u64 = 30_000;
/// Flows, fragmented datagrams and sent packets the generator remembers.
const REMEMBERED: usize = 12;

/// The bytes of a script, read from the front; zeros once they run out.
#[derive(Debug)]
struct Script<'a> {
    bytes: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        taken
    }

    /// One of `items`, by the next byte.
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[usize::from(self.byte()) % items.len()].clone()
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The two ends and the protocol of a flow, as its first packet goes. ICMP flows are echo
/// flows: both "ports" are the identifier; other protocols have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ends {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    sport: u16,
    dport: u16,
}

impl Ends {
    fn reversed(self) -> Ends {
        Ends { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, ..self }
    }

    fn key(&self) -> FlowKey {
        FlowKey::of_packet(self.src, self.sport, self.dst, self.dport, self.protocol).0
    }

    fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }
}

/// A fragmented datagram whose first fragment was sent.
#[derive(Debug, Clone)]
struct Fragmented {
    ends: Ends,
    id: u32,
    /// The whole IP payload (transport header and data) the fragments are cut from.
    payload: Vec<u8>,
    /// The first fragment was judged and refused, and nothing since could have changed the
    /// verdict of its flow (no packet of the flow's own, no policy change, no long pause):
    /// none of its later fragments may pass while it is remembered.
    refused: bool,
    /// When the first fragment was sent (the fragment table forgets it 30 s later).
    sent_ms: u64,
}

impl Fragmented {
    /// What the fragment table keys it by.
    fn fragment_key(&self) -> (IpAddr, IpAddr, u8, u32) {
        (self.ends.src, self.ends.dst, self.ends.protocol, self.id)
    }
}

/// A packet sent, which an ICMP error may quote.
#[derive(Debug, Clone)]
struct Sent {
    ends: Ends,
    /// The inner IP packet.
    inner: Vec<u8>,
    /// Bytes of IP headers in front of its transport header (or fragment data).
    ip_header_len: usize,
    later_fragment: bool,
}

/// What an error quoting a [`Sent`] packet must be judged by.
#[derive(Debug)]
struct QuoteCheck {
    quoted: Ends,
    later_fragment: bool,
    /// The quote holds the IP headers and 8 bytes after them: enough to name the flow.
    names_flow: bool,
}

struct Generator<'a> {
    script: Script<'a>,
    harness: Harness,
    /// The datagram sent last in the current batch.
    last: Option<Vec<u8>>,
    flows: Vec<Ends>,
    fragmented: Vec<Fragmented>,
    sent: Vec<Sent>,
    second_policy: bool,
    cookie: u32,
}

/// Runs a generator script (see the module documentation).
fn generated(mode: u8, script: &[u8]) {
    // The low bits of the mode byte may make rejects scarce, so that the budget runs out.
    let reject_limit = if mode & 0x10 != 0 { u32::from(mode & 0x0f) } else { 1000 };
    let settings =
        FlowSettings { max_flows: 64, reject_limit, names: FUZZ_NAMES, ..FlowSettings::default() };
    let mut generator = Generator {
        script: Script { bytes: script },
        harness: Harness::new(settings),
        last: None,
        flows: Vec::new(),
        fragmented: Vec::new(),
        sent: Vec::new(),
        second_policy: false,
        cookie: 1,
    };
    for _ in 0..MAX_STEPS {
        if generator.script.is_empty() {
            break;
        }
        generator.step();
    }
    generator.harness.finish();
}

/// Addresses of the policy's groups and of kinds a reject must never go to.
const V4: [[u8; 4]; 10] = [
    [10, 0, 1, 10],
    [10, 0, 1, 11],
    [10, 20, 0, 5],
    [10, 20, 0, 6],
    [10, 30, 0, 1],
    [192, 0, 2, 9],
    [255, 255, 255, 255],
    [224, 0, 0, 1],
    [127, 0, 0, 1],
    [0, 0, 0, 0],
];
const V6: [u128; 10] = [
    0xfd00_0001_0000_0000_0000_0000_0000_0010,
    0xfd00_0001_0000_0000_0000_0000_0000_0011,
    0xfd00_0020_0000_0000_0000_0000_0000_0005,
    0xfd00_0020_0000_0000_0000_0000_0000_0006,
    0xfd00_0030_0000_0000_0000_0000_0000_0001,
    0x2001_0db8_0000_0000_0000_0000_0000_0009,
    0xff02_0000_0000_0000_0000_0000_0000_0001,
    0xff02_0000_0000_0000_0000_0000_0000_0002,
    1,
    0,
];
/// A router on the path, which sends ICMP errors about packets it could not forward.
const ROUTER_V4: [u8; 4] = [10, 99, 0, 1];
const ROUTER_V6: u128 = 0xfd00_0099_0000_0000_0000_0000_0000_0001;
const PORTS: [u16; 8] = [3306, 3307, 53, 443, 22, 40000, 40001, 0];
const PROTOCOLS: [u8; 5] = [ip_proto::TCP, ip_proto::TCP, ip_proto::UDP, ip_proto::ICMP, 47];

impl Generator<'_> {
    fn step(&mut self) {
        match self.script.byte() % 8 {
            0 => {
                let ends = self.new_ends();
                self.remember_flow(ends);
                self.send_whole(ends);
            }
            1 => {
                let ends = self.some_flow();
                let ends = if self.script.byte() & 1 == 0 { ends } else { ends.reversed() };
                self.send_whole(ends);
            }
            2 => self.first_fragment(),
            3 => self.later_fragment(),
            4 => self.icmp_error(),
            5 => {
                // An inner packet of the script's own bytes.
                let len = usize::from(self.script.byte() % 80);
                let inner = self.script.take(len).to_vec();
                let datagram = geneve::encapsulate(&inner, &self.gwlb());
                self.send(&datagram, None);
            }
            6 => self.mutated(),
            _ => self.control(),
        }
    }

    fn gwlb(&self) -> GwlbOptions {
        GwlbOptions { endpoint_id: Some(1), attachment_id: Some(2), flow_cookie: self.cookie }
    }

    fn address(&mut self, v6: bool) -> IpAddr {
        // Mostly the policy's groups; now and then an address no reject may go to.
        let b = self.script.byte();
        let index = if b & 0x0f >= 10 { usize::from(b & 0x0f) % 6 } else { usize::from(b & 0x0f) };
        if v6 {
            IpAddr::V6(Ipv6Addr::from(V6[index]))
        } else {
            IpAddr::V4(Ipv4Addr::from(V4[index]))
        }
    }

    fn port(&mut self) -> u16 {
        let b = self.script.byte();
        if b & 0x80 != 0 { self.script.u16() } else { PORTS[usize::from(b) % PORTS.len()] }
    }

    fn new_ends(&mut self) -> Ends {
        let v6 = self.script.byte() & 0x80 != 0;
        let (src, dst) = (self.address(v6), self.address(v6));
        let protocol = match self.script.pick(&PROTOCOLS) {
            ip_proto::ICMP if v6 => ip_proto::ICMPV6,
            other => other,
        };
        let (sport, dport) = match protocol {
            ip_proto::TCP | ip_proto::UDP => (self.port(), self.port()),
            ip_proto::ICMP | ip_proto::ICMPV6 => {
                let ident = self.port();
                (ident, ident)
            }
            _ => (0, 0),
        };
        Ends { src, dst, protocol, sport, dport }
    }

    fn remember_flow(&mut self, ends: Ends) {
        remember(&mut self.flows, ends, self.script.byte());
    }

    /// A remembered flow, or a new one.
    fn some_flow(&mut self) -> Ends {
        if self.flows.is_empty() {
            let ends = self.new_ends();
            self.remember_flow(ends);
            return ends;
        }
        self.script.pick(&self.flows)
    }

    /// The whole IP packet of `ends` with TCP `flags` (for ICMP: request or reply) and
    /// `payload`, and the length of its IP header.
    fn packet(&mut self, ends: Ends, flags: u8, payload: &[u8]) -> (Vec<u8>, usize) {
        let (src, dst) = (ends.src, ends.dst);
        let ip = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!("the generator never mixes address families"),
        };
        let header_len = if ends.is_v6() { 40 } else { 20 };
        let mut out = Vec::new();
        let written = match ends.protocol {
            ip_proto::TCP => {
                let seq = u32::from(self.script.byte()) << 8;
                let mut tcp = ip.tcp(ends.sport, ends.dport, seq, 1000);
                if flags & tcp_flags::SYN != 0 {
                    tcp = tcp.syn();
                }
                if flags & tcp_flags::ACK != 0 {
                    tcp = tcp.ack(seq.wrapping_add(77));
                }
                if flags & tcp_flags::FIN != 0 {
                    tcp = tcp.fin();
                }
                if flags & tcp_flags::RST != 0 {
                    tcp = tcp.rst();
                }
                if flags & tcp_flags::PSH != 0 {
                    tcp = tcp.psh();
                }
                if flags & 0x80 != 0 {
                    // A header longer than 20 bytes (MSS option), for the RFC 1858 check.
                    tcp = tcp.options_raw(&[2, 4, 5, 180]).expect("a 4-byte option fits");
                }
                tcp.write(&mut out, payload).is_ok()
            }
            ip_proto::UDP => ip.udp(ends.sport, ends.dport).write(&mut out, payload).is_ok(),
            ip_proto::ICMP => {
                let (id, seq) = (ends.sport, u16::from(flags));
                let icmp = if flags & 1 == 0 {
                    ip.icmpv4_echo_request(id, seq)
                } else {
                    ip.icmpv4_echo_reply(id, seq)
                };
                icmp.write(&mut out, payload).is_ok()
            }
            ip_proto::ICMPV6 => {
                let (id, seq) = (ends.sport, u16::from(flags));
                let icmp = if flags & 1 == 0 {
                    ip.icmpv6_echo_request(id, seq)
                } else {
                    ip.icmpv6_echo_reply(id, seq)
                };
                icmp.write(&mut out, payload).is_ok()
            }
            other => ip.write(&mut out, IpNumber(other), payload).is_ok(),
        };
        assert!(written, "the generator builds packets etherparse can write");
        (out, header_len)
    }

    fn payload(&mut self) -> Vec<u8> {
        let len = usize::from(self.script.byte() % 64);
        vec![0x5a; len]
    }

    /// Sends an unfragmented packet of `ends`.
    fn send_whole(&mut self, ends: Ends) {
        let flags = self.script.byte();
        let payload = self.payload();
        let (inner, ip_header_len) = self.packet(ends, flags, &payload);
        let datagram = geneve::encapsulate(&inner, &self.gwlb());
        let sent = Sent { ends, inner, ip_header_len, later_fragment: false };
        self.send(&datagram, Some(sent));
    }

    /// The first fragment of a new datagram of a remembered flow: its first 8 to 40 bytes,
    /// sometimes too few for the TCP header (RFC 1858).
    fn first_fragment(&mut self) {
        let ends = self.some_flow();
        let ends = if self.script.byte() & 1 == 0 { ends } else { ends.reversed() };
        let id = if ends.is_v6() {
            u32::from(self.script.u16()) << 8 | u32::from(self.script.byte())
        } else {
            u32::from(self.script.byte() % 8)
        };
        let flags = self.script.byte();
        let mut payload = self.payload();
        payload.resize(payload.len().max(48), 0x33);
        let (whole, header_len) = self.packet(ends, flags, &payload);
        let payload = whole[header_len..].to_vec();
        let first_len = self.script.pick(&[8, 16, 24, 32, 40]).min(payload.len());
        let inner = fragment(ends, id, 0, true, &payload[..first_len]);
        let sent_ms = self.harness.now_ms;
        let fragmented = Fragmented { ends, id, payload, refused: false, sent_ms };
        let ip_header_len = header_len + if ends.is_v6() { 8 } else { 0 };
        let datagram = geneve::encapsulate(&inner, &self.gwlb());
        let sent = Sent { ends, inner, ip_header_len, later_fragment: false };
        let Judged { outcome, decoded } = self.send(&datagram, Some(sent));
        // A dropped first fragment (too small) leaves nothing in the fragment table, or an
        // earlier datagram's entry under the same identification: no expectation then.
        let refused = decoded.is_ok() && !passes(outcome);
        let key = fragmented.fragment_key();
        self.fragmented.retain(|d| d.fragment_key() != key);
        let slot = self.script.byte();
        remember(&mut self.fragmented, Fragmented { refused, ..fragmented }, slot);
    }

    /// A later fragment of a remembered datagram: the one right after its first fragment,
    /// or one at 8 bytes (RFC 3128), or further on; sometimes under another identification.
    fn later_fragment(&mut self) {
        if self.fragmented.is_empty() {
            return self.first_fragment();
        }
        let datagram = self.script.pick(&self.fragmented);
        let offset = match self.script.byte() % 4 {
            0 => 1,
            1 => 2,
            2 => 3,
            _ => u16::from(self.script.byte()).max(1),
        };
        let more = self.script.byte() & 1 != 0;
        let len = 8 * usize::from(self.script.byte() % 4 + 1);
        let start = usize::from(offset) * 8;
        let mut data: Vec<u8> = datagram.payload.iter().skip(start).take(len).copied().collect();
        data.resize(len, 0x44);
        let other_id = self.script.byte() & 0x0f == 0x0f;
        let id = if other_id { datagram.id ^ 1 } else { datagram.id };
        let inner = fragment(datagram.ends, id, offset, more, &data);
        let ip_header_len = if datagram.ends.is_v6() { 48 } else { 20 };
        let bytes = geneve::encapsulate(&inner, &self.gwlb());
        let sent = Sent { ends: datagram.ends, inner, ip_header_len, later_fragment: true };
        let outcome = self.send(&bytes, Some(sent)).outcome;
        let remembered = self.harness.now_ms - datagram.sent_ms < FRAGMENT_MEMORY_MS;
        if datagram.refused && remembered && !other_id {
            assert!(
                !passes(outcome),
                "a later fragment passes although its first fragment was refused: {datagram:?}, \
                 offset {offset}, {outcome:?}"
            );
        }
    }

    /// An ICMP error quoting a packet sent before, from a router or the packet's destination,
    /// to the packet's source or elsewhere; its quote the IP header and 8 bytes (RFC 792), the
    /// whole packet, or less than a flow can be named by.
    fn icmp_error(&mut self) {
        if self.sent.is_empty() {
            let ends = self.some_flow();
            return self.send_whole(ends);
        }
        let quoted = self.script.pick(&self.sent);
        let v6 = quoted.ends.is_v6();
        let from = match self.script.byte() % 3 {
            0 if v6 => IpAddr::V6(Ipv6Addr::from(ROUTER_V6)),
            0 => IpAddr::V4(Ipv4Addr::from(ROUTER_V4)),
            1 => quoted.ends.dst,
            _ => self.address(v6),
        };
        let to = match self.script.byte() % 4 {
            0 | 1 => quoted.ends.src,
            2 => quoted.ends.dst,
            _ => self.address(v6),
        };
        let minimum = quoted.ip_header_len + 8;
        let quote_len = match self.script.byte() % 4 {
            0 | 1 => minimum,
            2 => quoted.inner.len(),
            _ => quoted.ip_header_len + usize::from(self.script.byte() % 8),
        }
        .min(quoted.inner.len())
        .min(1232);
        let quote = &quoted.inner[..quote_len];
        let (icmp_type, code) = if v6 {
            (self.script.pick(&[1, 1, 2, 3, 4]), self.script.byte() % 8)
        } else {
            (self.script.pick(&[3, 3, 3, 11, 12, 4, 5]), self.script.byte() % 16)
        };
        let mut inner = Vec::new();
        let written = match (from, to) {
            (IpAddr::V4(f), IpAddr::V4(t)) => PacketBuilder::ipv4(f.octets(), t.octets(), 64)
                .icmpv4_raw(icmp_type, code, [0, 0, 0x05, 0x78])
                .write(&mut inner, quote)
                .is_ok(),
            (IpAddr::V6(f), IpAddr::V6(t)) => PacketBuilder::ipv6(f.octets(), t.octets(), 64)
                .icmpv6_raw(icmp_type, code, [0, 0, 0x05, 0x78])
                .write(&mut inner, quote)
                .is_ok(),
            _ => unreachable!("the generator never mixes address families"),
        };
        assert!(written, "the generator builds ICMP errors etherparse can write");
        let protocol = if v6 { ip_proto::ICMPV6 } else { ip_proto::ICMP };
        let ends = Ends { src: from, dst: to, protocol, sport: 0, dport: 0 };
        let check = QuoteCheck {
            quoted: quoted.ends,
            later_fragment: quoted.later_fragment,
            names_flow: quote_len >= minimum,
        };
        let datagram = geneve::encapsulate(&inner, &self.gwlb());
        let ip_header_len = if v6 { 40 } else { 20 };
        let sent = Sent { ends, inner, ip_header_len, later_fragment: false };
        self.send_error(&datagram, sent, check);
    }

    /// Sends an ICMP error and checks that it is judged as a packet of the flow it quotes
    /// exactly when it goes to the quoted packet's source and that flow is live, and as a
    /// packet of its own (ICMP between its addresses) otherwise.
    fn send_error(&mut self, datagram: &[u8], sent: Sent, check: QuoteCheck) {
        let error = sent.ends;
        let (quoted_key, own_key) = (check.quoted.key(), error.key());
        let quoted_before = self.harness.flow(&quoted_key);
        let own_before = self.harness.flow(&own_key);
        let Judged { outcome, decoded } = self.send(datagram, Some(sent));
        let decoded = decoded.expect("the generator's ICMP errors decode");
        assert!(decoded.inner.is_icmp_error());
        if quoted_key == own_key {
            // Quoting a packet of its own ICMP flow: no way to tell which judged it.
            return;
        }
        let quoted_after = self.harness.flow(&quoted_key);
        let own_after = self.harness.flow(&own_key);
        let counted_with_quoted = matches!((quoted_before, quoted_after),
            (Some(b), Some(a)) if a.packets == b.packets + 1);
        if counted_with_quoted {
            let flow = quoted_after.expect("counted with a flow that exists");
            assert!(
                error.dst == check.quoted.src && !check.later_fragment,
                "an ICMP error belongs to the flow it quotes only when it goes to the quoted \
                 packet's source: {error:?} quoting {check:?}"
            );
            assert_eq!(passes(outcome), flow.passes, "an ICMP error gets its flow's verdict");
            assert_eq!(
                own_before.map(|f| f.packets),
                own_after.map(|f| f.packets),
                "an error of a flow is no packet of another"
            );
        } else {
            let own = own_after.expect("an ICMP error judged on its own is a packet of its own");
            assert_eq!(passes(outcome), own.passes, "judged on its own: its own flow's verdict");
            let belongs = error.dst == check.quoted.src
                && !check.later_fragment
                && check.names_flow
                && quoted_before.is_some_and(|f| f.live);
            assert!(
                !belongs,
                "an ICMP error to the source of a packet of a live flow belongs to the flow: \
                 {error:?} quoting {check:?}, {quoted_before:?}"
            );
        }
    }

    /// A datagram sent before with one byte changed.
    fn mutated(&mut self) {
        if self.sent.is_empty() {
            return;
        }
        let original = self.script.pick(&self.sent);
        let mut datagram = geneve::encapsulate(&original.inner, &self.gwlb());
        let at = usize::from(self.script.u16()) % datagram.len();
        datagram[at] ^= self.script.byte().max(1);
        self.send(&datagram, None);
    }

    /// Time passes (a little, or past a timeout), the policy changes, or a new batch starts.
    fn control(&mut self) {
        match self.script.byte() % 4 {
            0 => {
                let step = u64::from(self.script.byte()) * 8;
                self.begin_batch(self.harness.now_ms + step);
            }
            1 => {
                let step = self.script.pick(&[10_001, 30_001, 120_001, 350_001]);
                // Flows and first fragments may be forgotten: later fragments then are
                // judged without ports.
                self.forget_verdicts();
                self.begin_batch(self.harness.now_ms + step);
            }
            2 => {
                self.second_policy = !self.second_policy;
                // Flows are judged again under the new policy, their later fragments too.
                self.forget_verdicts();
                self.last = None;
                self.harness.switch_policy(self.second_policy);
            }
            _ => {
                self.cookie = self.cookie.wrapping_add(1);
                self.begin_batch(self.harness.now_ms);
            }
        }
    }

    fn begin_batch(&mut self, now_ms: u64) {
        self.last = None;
        self.harness.begin_batch(now_ms);
    }

    fn forget_verdicts(&mut self) {
        for datagram in &mut self.fragmented {
            datagram.refused = false;
        }
    }

    /// Feeds `datagram` after the one sent before it in this batch; remembers `sent` for ICMP
    /// errors, and forgets the verdicts of first fragments whose flow this datagram may
    /// change.
    fn send(&mut self, datagram: &[u8], sent: Option<Sent>) -> Judged {
        let judged = self.harness.feed(self.last.as_deref(), datagram);
        self.last = Some(datagram.to_vec());
        if let Ok(packet) = &judged.decoded {
            self.touched(&packet.inner);
        }
        if let Some(sent) = sent {
            let slot = self.script.byte();
            remember(&mut self.sent, sent, slot);
        }
        judged
    }

    /// `inner` was judged: the remembered first fragments whose flow it may have changed
    /// (a packet of the flow, or another datagram's first fragment under the same
    /// identification) no longer say what their later fragments get.
    fn touched(&mut self, inner: &InnerPacket) {
        let fragment_key = inner.fragment.map(|f| (inner.src, inner.dst, inner.protocol, f.id));
        let key = if inner.transport == Transport::Fragment {
            // A later fragment is a packet of its first fragment's flow; from the same
            // sender, it changes nothing for its own datagram.
            match self.fragmented.iter().find(|d| Some(d.fragment_key()) == fragment_key) {
                Some(d) => d.ends.key(),
                None => return,
            }
        } else {
            FlowKey::of(inner).0
        };
        let later = inner.transport == Transport::Fragment;
        for datagram in &mut self.fragmented {
            let same_datagram = Some(datagram.fragment_key()) == fragment_key;
            let same_flow = datagram.ends.key() == key;
            // A later fragment of the datagram itself changes nothing; a first fragment
            // under its identification takes its place in the fragment table.
            let changed =
                if later { same_flow && !same_datagram } else { same_flow || same_datagram };
            if changed {
                datagram.refused = false;
            }
        }
    }
}

/// Keeps `item` in `list`, which holds at most [`REMEMBERED`]: when full, in the place
/// `slot` picks.
fn remember<T>(list: &mut Vec<T>, item: T, slot: u8) {
    if list.len() < REMEMBERED {
        list.push(item);
    } else {
        list[usize::from(slot) % REMEMBERED] = item;
    }
}

/// The IP packet of one fragment of a datagram of `ends`: `data` at `offset` (8-byte units).
fn fragment(ends: Ends, id: u32, offset: u16, more: bool, data: &[u8]) -> Vec<u8> {
    let offset = IpFragOffset::try_new(offset).expect("offsets stay below 8192");
    let protocol = IpNumber(ends.protocol);
    let mut out = Vec::new();
    match (ends.src, ends.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let len = u16::try_from(data.len()).expect("small fragments");
            let mut header = Ipv4Header::new(len, 64, protocol, src.octets(), dst.octets())
                .expect("a small payload fits");
            header.identification = id as u16;
            header.more_fragments = more;
            header.fragment_offset = offset;
            header.write(&mut out).expect("writes to a vector");
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let header = Ipv6Header {
                payload_length: u16::try_from(data.len() + 8).expect("small fragments"),
                next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
                hop_limit: 64,
                source: src.octets(),
                destination: dst.octets(),
                ..Ipv6Header::default()
            };
            header.write(&mut out).expect("writes to a vector");
            out.extend_from_slice(&Ipv6FragmentHeader::new(protocol, offset, more, id).to_bytes());
        }
        _ => unreachable!("the generator never mixes address families"),
    }
    out.extend_from_slice(data);
    out
}
