//! `labelwall gwlb-sim`: a GWLB simulator on one host, so that real kernel TCP (iperf3) crosses
//! the appliance. It owns a TUN device (`IFF_TUN | IFF_NO_PI`, its MTU and up state) and
//! everything between it and the appliance: inner IP packets the kernel routes into the device
//! are wrapped in GWLB GENEVE and sent to the appliance over UDP; what comes back is checked
//! against what was sent, and the inner packet of a good reply is written back to the device,
//! from where the kernel routes it on. It configures nothing else: addresses, routes and
//! policy routing are the operator's (or the test's) job, with `ip`.
//!
//! Invariants, GWLB's (see GWLB.md): a flow is a direction-independent inner 5-tuple (fragments:
//! the address pair and protocol; ICMP errors: the flow of the packet they quote); it has one
//! outer UDP source port and one flow cookie for its life; a finished 5-tuple (FIN both ways,
//! or a RST) that starts again with a SYN, or a flow idle past GWLB's timeout, is a new flow
//! with a new cookie. A returned packet is delivered only when it comes from the appliance and
//! the flow's source port and carries, byte for byte, the GENEVE header last sent for its flow
//! (the same options and the current cookie); anything else is counted and dropped, never
//! delivered. [`SimFlows`] keeps this bookkeeping and never touches a socket; [`run`] does the
//! I/O. No per-packet logging: counters, printed to stderr periodically and on SIGTERM/SIGINT.
//!
//! Throughput limits (it is a test tool, correctness first): a TUN device without
//! `IFF_VNET_HDR` takes one `read(2)` and one `write(2)` per packet, and the kernel segments
//! TSO/GSO before the device, so every MTU-sized packet crosses into user space twice here and
//! twice in the appliance. Sends to the appliance are batched (`sendmmsg` on a raw socket, so
//! each flow has its own outer source port, as GWLB gives it) and replies are received in
//! batches (recvmmsg with GRO, quinn-udp); one thread per direction, one flow-table lock per
//! batch. On the 2-core machines of this project, shared with iperf3 and the appliance, expect
//! TCP in the order of a Gbit/s or less (docs/performance.md has the measured figure); use
//! `labelwall loadgen` to measure the appliance itself. Not done: reading GSO super-packets
//! (`IFF_VNET_HDR` with `TUNSETOFFLOAD`) and segmenting them here, which would take most of
//! the system calls off the TUN side.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, IoSliceMut, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSockRef, UdpSocketState};

use crate::conntrack::FlowKey;
use crate::net::nexthop::{self, SingleSender};
use crate::net::sys::{self, RawSender, SEND_BATCH, TxItem, bind_udp_receiver, wait_readable};
use crate::net::tun;
use crate::packet::{InnerPacket, Transport, ip_proto, is_icmp_unreachable, tcp_flags};
use crate::pipeline::{MAX_GENEVE_DATAGRAM, decode};
use crate::wire::geneve::{PROTOCOL_IPV4, PROTOCOL_IPV6, protocol_type_of};
use crate::wire::outer::{OUTER_HEADER_LEN, OuterAddressing};
use crate::wire::{
    DropReason, GWLB_COOKIE, GWLB_HEADER_LEN, GwlbOptions, emit_gwlb_header, gwlb_header_cookie,
};

/// Largest `--mtu`: the inner packet plus GENEVE must fit in the largest datagram GWLB sends.
pub const MAX_MTU: u32 = (MAX_GENEVE_DATAGRAM - GWLB_HEADER_LEN) as u32;
/// Smallest `--mtu` (IPv6's minimum).
pub const MIN_MTU: u32 = 1280;
const SEND_BUFFER: usize = 4 << 20;
const RECEIVE_BUFFER: usize = 16 << 20;
/// One receive slot holds a whole GRO train (the kernel caps those at 64 KiB).
const RECEIVE_SLOT: usize = 64 * 1024;
/// How long an idle loop waits before it looks at the stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often idle flows are swept out of the table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Flags of `labelwall gwlb-sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct GwlbSimArgs {
    /// Name of the TUN device to create; it is brought up with --mtu and goes away on exit.
    /// Route the traffic GWLB should carry into it (the simulator sets no address or route).
    #[arg(long, value_name = "NAME", default_value = "lw-gwlb0", value_parser = parse_interface_name)]
    pub tun: String,
    /// The appliance's GENEVE address (its dataplane.listen).
    #[arg(long, value_name = "IP:PORT")]
    pub appliance: SocketAddrV4,
    /// This GWLB node's IPv4 address: GENEVE is sent from it and replies arrive on it.
    #[arg(long, value_name = "IP")]
    pub local: Ipv4Addr,
    /// The port replies arrive on (the appliance's dataplane.reply_port).
    #[arg(long, value_name = "PORT", default_value_t = 6081)]
    pub reply_port: u16,
    /// MTU of the TUN device: the largest inner packet (GENEVE adds 68 bytes outside it).
    #[arg(
        long,
        default_value_t = 1500,
        value_parser = clap::value_parser!(u32).range(i64::from(MIN_MTU)..=i64::from(MAX_MTU))
    )]
    pub mtu: u32,
    /// Outer UDP source ports given to flows (one per flow, as GWLB picks them).
    #[arg(long, value_name = "FIRST-LAST", default_value = "20000-29999")]
    pub source_ports: PortRange,
    /// GWLB endpoint ENI id sent in option type 1 (decimal or 0x hex).
    #[arg(long, value_name = "ID", default_value = "0x0a1b2c3d4e5f6071", value_parser = parse_id)]
    pub endpoint_id: u64,
    /// Attachment id sent in option type 2 (decimal or 0x hex).
    #[arg(long, value_name = "ID", default_value = "0x1020304050607080", value_parser = parse_id)]
    pub attachment_id: u64,
    /// Idle timeout of TCP flows in seconds (GWLB's default); after it a 5-tuple is a new flow.
    #[arg(long, value_name = "SECS", default_value_t = 350)]
    pub tcp_idle_timeout: u64,
    /// Idle timeout of other flows in seconds (GWLB's, fixed there).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub other_idle_timeout: u64,
    /// Most flows tracked at once; packets of further new flows are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_flows: u32,
    /// Print the counters to stderr every SECS seconds (0: only when stopping).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub stats_every: u64,
}

fn parse_interface_name(text: &str) -> Result<String, String> {
    let valid = (1..16).contains(&text.len())
        && !text.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
        ))
    }
}

fn parse_id(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("`{text}` is not a 64-bit id (decimal or 0x hex)"))
}

/// An inclusive range of UDP ports, written `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// The port at `n` modulo the range's size.
    fn nth(&self, n: u32) -> u16 {
        let size = u32::from(self.last - self.first) + 1;
        self.first + (n % size) as u16
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (first, last) = text.split_once('-').unwrap_or((text, text));
        let port = |p: &str| {
            p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!("`{text}` is not a port range FIRST-LAST with ports 1 to 65535")
            })
        };
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            return Err(format!("`{text}`: the first port is above the last"));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// What the flow bookkeeping needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSettings {
    pub endpoint_id: u64,
    pub attachment_id: u64,
    pub source_ports: PortRange,
    pub tcp_idle_ms: u64,
    pub other_idle_ms: u64,
    pub max_flows: usize,
    /// Start of the cookie sequence, so that two runs do not hand out the same cookies.
    pub cookie_seed: u32,
}

impl SimSettings {
    fn from_args(args: &GwlbSimArgs) -> SimSettings {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        SimSettings {
            endpoint_id: args.endpoint_id,
            attachment_id: args.attachment_id,
            source_ports: args.source_ports,
            tcp_idle_ms: args.tcp_idle_timeout.saturating_mul(1000),
            other_idle_ms: args.other_idle_timeout.saturating_mul(1000),
            max_flows: args.max_flows as usize,
            cookie_seed: nanos ^ std::process::id().rotate_left(16),
        }
    }
}

/// How to wrap one inner packet: from which outer source port, with which GENEVE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wrap {
    pub port: u16,
    pub header: [u8; GWLB_HEADER_LEN],
    pub start: FlowStart,
}

impl Wrap {
    /// The flow cookie in [`Wrap::header`].
    pub fn cookie(&self) -> u32 {
        gwlb_header_cookie(&self.header)
    }
}

/// Whether a packet found its flow or started one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStart {
    /// The flow exists: its port and cookie.
    Existing,
    /// A 5-tuple not seen before.
    New,
    /// A known 5-tuple that had finished or gone idle starts again: a new cookie.
    Renewed,
}

/// Why an inner packet from the TUN device is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefusal {
    /// Not a well-formed IPv4 or IPv6 packet.
    Unparsable(DropReason),
    /// A new flow while `max_flows` flows are tracked and none is idle.
    TableFull,
}

/// The verdict on one datagram that came back from the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyCheck {
    /// Write `datagram[inner_offset..]` to the TUN device. `reject`: a TCP RST or an ICMP
    /// destination unreachable that was never sent for this flow: the appliance's reject.
    Deliver { inner_offset: usize, reject: bool },
    /// Not well-formed GWLB GENEVE around a well-formed inner packet.
    Malformed(DropReason),
    /// No flow has this inner 5-tuple.
    UnknownFlow,
    /// From another UDP source port than the flow's.
    WrongPort,
    /// The flow's header, but with a cookie the flow no longer has (or never had).
    StaleCookie,
    /// Another GENEVE header than the one sent (options, lengths, protocol type, flags).
    WrongHeader,
}

/// TCP progress, enough to tell when a 5-tuple is finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TcpEnds {
    /// FIN seen from side A / side B of the [`FlowKey`].
    fin_a: bool,
    fin_b: bool,
    reset: bool,
}

impl TcpEnds {
    fn finished(&self) -> bool {
        self.reset || (self.fin_a && self.fin_b)
    }

    fn advance(&mut self, flags: u8, from_a: bool) {
        if flags & tcp_flags::RST != 0 {
            self.reset = true;
        }
        if flags & tcp_flags::FIN != 0 {
            if from_a {
                self.fin_a = true;
            } else {
                self.fin_b = true;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct SimFlow {
    header: [u8; GWLB_HEADER_LEN],
    port: u16,
    last_seen_ms: u64,
    tcp: TcpEnds,
    /// A RST or destination-unreachable of this flow went out through the simulator, so one
    /// coming back is not the appliance's own.
    sent_refusal: bool,
}

/// Facts about an inner packet the bookkeeping uses.
#[derive(Debug, Clone, Copy)]
struct PacketFacts {
    key: FlowKey,
    /// The packet was sent by side A of `key`.
    from_a: bool,
    /// TCP flags, 0 when not TCP.
    tcp_flags: u8,
    /// A TCP RST or an ICMP / ICMPv6 destination unreachable.
    refusal: bool,
    ipv6: bool,
}

impl PacketFacts {
    fn of(bytes: &[u8], packet: &InnerPacket) -> PacketFacts {
        let (own, side) = flow_of(packet);
        // An ICMP error is part of the flow of the packet it quotes.
        let key = packet.quoted(bytes).map_or(own, |quoted| flow_of(&quoted).0);
        let tcp_flags = if packet.fragment.is_some() { 0 } else { packet.transport.tcp_flags() };
        let refusal = match packet.transport {
            _ if packet.fragment.is_some() => false,
            Transport::Icmp { icmp_type, .. } => is_icmp_unreachable(packet.protocol, icmp_type),
            _ => tcp_flags & tcp_flags::RST != 0,
        };
        PacketFacts {
            key,
            from_a: side == crate::conntrack::Side::A,
            tcp_flags,
            refusal,
            ipv6: packet.src.is_ipv6(),
        }
    }

    fn starts_connection(&self) -> bool {
        self.key.protocol == ip_proto::TCP
            && self.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
    }
}

/// The simulator's flow of a packet: as the appliance keys it, but every fragment of an
/// address pair and protocol is one flow (later fragments carry no ports to tell them apart).
fn flow_of(packet: &InnerPacket) -> (FlowKey, crate::conntrack::Side) {
    if packet.fragment.is_some() {
        FlowKey::of_packet(packet.src, 0, packet.dst, 0, packet.protocol)
    } else {
        FlowKey::of(packet)
    }
}

/// A bijection on u32 (murmur3's finaliser): consecutive inputs give unrelated outputs.
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// The simulator's flow table: which port and cookie each inner flow has, and whether a
/// returned datagram carries exactly what was sent for its flow.
#[derive(Debug)]
pub struct SimFlows {
    settings: SimSettings,
    flows: HashMap<FlowKey, SimFlow, ahash::RandomState>,
    /// Cookies handed out so far; cookie n is `mix32(seed + n)`, so none repeats for 2^32 flows.
    issued: u32,
    created: u64,
    renewed: u64,
}

impl SimFlows {
    pub fn new(settings: SimSettings) -> SimFlows {
        SimFlows {
            settings,
            flows: HashMap::with_capacity_and_hasher(
                settings.max_flows.min(1 << 16),
                ahash::RandomState::new(),
            ),
            issued: 0,
            created: 0,
            renewed: 0,
        }
    }

    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows started so far (new 5-tuples and renewed ones).
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Flows that got a new cookie because their 5-tuple was reused after finishing or idling.
    pub fn renewed(&self) -> u64 {
        self.renewed
    }

    fn idle_ms(&self, protocol: u8) -> u64 {
        if protocol == ip_proto::TCP {
            self.settings.tcp_idle_ms
        } else {
            self.settings.other_idle_ms
        }
    }

    /// Takes one inner packet read from the TUN device: finds or starts its flow and says how
    /// to wrap it.
    pub fn outbound(&mut self, inner: &[u8], now_ms: u64) -> Result<Wrap, SendRefusal> {
        let packet =
            InnerPacket::parse(protocol_type_of(inner), inner).map_err(SendRefusal::Unparsable)?;
        let facts = PacketFacts::of(inner, &packet);
        let idle_ms = self.idle_ms(facts.key.protocol);
        let start = match self.flows.get(&facts.key) {
            None => FlowStart::New,
            Some(flow) if now_ms.saturating_sub(flow.last_seen_ms) >= idle_ms => FlowStart::Renewed,
            Some(flow) if flow.tcp.finished() && facts.starts_connection() => FlowStart::Renewed,
            Some(_) => FlowStart::Existing,
        };
        if start == FlowStart::New && self.flows.len() >= self.settings.max_flows {
            self.expire(now_ms);
            if self.flows.len() >= self.settings.max_flows {
                return Err(SendRefusal::TableFull);
            }
        }
        if start != FlowStart::Existing {
            let flow = self.start_flow(facts.ipv6, now_ms);
            self.flows.insert(facts.key, flow);
            self.created += 1;
            self.renewed += u64::from(start == FlowStart::Renewed);
        }
        let flow = self.flows.get_mut(&facts.key).expect("inserted above");
        flow.last_seen_ms = now_ms;
        flow.tcp.advance(facts.tcp_flags, facts.from_a);
        flow.sent_refusal |= facts.refusal;
        Ok(Wrap { port: flow.port, header: flow.header, start })
    }

    fn start_flow(&mut self, ipv6: bool, now_ms: u64) -> SimFlow {
        self.issued = self.issued.wrapping_add(1);
        let cookie = mix32(self.settings.cookie_seed.wrapping_add(self.issued));
        let gwlb = GwlbOptions {
            endpoint_id: Some(self.settings.endpoint_id),
            attachment_id: Some(self.settings.attachment_id),
            flow_cookie: cookie,
        };
        let mut header = [0u8; GWLB_HEADER_LEN];
        emit_gwlb_header(&mut header, if ipv6 { PROTOCOL_IPV6 } else { PROTOCOL_IPV4 }, &gwlb);
        SimFlow {
            header,
            port: self.settings.source_ports.nth(mix32(cookie ^ 0x9e37_79b9)),
            last_seen_ms: now_ms,
            tcp: TcpEnds::default(),
            sent_refusal: false,
        }
    }

    /// Checks one datagram that came back from the appliance's `from_port` (the outer UDP
    /// source port, which must be the flow's).
    pub fn inbound(&mut self, datagram: &[u8], from_port: u16, now_ms: u64) -> ReplyCheck {
        let decoded = match decode(datagram) {
            Ok(decoded) => decoded,
            Err(reason) => return ReplyCheck::Malformed(reason),
        };
        let inner_offset = decoded.geneve_header_len;
        let facts = PacketFacts::of(&datagram[inner_offset..], &decoded.inner);
        let Some(flow) = self.flows.get_mut(&facts.key) else {
            return ReplyCheck::UnknownFlow;
        };
        if from_port != flow.port {
            return ReplyCheck::WrongPort;
        }
        if datagram[..inner_offset] != flow.header[..] {
            let same_but_cookie = inner_offset == GWLB_HEADER_LEN
                && datagram[..GWLB_COOKIE.start] == flow.header[..GWLB_COOKIE.start]
                && datagram[GWLB_COOKIE.end..inner_offset] == flow.header[GWLB_COOKIE.end..];
            return if same_but_cookie { ReplyCheck::StaleCookie } else { ReplyCheck::WrongHeader };
        }
        flow.last_seen_ms = now_ms;
        flow.tcp.advance(facts.tcp_flags, facts.from_a);
        ReplyCheck::Deliver { inner_offset, reject: facts.refusal && !flow.sent_refusal }
    }

    /// Forgets flows idle past their timeout; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.flows.len();
        let (tcp_ms, other_ms) = (self.settings.tcp_idle_ms, self.settings.other_idle_ms);
        self.flows.retain(|key, flow| {
            let idle_ms = if key.protocol == ip_proto::TCP { tcp_ms } else { other_ms };
            now_ms.saturating_sub(flow.last_seen_ms) < idle_ms
        });
        before - self.flows.len()
    }
}

/// Counters of one run, shared by both directions.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Inner packets wrapped and sent to the appliance, and their inner bytes.
    pub out_packets: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Of those, sent as Ethernet frames through the packet socket (the rest: raw socket).
    pub out_frames: AtomicU64,
    /// Inner packets of good replies written back to the TUN device, and their bytes.
    pub back_packets: AtomicU64,
    pub back_bytes: AtomicU64,
    /// Good replies that were the appliance's rejects (RST / ICMP unreachable it made).
    pub rejects: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown_flow: AtomicU64,
    pub wrong_port: AtomicU64,
    pub stale_cookie: AtomicU64,
    pub wrong_header: AtomicU64,
    /// Datagrams on the reply port from another address than the appliance's.
    pub foreign: AtomicU64,
    /// Packets read from the TUN device that are not well-formed IP.
    pub unparsable: AtomicU64,
    pub table_full: AtomicU64,
    pub send_failed: AtomicU64,
    pub tun_write_failed: AtomicU64,
}

impl SimStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Every returned datagram that was not delivered because it did not match.
    pub fn mismatches(&self) -> u64 {
        [
            &self.malformed,
            &self.unknown_flow,
            &self.wrong_port,
            &self.stale_cookie,
            &self.wrong_header,
            &self.foreign,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    fn count_reply(&self, check: ReplyCheck) {
        let counter = match check {
            ReplyCheck::Deliver { .. } => return,
            ReplyCheck::Malformed(_) => &self.malformed,
            ReplyCheck::UnknownFlow => &self.unknown_flow,
            ReplyCheck::WrongPort => &self.wrong_port,
            ReplyCheck::StaleCookie => &self.stale_cookie,
            ReplyCheck::WrongHeader => &self.wrong_header,
        };
        Self::add(counter, 1);
    }

    /// One line of `key=value` pairs, for people and for tests.
    fn line(&self, flows: &SimFlows) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "out={} out_bytes={} out_frames={} back={} back_bytes={} rejects={} mismatches={} \
             (malformed={} unknown_flow={} wrong_port={} stale_cookie={} wrong_header={} \
             foreign={}) flows={} flows_created={} flows_renewed={} unparsable={} \
             table_full={} send_failed={} tun_write_failed={}",
            get(&self.out_packets),
            get(&self.out_bytes),
            get(&self.out_frames),
            get(&self.back_packets),
            get(&self.back_bytes),
            get(&self.rejects),
            self.mismatches(),
            get(&self.malformed),
            get(&self.unknown_flow),
            get(&self.wrong_port),
            get(&self.stale_cookie),
            get(&self.wrong_header),
            get(&self.foreign),
            flows.len(),
            flows.created(),
            flows.renewed(),
            get(&self.unparsable),
            get(&self.table_full),
            get(&self.send_failed),
            get(&self.tun_write_failed),
        )
    }
}

/// Runs the simulator until SIGTERM or SIGINT; prints the counters on the way out.
pub fn run(args: &GwlbSimArgs) -> anyhow::Result<()> {
    let tun = tun::open_tun(&args.tun).with_context(|| {
        format!(
            "cannot create TUN device {}: gwlb-sim needs root (CAP_NET_ADMIN) and /dev/net/tun",
            args.tun
        )
    })?;
    tun::set_link_mtu_up(&args.tun, args.mtu)
        .with_context(|| format!("cannot set MTU {} on {} and bring it up", args.mtu, args.tun))?;
    let raw = RawSender::open(SEND_BUFFER)
        .context("cannot open a raw socket to send GENEVE: gwlb-sim needs root (CAP_NET_RAW)")?;
    let reply_at = SocketAddrV4::new(args.local, args.reply_port);
    let replies = bind_reply_socket(reply_at)?;
    let reply_state = UdpSocketState::new(UdpSockRef::from(&replies))
        .context("cannot set up the reply socket")?;
    sys::skip_unused_control_messages(&replies, false).context("cannot set up the reply socket")?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop))?;
    // As the appliance does: frames through a packet socket once the next hop is known.
    let (mut sender, resolver) = nexthop::standalone(raw, SEND_BUFFER, &stop);

    let flows = Arc::new(Mutex::new(SimFlows::new(SimSettings::from_args(args))));
    let stats = Arc::new(SimStats::default());
    let clock = Instant::now();
    let returning = {
        let tun = tun.try_clone().context("cannot duplicate the TUN file descriptor")?;
        let (flows, stats, stop) = (Arc::clone(&flows), Arc::clone(&stats), Arc::clone(&stop));
        let appliance = *args.appliance.ip();
        std::thread::Builder::new().name("gwlb-sim-return".into()).spawn(move || {
            let ends = ReturnEnds { socket: &replies, state: &reply_state, tun: &tun };
            return_loop(&ends, appliance, &flows, &stats, &stop, clock)
        })?
    };
    eprintln!(
        "gwlb-sim: ready: {} (mtu {}) -> appliance {} from {} (source ports {}), replies on {}",
        args.tun, args.mtu, args.appliance, args.local, args.source_ports, reply_at
    );
    let forwarding = ForwardLoop {
        tun: &tun,
        sender: &mut sender,
        flows: &flows,
        stats: &stats,
        stop: &stop,
        clock,
        local: args.local,
        appliance: args.appliance,
        slot: GWLB_HEADER_LEN + args.mtu as usize,
        stats_every: Duration::from_secs(args.stats_every),
    }
    .run();
    stop.store(true, Ordering::Release);
    let returned = returning.join();
    if let Some(resolver) = resolver {
        let _ = resolver.join();
    }
    let line = stats.line(&flows.lock().expect("flow table lock"));
    eprintln!("gwlb-sim: stopped: {line}");
    forwarding.context("reading from the TUN device failed")?;
    match returned {
        Ok(result) => result.context("receiving replies failed"),
        Err(_) => bail!("the reply thread panicked"),
    }
}

fn bind_reply_socket(at: SocketAddrV4) -> anyhow::Result<std::net::UdpSocket> {
    bind_udp_receiver(at, RECEIVE_BUFFER).with_context(|| {
        format!(
            "cannot listen for replies on {at}: give --local an address of this host and \
             --reply-port a free port (the appliance's reply_port)"
        )
    })
}

/// Sets `stop` on SIGTERM or SIGINT. The handlers are installed before this returns.
fn watch_signals(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal runtime")?;
    let (mut terminate, mut interrupt) = runtime.block_on(async {
        anyhow::Ok((
            signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        ))
    })?;
    std::thread::Builder::new().name("gwlb-sim-signals".into()).spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        });
        stop.store(true, Ordering::Release);
    })?;
    Ok(())
}

/// TUN device -> appliance: read a batch of inner packets, wrap them, send them in one go.
struct ForwardLoop<'a> {
    tun: &'a File,
    sender: &'a mut SingleSender,
    flows: &'a Mutex<SimFlows>,
    stats: &'a SimStats,
    stop: &'a AtomicBool,
    clock: Instant,
    local: Ipv4Addr,
    appliance: SocketAddrV4,
    /// Bytes per packet in the buffer: GENEVE header, then room for an MTU-sized packet.
    slot: usize,
    stats_every: Duration,
}

impl ForwardLoop<'_> {
    fn run(self) -> io::Result<()> {
        let ForwardLoop {
            mut tun,
            sender,
            flows,
            stats,
            stop,
            clock,
            local,
            appliance,
            slot,
            stats_every,
        } = self;
        let mut buffer = vec![0u8; slot * SEND_BATCH];
        let mut lens = [0usize; SEND_BATCH];
        let mut tx: Vec<TxItem> = Vec::with_capacity(SEND_BATCH);
        let mut next_sweep = clock + SWEEP_EVERY;
        let mut next_stats = clock + stats_every;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next_sweep {
                flows.lock().expect("flow table lock").expire(clock.elapsed().as_millis() as u64);
                next_sweep = now + SWEEP_EVERY;
            }
            if !stats_every.is_zero() && now >= next_stats {
                eprintln!("gwlb-sim: {}", stats.line(&flows.lock().expect("flow table lock")));
                next_stats = now + stats_every;
            }
            let mut count = 0;
            while count < SEND_BATCH {
                let room = &mut buffer[count * slot + GWLB_HEADER_LEN..(count + 1) * slot];
                match tun.read(room) {
                    Ok(len) => {
                        lens[count] = len;
                        count += 1;
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => break,
                    Err(error) => return Err(error),
                }
            }
            if count == 0 {
                wait_readable(tun.as_raw_fd(), IDLE_WAIT)?;
                continue;
            }
            let now_ms = clock.elapsed().as_millis() as u64;
            let mut table = flows.lock().expect("flow table lock");
            for (i, &len) in lens[..count].iter().enumerate() {
                let at = i * slot;
                let inner = &buffer[at + GWLB_HEADER_LEN..at + GWLB_HEADER_LEN + len];
                let wrap = match table.outbound(inner, now_ms) {
                    Ok(wrap) => wrap,
                    Err(SendRefusal::Unparsable(_)) => {
                        SimStats::add(&stats.unparsable, 1);
                        continue;
                    }
                    Err(SendRefusal::TableFull) => {
                        SimStats::add(&stats.table_full, 1);
                        continue;
                    }
                };
                buffer[at..at + GWLB_HEADER_LEN].copy_from_slice(&wrap.header);
                let addressing = OuterAddressing {
                    src: local,
                    dst: *appliance.ip(),
                    src_port: wrap.port,
                    dst_port: appliance.port(),
                };
                if let Some(item) = TxItem::new(&addressing, at, GWLB_HEADER_LEN + len) {
                    tx.push(item);
                }
            }
            drop(table);
            let reports = sender.send(&tx, &buffer);
            SimStats::add(&stats.out_frames, reports.packet.sent);
            let report = reports.total();
            SimStats::add(&stats.out_packets, report.sent);
            SimStats::add(
                &stats.out_bytes,
                report.sent_bytes - report.sent * (OUTER_HEADER_LEN + GWLB_HEADER_LEN) as u64,
            );
            SimStats::add(&stats.send_failed, report.failed);
            tx.clear();
        }
        Ok(())
    }
}

/// What the return direction reads from and writes to.
struct ReturnEnds<'a> {
    socket: &'a std::net::UdpSocket,
    state: &'a UdpSocketState,
    tun: &'a File,
}

/// Appliance -> TUN device: receive a batch, check every datagram, deliver the good ones.
fn return_loop(
    ends: &ReturnEnds<'_>,
    appliance: Ipv4Addr,
    flows: &Mutex<SimFlows>,
    stats: &SimStats,
    stop: &AtomicBool,
    clock: Instant,
) -> io::Result<()> {
    let mut storage = vec![0u8; RECEIVE_SLOT * BATCH_SIZE];
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    let mut deliver: Vec<(usize, usize)> = Vec::with_capacity(BATCH_SIZE * 64);
    let mut tun = ends.tun;
    while !stop.load(Ordering::Acquire) {
        let result = {
            let mut chunks = storage.chunks_exact_mut(RECEIVE_SLOT);
            let mut slots: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            ends.state.recv(UdpSockRef::from(ends.socket), &mut slots, &mut metas)
        };
        let count = match result {
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(ends.socket.as_raw_fd(), IDLE_WAIT)?;
                continue;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        let now_ms = clock.elapsed().as_millis() as u64;
        let mut table = flows.lock().expect("flow table lock");
        for (slot, meta) in metas[..count].iter().enumerate() {
            let start = slot * RECEIVE_SLOT;
            let stride = if meta.stride == 0 { meta.len.max(1) } else { meta.stride };
            if meta.addr.ip() != IpAddr::V4(appliance) {
                SimStats::add(&stats.foreign, meta.len.div_ceil(stride) as u64);
                continue;
            }
            let mut offset = start;
            for datagram in storage[start..start + meta.len].chunks(stride) {
                let check = table.inbound(datagram, meta.addr.port(), now_ms);
                match check {
                    ReplyCheck::Deliver { inner_offset, reject } => {
                        deliver.push((offset + inner_offset, datagram.len() - inner_offset));
                        SimStats::add(&stats.rejects, u64::from(reject));
                    }
                    other => stats.count_reply(other),
                }
                offset += datagram.len();
            }
        }
        drop(table);
        for &(at, len) in &deliver {
            // A TUN device takes a packet whole or not at all.
            match tun.write(&storage[at..at + len]) {
                Ok(written) if written == len => {
                    SimStats::add(&stats.back_packets, 1);
                    SimStats::add(&stats.back_bytes, len as u64);
                }
                Ok(_) | Err(_) => SimStats::add(&stats.tun_write_failed, 1),
            }
        }
        deliver.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const A: [u8; 4] = [10, 0, 1, 15];
    const B: [u8; 4] = [10, 20, 0, 5];

    fn settings() -> SimSettings {
        SimSettings {
            endpoint_id: 0x0a1b_2c3d_4e5f_6071,
            attachment_id: 0x1020_3040_5060_7080,
            source_ports: PortRange { first: 20000, last: 20999 },
            tcp_idle_ms: 350_000,
            other_idle_ms: 120_000,
            max_flows: 16,
            cookie_seed: 7,
        }
    }

    #[derive(Clone, Copy)]
    enum Flags {
        Syn,
        SynAck,
        Ack,
        Fin,
        Rst,
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: Flags) -> Vec<u8> {
        let mut step = PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, 100, 64_000);
        step = match flags {
            Flags::Syn => step.syn(),
            Flags::SynAck => step.syn().ack(1),
            Flags::Ack => step.ack(1),
            Flags::Fin => step.fin().ack(1),
            Flags::Rst => step.rst().ack(1),
        };
        let mut out = Vec::new();
        step.write(&mut out, &[]).unwrap();
        out
    }

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(src, dst, 64).udp(sport, dport).write(&mut out, b"query").unwrap();
        out
    }

    /// What the appliance sends back for `wrap`: the header it got, then `inner`.
    fn reply(wrap: &Wrap, inner: &[u8]) -> Vec<u8> {
        [&wrap.header[..], inner].concat()
    }

    #[test]
    fn both_directions_of_a_flow_share_one_port_and_cookie() {
        let mut flows = SimFlows::new(settings());
        let syn = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 0).unwrap();
        let syn_ack = flows.outbound(&tcp(B, A, 3306, 40000, Flags::SynAck), 1).unwrap();
        let other = flows.outbound(&tcp(A, B, 40001, 3306, Flags::Syn), 2).unwrap();
        assert_eq!(syn.start, FlowStart::New);
        assert_eq!(syn_ack.start, FlowStart::Existing);
        assert_eq!((syn_ack.port, syn_ack.header), (syn.port, syn.header));
        assert_eq!(other.start, FlowStart::New);
        assert_ne!(other.cookie(), syn.cookie());
        assert!((20000..=20999).contains(&syn.port));
        assert_eq!(flows.len(), 2);
    }

    #[test]
    fn the_header_sent_is_gwlbs_with_the_configured_ids() {
        let mut flows = SimFlows::new(settings());
        let wrap = flows.outbound(&udp(A, B, 5000, 53), 0).unwrap();
        let datagram = reply(&wrap, &udp(A, B, 5000, 53));
        let decoded = decode(&datagram).unwrap();
        assert_eq!(decoded.geneve_header_len, GWLB_HEADER_LEN);
        assert_eq!(decoded.gwlb.endpoint_id, Some(0x0a1b_2c3d_4e5f_6071));
        assert_eq!(decoded.gwlb.attachment_id, Some(0x1020_3040_5060_7080));
        assert_eq!(decoded.gwlb.flow_cookie, wrap.cookie());
    }

    #[test]
    fn a_finished_5_tuple_reused_with_a_syn_gets_a_new_cookie() {
        let mut flows = SimFlows::new(settings());
        let first = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 0).unwrap();
        flows.outbound(&tcp(A, B, 40000, 3306, Flags::Fin), 1).unwrap();
        // One FIN is not the end: a SYN now is a retransmission's business, same flow.
        let half = flows.outbound(&tcp(B, A, 3306, 40000, Flags::Ack), 2).unwrap();
        assert_eq!(half.cookie(), first.cookie());
        flows.outbound(&tcp(B, A, 3306, 40000, Flags::Fin), 3).unwrap();
        // The last ACK after both FINs still belongs to the old flow.
        let last_ack = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Ack), 4).unwrap();
        assert_eq!((last_ack.start, last_ack.cookie()), (FlowStart::Existing, first.cookie()));
        let again = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 5).unwrap();
        assert_eq!(again.start, FlowStart::Renewed);
        assert_ne!(again.cookie(), first.cookie());
        assert_eq!(flows.renewed(), 1);
        assert_eq!(flows.created(), 2);
    }

    #[test]
    fn a_reset_5_tuple_reused_gets_a_new_cookie_but_retransmissions_do_not() {
        let mut flows = SimFlows::new(settings());
        let first = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 0).unwrap();
        let again = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 1).unwrap();
        assert_eq!(again.cookie(), first.cookie(), "a SYN retransmission is the same flow");
        flows.outbound(&tcp(B, A, 3306, 40000, Flags::Rst), 2).unwrap();
        let reused = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Syn), 3).unwrap();
        assert_eq!(reused.start, FlowStart::Renewed);
        assert_ne!(reused.cookie(), first.cookie());
    }

    #[test]
    fn an_idle_flow_gets_a_new_cookie_after_gwlbs_timeout() {
        let mut flows = SimFlows::new(settings());
        let first = flows.outbound(&udp(A, B, 5000, 53), 0).unwrap();
        let before = flows.outbound(&udp(B, A, 53, 5000), 119_999).unwrap();
        assert_eq!(before.cookie(), first.cookie());
        let after = flows.outbound(&udp(A, B, 5000, 53), 119_999 + 120_000).unwrap();
        assert_eq!(after.start, FlowStart::Renewed);
        assert_ne!(after.cookie(), first.cookie());
        // TCP waits longer.
        let tcp_first = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Ack), 0).unwrap();
        let tcp_later = flows.outbound(&tcp(A, B, 40000, 3306, Flags::Ack), 300_000).unwrap();
        assert_eq!(tcp_later.cookie(), tcp_first.cookie());
        assert_eq!(flows.expire(300_000 + 350_000), 2);
        assert!(flows.is_empty());
    }

    #[test]
    fn the_table_refuses_new_flows_when_full_but_not_known_ones() {
        let mut flows = SimFlows::new(SimSettings { max_flows: 2, ..settings() });
        flows.outbound(&udp(A, B, 1, 53), 0).unwrap();
        flows.outbound(&udp(A, B, 2, 53), 0).unwrap();
        assert_eq!(flows.outbound(&udp(A, B, 3, 53), 1), Err(SendRefusal::TableFull));
        assert!(flows.outbound(&udp(B, A, 53, 1), 1).is_ok());
        // Once the others have idled out, there is room again.
        assert!(flows.outbound(&udp(A, B, 3, 53), 200_000).is_ok());
    }

    #[test]
    fn unparsable_packets_from_the_tun_device_are_refused() {
        let mut flows = SimFlows::new(settings());
        let mut truncated = udp(A, B, 5000, 53);
        truncated.truncate(24);
        assert!(matches!(flows.outbound(&truncated, 0), Err(SendRefusal::Unparsable(_))));
        assert!(matches!(flows.outbound(&[], 0), Err(SendRefusal::Unparsable(_))));
        assert!(flows.is_empty());
    }

    #[test]
    fn a_reply_with_exactly_the_header_sent_is_delivered() {
        let mut flows = SimFlows::new(settings());
        let inner = tcp(A, B, 40000, 3306, Flags::Syn);
        let wrap = flows.outbound(&inner, 0).unwrap();
        let check = flows.inbound(&reply(&wrap, &inner), wrap.port, 1);
        assert_eq!(check, ReplyCheck::Deliver { inner_offset: GWLB_HEADER_LEN, reject: false });
    }

    #[test]
    fn a_reply_from_another_port_is_a_mismatch() {
        let mut flows = SimFlows::new(settings());
        let inner = udp(A, B, 5000, 53);
        let wrap = flows.outbound(&inner, 0).unwrap();
        let check = flows.inbound(&reply(&wrap, &inner), wrap.port.wrapping_add(1), 1);
        assert_eq!(check, ReplyCheck::WrongPort);
    }

    #[test]
    fn a_reply_with_the_cookie_of_a_finished_flow_is_stale() {
        let mut flows = SimFlows::new(settings());
        let syn = tcp(A, B, 40000, 3306, Flags::Syn);
        let old = flows.outbound(&syn, 0).unwrap();
        flows.outbound(&tcp(A, B, 40000, 3306, Flags::Rst), 1).unwrap();
        let new = flows.outbound(&syn, 2).unwrap();
        // The new flow may have another source port; answer from it with the old header.
        let check = flows.inbound(&reply(&old, &syn), new.port, 3);
        assert_eq!(check, ReplyCheck::StaleCookie);
        let check = flows.inbound(&reply(&new, &syn), new.port, 3);
        assert!(matches!(check, ReplyCheck::Deliver { .. }));
    }

    #[test]
    fn a_reply_with_changed_options_is_a_mismatch() {
        let mut flows = SimFlows::new(settings());
        let inner = udp(A, B, 5000, 53);
        let wrap = flows.outbound(&inner, 0).unwrap();
        let mut datagram = reply(&wrap, &inner);
        datagram[19] ^= 1; // last byte of the endpoint id
        assert_eq!(flows.inbound(&datagram, wrap.port, 1), ReplyCheck::WrongHeader);
        // Options reordered (cookie first) parse fine but are not what was sent.
        let sent = reply(&wrap, &inner);
        let mut reordered = sent.clone();
        reordered[8..40].copy_from_slice(&[&sent[32..40], &sent[8..32]].concat());
        assert!(decode(&reordered).is_ok());
        assert_eq!(flows.inbound(&reordered, wrap.port, 1), ReplyCheck::WrongHeader);
    }

    #[test]
    fn replies_of_unknown_flows_and_malformed_replies_are_dropped() {
        let mut flows = SimFlows::new(settings());
        let inner = udp(A, B, 5000, 53);
        let wrap = flows.outbound(&inner, 0).unwrap();
        let stranger = udp(A, B, 5001, 53);
        assert_eq!(flows.inbound(&reply(&wrap, &stranger), wrap.port, 1), ReplyCheck::UnknownFlow);
        let mut cut = reply(&wrap, &inner);
        cut.truncate(GWLB_HEADER_LEN + 10);
        assert!(matches!(flows.inbound(&cut, wrap.port, 1), ReplyCheck::Malformed(_)));
        assert!(matches!(flows.inbound(&[0xff; 3], wrap.port, 1), ReplyCheck::Malformed(_)));
    }

    #[test]
    fn a_rst_the_appliance_made_counts_as_a_reject_and_finishes_the_flow() {
        let mut flows = SimFlows::new(settings());
        let syn = tcp(B, A, 55000, 3306, Flags::Syn);
        let wrap = flows.outbound(&syn, 0).unwrap();
        let rst = tcp(A, B, 3306, 55000, Flags::Rst);
        let check = flows.inbound(&reply(&wrap, &rst), wrap.port, 1);
        assert_eq!(check, ReplyCheck::Deliver { inner_offset: GWLB_HEADER_LEN, reject: true });
        let retry = flows.outbound(&syn, 2).unwrap();
        assert_eq!(retry.start, FlowStart::Renewed);
        // A RST that an endpoint sent through the simulator is no reject when it comes back.
        let wrap = flows.outbound(&rst, 3).unwrap();
        let check = flows.inbound(&reply(&wrap, &rst), wrap.port, 4);
        assert_eq!(check, ReplyCheck::Deliver { inner_offset: GWLB_HEADER_LEN, reject: false });
    }

    #[test]
    fn an_icmp_unreachable_is_matched_to_the_flow_it_quotes() {
        let mut flows = SimFlows::new(settings());
        let query = udp(A, B, 5000, 53);
        let wrap = flows.outbound(&query, 0).unwrap();
        let mut unreachable = Vec::new();
        PacketBuilder::ipv4(B, A, 64)
            .icmpv4_raw(3, 13, [0; 4])
            .write(&mut unreachable, &query[..28])
            .unwrap();
        let check = flows.inbound(&reply(&wrap, &unreachable), wrap.port, 1);
        assert_eq!(check, ReplyCheck::Deliver { inner_offset: GWLB_HEADER_LEN, reject: true });
        // Plain pings are flows of their own, keyed by the echo identifier.
        let mut ping = Vec::new();
        PacketBuilder::ipv4(A, B, 64).icmpv4_echo_request(77, 1).write(&mut ping, b"hi").unwrap();
        let echo = flows.outbound(&ping, 2).unwrap();
        assert_eq!(echo.start, FlowStart::New);
        let mut pong = Vec::new();
        PacketBuilder::ipv4(B, A, 64).icmpv4_echo_reply(77, 1).write(&mut pong, b"hi").unwrap();
        assert_eq!(flows.outbound(&pong, 3).unwrap().header, echo.header);
    }

    #[test]
    fn ipv6_flows_get_the_ipv6_protocol_type() {
        let mut flows = SimFlows::new(settings());
        let mut inner = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5000, 53)
            .write(&mut inner, b"query")
            .unwrap();
        let wrap = flows.outbound(&inner, 0).unwrap();
        assert_eq!(u16::from_be_bytes([wrap.header[2], wrap.header[3]]), PROTOCOL_IPV6);
        let check = flows.inbound(&reply(&wrap, &inner), wrap.port, 1);
        assert!(matches!(check, ReplyCheck::Deliver { .. }));
    }

    #[test]
    fn cookies_do_not_repeat_across_many_flows() {
        let mut flows = SimFlows::new(SimSettings { max_flows: 5000, ..settings() });
        let mut cookies = std::collections::HashSet::new();
        for port in 1..=5000u16 {
            let wrap = flows.outbound(&udp(A, B, port, 53), 0).unwrap();
            assert!(cookies.insert(wrap.cookie()), "cookie repeated at flow {port}");
        }
    }

    #[test]
    fn the_counters_line_sums_every_kind_of_mismatch() {
        let stats = SimStats::default();
        for check in [
            ReplyCheck::Malformed(DropReason::GeneveTruncated),
            ReplyCheck::UnknownFlow,
            ReplyCheck::WrongPort,
            ReplyCheck::StaleCookie,
            ReplyCheck::WrongHeader,
            ReplyCheck::Deliver { inner_offset: GWLB_HEADER_LEN, reject: false },
        ] {
            stats.count_reply(check);
        }
        SimStats::add(&stats.foreign, 2);
        assert_eq!(stats.mismatches(), 7);
        let line = stats.line(&SimFlows::new(settings()));
        assert!(line.contains(" mismatches=7 (malformed=1 unknown_flow=1 wrong_port=1 "), "{line}");
        assert!(line.contains("stale_cookie=1 wrong_header=1 foreign=2)"), "{line}");
    }

    #[test]
    fn port_ranges_and_ids_parse_and_bad_ones_are_refused() {
        assert_eq!("20000-29999".parse(), Ok(PortRange { first: 20000, last: 29999 }));
        assert_eq!("7000".parse(), Ok(PortRange { first: 7000, last: 7000 }));
        assert!("9-1".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("1-70000".parse::<PortRange>().is_err());
        assert!(parse_interface_name("lw-gwlb0").is_ok());
        assert!(parse_interface_name("sixteen-chars-xx").is_err());
        assert!(parse_interface_name("a/b").is_err());
        assert!(parse_interface_name("").is_err());
        assert_eq!(parse_id("0x10"), Ok(16));
        assert_eq!(parse_id("16"), Ok(16));
        assert!(parse_id("vpce-1").is_err());
    }
}
