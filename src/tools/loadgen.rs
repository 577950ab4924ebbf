//! `labelwall loadgen`: a GWLB traffic generator for benchmarks. It owns everything from the
//! command-line flags to the printed report: one packet template per flow, a paced send loop
//! on one thread (batched `sendmmsg` through the data plane's raw socket, so that every flow
//! has its own outer UDP source port as GWLB gives it) and a batched receive loop on another
//! (quinn-udp, GRO) that checks each reply and records its latency in an HDR histogram.
//! Must not depend on: the pipeline's judging, the control plane, anything private of the
//! product; nothing of the product depends on it.
//!
//! Invariants: a flow is fixed up front (outer source port, flow cookie, inner 5-tuple) and
//! every packet of it differs from its template only in the 16-byte stamp that opens the
//! transport payload (send time in ns since the run started, then the sequence number) and in
//! the transport checksum, which is patched incrementally, so every packet on the wire is valid.
//! Neither loop allocates or logs, and each makes one system call per batch (plus a sleep when
//! pacing, or a poll when idle). Both loops end by themselves: sending stops at `--duration`
//! (at most one hour) or `--count`, receiving a short grace period later.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use ipnet::IpNet;
use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSockRef, UdpSocketState};
use serde::Serialize;

use crate::net::nexthop::{self, SingleSender};
use crate::net::sys::{
    GsoSocket, MAX_GSO_BYTES, MAX_GSO_SEGMENTS, RawSender, SEND_BATCH, TxItem, bind_udp_receiver,
    skip_unused_control_messages, wait_readable,
};
use crate::wire::geneve::{PROTOCOL_IPV4, PROTOCOL_IPV6};
use crate::wire::outer::{OUTER_HEADER_LEN, OuterAddressing};
use crate::wire::{GWLB_HEADER_LEN, GwlbOptions, emit_gwlb_header};

/// Smallest inner IP packet (`--size`).
pub const MIN_SIZE: u16 = 128;
/// Largest inner IP packet (`--size`): the largest GWLB carries as a matter of course.
pub const MAX_SIZE: u16 = 8500;
/// Most flows one run can have: each needs its own outer source port above [`OUTER_PORT_BASE`].
pub const MAX_FLOWS: u32 = 32768;
/// Flow `i` sends from outer UDP source port `OUTER_PORT_BASE + i`.
pub const OUTER_PORT_BASE: u16 = 20000;
/// Flow `i` has inner source port `INNER_PORT_BASE + i`.
pub const INNER_PORT_BASE: u16 = 1024;
/// Longest run (`--duration`), in seconds.
pub const MAX_DURATION_SECS: f64 = 3600.0;
/// Longest same-flow train (`--train`): a GRO train holds at most 64 datagrams.
pub const MAX_TRAIN: u32 = 64;
/// How long replies may still arrive after the last packet was sent.
const GRACE: Duration = Duration::from_millis(200);
/// The stamp at the start of the transport payload: send time (ns, u64) and sequence (u64).
const STAMP_LEN: usize = 16;
const FLOW_COOKIE_BASE: u32 = 0x4c57_0000;
const ENDPOINT_ID: u64 = 0x0a1b_2c3d_4e5f_0001;
const ATTACHMENT_ID: u64 = 0x1020_3040_5060_0002;
const SEND_BUFFER: usize = 4 << 20;
const RECEIVE_BUFFER: usize = 32 << 20;
/// One receive slot holds a whole GRO train (the kernel caps those at 64 KiB).
const RECEIVE_SLOT: usize = 64 * 1024;
/// Distance between receive slots: not a multiple of 4 KiB, so that the slots' first bytes do
/// not all fall into the same cache sets (see the data plane's worker).
const RECEIVE_STRIDE: usize = RECEIVE_SLOT + 17 * 64;
/// How long an idle receiver waits before it looks at the stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Latencies above this are recorded as this (60 s, in ns).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Flags of `labelwall loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// The appliance's GENEVE address (IPv4, as GWLB sends to).
    #[arg(long, value_name = "IP:PORT")]
    pub target: SocketAddrV4,
    /// Where replies arrive: the appliance's `reply_port` on this host's address. Its IP is also
    /// the outer source address of what loadgen sends, so it must be a specific IPv4 address.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddrV4,
    /// Number of flows, each with its own outer source port, flow cookie and inner 5-tuple.
    #[arg(
        long,
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_FLOWS))
    )]
    pub flows: u32,
    /// Inner IP packet size in bytes (GENEVE adds 40, the outer IPv4 + UDP header 28).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 128,
        value_parser = clap::value_parser!(u16).range(i64::from(MIN_SIZE)..=i64::from(MAX_SIZE))
    )]
    pub size: u16,
    /// How long to send, in seconds (fractions allowed, at most 3600).
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_duration)]
    pub duration: f64,
    /// Stop after sending this many packets (or at --duration, whichever comes first).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Packets per second; 0 or absent sends as fast as possible.
    #[arg(long, value_name = "PPS")]
    pub rate: Option<u64>,
    /// Inner source addresses, drawn from this prefix by flow index.
    #[arg(long, value_name = "CIDR", default_value = "10.0.1.0/24", value_parser = parse_prefix)]
    pub src: IpNet,
    /// Inner destination addresses (same family as --src).
    #[arg(long, value_name = "CIDR", default_value = "10.20.0.0/24", value_parser = parse_prefix)]
    pub dst: IpNet,
    /// Inner transport protocol (TCP packets are mid-flow data: ACK set).
    #[arg(long, value_enum, default_value_t = Proto::Udp)]
    pub proto: Proto,
    /// Inner destination port.
    #[arg(long, default_value_t = 3306)]
    pub dport: u16,
    /// Send this many consecutive packets of one flow before the next flow, as GRO would
    /// hand them to the appliance: above 1, each flow sends from its own UDP socket and a
    /// train goes out as segmented sends (UDP_SEGMENT, at most 64 KiB each), which loopback
    /// delivers to the appliance as one GRO train.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_TRAIN))
    )]
    pub train: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl LoadgenArgs {
    /// Parses loadgen's flags as the command line does, defaults included (for tests, benches).
    pub fn parse_flags(flags: &[&str]) -> Result<LoadgenArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            args: LoadgenArgs,
        }
        let argv = std::iter::once("loadgen").chain(flags.iter().copied());
        <Flags as clap::Parser>::try_parse_from(argv).map(|flags| flags.args)
    }
}

fn parse_duration(text: &str) -> Result<f64, String> {
    check_duration(text.parse().map_err(|_| format!("`{text}` is not a number of seconds"))?)
}

fn check_duration(secs: f64) -> Result<f64, String> {
    if secs > 0.0 && secs <= MAX_DURATION_SECS {
        Ok(secs)
    } else {
        Err(format!("the duration must be more than 0 and at most {MAX_DURATION_SECS} seconds"))
    }
}

/// Inner transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

/// `--src` / `--dst`: a network (`10.0.1.0/24`) or a single address (`10.9.9.9`); host bits
/// are allowed and ignored.
fn parse_prefix(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is not an IPv4 or IPv6 network (a.b.c.d/len) or address"))
}

/// The address of flow `n` in `net`: host addresses in order (skipping the network and highest
/// address when the prefix has more than two), wrapping around when flows outnumber them.
pub fn flow_address(net: &IpNet, n: u64) -> IpAddr {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let (first, usable) = match host_bits {
        0 => (0, 1),
        1 => (0, 2),
        bits if bits >= 127 => (1, u128::MAX - 1),
        bits => (1, (1u128 << bits) - 2),
    };
    let host = first + u128::from(n) % usable;
    match net.network() {
        IpAddr::V4(network) => IpAddr::V4(Ipv4Addr::from(u32::from(network) | host as u32)),
        IpAddr::V6(network) => IpAddr::V6(Ipv6Addr::from(u128::from(network) | host)),
    }
}

/// What one run achieved. Rates are over the sending period (`duration_s`), not the grace
/// period after it.
#[derive(Debug, Clone, Serialize)]
pub struct LoadgenReport {
    pub flows: u32,
    pub proto: Proto,
    /// `ipv4` or `ipv6` (the inner packets; the outer header is always IPv4).
    pub family: &'static str,
    /// Inner IP packet size in bytes.
    pub size: u16,
    /// How long packets were sent, in seconds.
    pub duration_s: f64,
    pub sent: u64,
    /// Replies that came back intact (same length, GENEVE header, flow and stamp as sent).
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Packets the kernel refused to send (not counted in `sent`).
    pub send_errors: u64,
    /// Datagrams on `--listen` that were not an intact reply to this run.
    pub unexpected: u64,
    /// Sent packets per second.
    pub sent_pps: f64,
    /// Received replies per second.
    pub pps: f64,
    /// Received Gbit/s, counting GENEVE datagrams (40-byte GENEVE header + inner packet),
    /// without the outer IPv4 + UDP header.
    pub gbps: f64,
    /// Reply latency: from just before the `sendmmsg` that carried a packet to just after the
    /// receive call that returned it, so up to one batch of queueing on each side is included.
    pub latency_us: LatencyUs,
}

/// Latency percentiles in microseconds (0 when nothing came back).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencyUs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Runs `labelwall loadgen` and prints its report (text, or one JSON object with `--json`).
pub fn run(args: &LoadgenArgs) -> anyhow::Result<()> {
    let report = generate(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// Sends the traffic `args` asks for, waits for the replies and reports what came back.
pub fn generate(args: &LoadgenArgs) -> anyhow::Result<LoadgenReport> {
    let layout = Layout::new(args)?;
    let flows = build_flows(args, &layout);
    let raw = RawSender::open(SEND_BUFFER).map_err(|error| {
        anyhow!(
            "cannot open the raw IPv4 socket loadgen sends through ({error}): run as root or \
             grant CAP_NET_RAW"
        )
    })?;
    let socket = bind_listen(args.listen)?;
    let state = UdpSocketState::new(UdpSockRef::from(&socket))
        .with_context(|| format!("cannot configure the socket on {}", args.listen))?;
    skip_unused_control_messages(&socket, false)
        .with_context(|| format!("cannot configure the socket on {}", args.listen))?;
    let checker = ReplyChecker {
        layout,
        geneve: flows.iter().map(|f| f.geneve_header()).collect(),
        train: u64::from(args.train),
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Like the appliance, loadgen sends single packets as frames once the next hop is known.
    let (mut sender, resolver) = nexthop::standalone(raw, SEND_BUFFER, &stop);
    let start = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
        std::thread::Builder::new()
            .name("lw-loadgen-rx".into())
            .spawn(move || receive_loop(&socket, &state, &checker, start, &stop, &received))
            .context("cannot start the loadgen receive thread")?
    };
    let gso = if args.train > 1 { Some(open_flow_sockets(args)?) } else { None };
    let sent = send_loop(args, &layout, &flows, &mut sender, gso.as_deref(), start);
    let send_end = start.elapsed();
    if let Ok(totals) = &sent {
        let deadline = Instant::now() + GRACE;
        while received.load(Ordering::Relaxed) < totals.sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stop.store(true, Ordering::Release);
    if let Some(resolver) = resolver {
        let _ = resolver.join();
    }
    let replies = receiver.join().map_err(|_| anyhow!("the loadgen receive thread panicked"))?;
    let sent = sent?;
    let secs = send_end.as_secs_f64().max(1e-9);
    let latency = |q: f64| replies.latency_ns.value_at_quantile(q) as f64 / 1000.0;
    Ok(LoadgenReport {
        flows: args.flows,
        proto: args.proto,
        family: if matches!(args.src, IpNet::V4(_)) { "ipv4" } else { "ipv6" },
        size: args.size,
        duration_s: secs,
        sent: sent.sent,
        received: replies.received,
        lost: sent.sent.saturating_sub(replies.received),
        send_errors: sent.failed,
        unexpected: replies.unexpected,
        sent_pps: sent.sent as f64 / secs,
        pps: replies.received as f64 / secs,
        gbps: (replies.received * layout.datagram_len as u64 * 8) as f64 / secs / 1e9,
        latency_us: LatencyUs {
            p50: latency(0.5),
            p90: latency(0.9),
            p99: latency(0.99),
            max: replies.latency_ns.max() as f64 / 1000.0,
        },
    })
}

/// Where things are in a GENEVE datagram of this run (the same for every flow).
#[derive(Debug, Clone, Copy)]
struct Layout {
    datagram_len: usize,
    /// Offset of the transport checksum field.
    checksum_offset: usize,
    /// Offset of the stamp, the first bytes of the transport payload.
    stamp_offset: usize,
    udp: bool,
}

impl Layout {
    /// Checks the arguments a caller may have set without the command line's validation.
    fn new(args: &LoadgenArgs) -> anyhow::Result<Layout> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&args.size) {
            bail!("--size must be {MIN_SIZE} to {MAX_SIZE} bytes");
        }
        if !(1..=MAX_FLOWS).contains(&args.flows) {
            bail!("--flows must be 1 to {MAX_FLOWS}");
        }
        if !(1..=MAX_TRAIN).contains(&args.train) {
            bail!("--train must be 1 to {MAX_TRAIN}");
        }
        check_duration(args.duration).map_err(|e| anyhow!("--duration: {e}"))?;
        if matches!(args.src, IpNet::V4(_)) != matches!(args.dst, IpNet::V4(_)) {
            bail!("--src {} and --dst {} must both be IPv4 or both IPv6", args.src, args.dst);
        }
        if args.listen.ip().is_unspecified() || args.listen.port() == 0 {
            bail!(
                "--listen needs a specific IPv4 address and port: the address the appliance sends \
                 replies to (its reply_port), also used as the outer source address"
            );
        }
        let ip_len = if matches!(args.src, IpNet::V4(_)) { 20 } else { 40 };
        let (l4_len, checksum_at) = match args.proto {
            Proto::Udp => (8, 6),
            Proto::Tcp => (20, 16),
        };
        Ok(Layout {
            datagram_len: GWLB_HEADER_LEN + usize::from(args.size),
            checksum_offset: GWLB_HEADER_LEN + ip_len + checksum_at,
            stamp_offset: GWLB_HEADER_LEN + ip_len + l4_len,
            udp: args.proto == Proto::Udp,
        })
    }

    /// Template bytes that differ between flows; the rest of a datagram is zero padding.
    fn prefix_len(&self) -> usize {
        self.stamp_offset + STAMP_LEN
    }

    /// Writes the stamp into a datagram that holds `flow`'s prefix, and its checksum.
    fn stamp(&self, datagram: &mut [u8], flow: &Flow, sent_ns: u64, seq: u64) {
        let stamp = &mut datagram[self.stamp_offset..self.stamp_offset + STAMP_LEN];
        stamp[..8].copy_from_slice(&sent_ns.to_be_bytes());
        stamp[8..].copy_from_slice(&seq.to_be_bytes());
        let checksum = stamped_checksum(flow.l4_sum, stamp, self.udp);
        datagram[self.checksum_offset..self.checksum_offset + 2]
            .copy_from_slice(&checksum.to_be_bytes());
    }
}

/// One flow, fixed for the whole run.
#[derive(Debug)]
struct Flow {
    /// The raw send of one of its datagrams (at offset 0): listen IP -> target, from this
    /// flow's own outer source port.
    packet: TxItem,
    /// The first [`Layout::prefix_len`] bytes of the datagram, stamp zeroed.
    prefix: Box<[u8]>,
    /// Ones' complement sum that the template's transport checksum is the complement of;
    /// adding the stamp's words to it gives each packet's checksum.
    l4_sum: u16,
}

impl Flow {
    fn geneve_header(&self) -> [u8; GWLB_HEADER_LEN] {
        self.prefix[..GWLB_HEADER_LEN].try_into().unwrap_or([0; GWLB_HEADER_LEN])
    }
}

/// Builds every flow's template once: GWLB GENEVE header with the flow's cookie, the inner
/// packet (valid lengths and checksums, computed with a zero stamp and zero padding by
/// etherparse) and the outer header.
fn build_flows(args: &LoadgenArgs, layout: &Layout) -> Vec<Flow> {
    let padding = vec![0u8; layout.datagram_len - layout.stamp_offset];
    let mut inner = Vec::with_capacity(usize::from(args.size));
    (0..args.flows)
        .map(|i| {
            let (src, dst) =
                (flow_address(&args.src, u64::from(i)), flow_address(&args.dst, u64::from(i)));
            let ip = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    etherparse::PacketBuilder::ipv4(s.octets(), d.octets(), 64)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    etherparse::PacketBuilder::ipv6(s.octets(), d.octets(), 64)
                }
                _ => unreachable!("Layout::new checks that --src and --dst are of one family"),
            };
            let sport = INNER_PORT_BASE + i as u16;
            inner.clear();
            let written = match args.proto {
                Proto::Udp => ip.udp(sport, args.dport).write(&mut inner, &padding),
                // Mid-flow data (ACK set). Sequence numbers stay those of the template.
                Proto::Tcp => {
                    ip.tcp(sport, args.dport, 1, 65535).ack(1).write(&mut inner, &padding)
                }
            };
            written.expect("the sizes are validated and the addresses of one family");
            let protocol = if src.is_ipv4() { PROTOCOL_IPV4 } else { PROTOCOL_IPV6 };
            let gwlb = GwlbOptions {
                endpoint_id: Some(ENDPOINT_ID),
                attachment_id: Some(ATTACHMENT_ID),
                flow_cookie: flow_cookie(i),
            };
            let mut prefix = vec![0u8; layout.prefix_len()];
            let (geneve, rest) = prefix.split_at_mut(GWLB_HEADER_LEN);
            emit_gwlb_header(geneve.try_into().expect("GWLB_HEADER_LEN bytes"), protocol, &gwlb);
            rest.copy_from_slice(&inner[..rest.len()]);
            let checksum = &prefix[layout.checksum_offset..layout.checksum_offset + 2];
            let l4_sum = !u16::from_be_bytes([checksum[0], checksum[1]]);
            let addressing = OuterAddressing {
                src: *args.listen.ip(),
                dst: *args.target.ip(),
                src_port: OUTER_PORT_BASE + i as u16,
                dst_port: args.target.port(),
            };
            let packet = TxItem::new(&addressing, 0, layout.datagram_len).expect("fits in IPv4");
            Flow { packet, prefix: prefix.into(), l4_sum }
        })
        .collect()
}

/// Flow `i`'s cookie: distinct per flow, spread out like GWLB's.
fn flow_cookie(flow: u32) -> u32 {
    FLOW_COOKIE_BASE ^ flow.wrapping_mul(0x9e37_79b9)
}

/// Folds the stamp into a flow's checksum sum (RFC 1624: the template's stamp words are 0).
fn stamped_checksum(l4_sum: u16, stamp: &[u8], udp: bool) -> u16 {
    let mut sum = u32::from(l4_sum);
    for word in stamp.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 if udp => 0xffff, // a UDP checksum of 0 means "none"
        checksum => checksum,
    }
}

#[derive(Debug, Default)]
struct SendTotals {
    sent: u64,
    failed: u64,
}

/// One UDP socket per flow, bound to the flow's outer source port on the `--listen` address,
/// for segmented sends of trains.
fn open_flow_sockets(args: &LoadgenArgs) -> anyhow::Result<Vec<GsoSocket>> {
    if !GsoSocket::supported() {
        bail!("--train needs UDP segmentation offload (UDP_SEGMENT, Linux 4.18 or later)");
    }
    (0..args.flows)
        .map(|i| {
            let local = SocketAddrV4::new(*args.listen.ip(), OUTER_PORT_BASE + i as u16);
            GsoSocket::open(local).map_err(|error| {
                anyhow!(
                    "cannot bind {local} to send flow {i}'s trains from ({error}); with --train \
                     each flow needs its own port: use fewer --flows or free the port"
                )
            })
        })
        .collect()
}

/// Sends until `--duration` or `--count`, one `sendmmsg` per batch. Packet `n` belongs to flow
/// `(n / train) % flows`. Each batch slot keeps the prefix of the flow it last carried, so a
/// slot is rewritten only when its flow changes; per packet only the stamp and the checksum
/// are written.
fn send_loop(
    args: &LoadgenArgs,
    layout: &Layout,
    flows: &[Flow],
    sender: &mut SingleSender,
    gso: Option<&[GsoSocket]>,
    start: Instant,
) -> anyhow::Result<SendTotals> {
    let duration = Duration::from_secs_f64(args.duration);
    let limit = args.count.unwrap_or(u64::MAX);
    let rate = args.rate.filter(|r| *r > 0);
    let train = u64::from(args.train);
    let slot_len = layout.datagram_len;
    let mut payloads = vec![0u8; SEND_BATCH * slot_len];
    let mut slot_flow = [usize::MAX; SEND_BATCH];
    let mut tx: Vec<TxItem> = Vec::with_capacity(SEND_BATCH);
    let mut totals = SendTotals::default();
    let mut next: u64 = 0;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration || next >= limit {
            return Ok(totals);
        }
        let mut due = (SEND_BATCH as u64).min(limit - next);
        if let Some(rate) = rate {
            // Packet n is due at n / rate; sleep until the next one is rather than spin.
            let ready = (elapsed.as_nanos() * u128::from(rate) / 1_000_000_000) as u64 + 1;
            due = due.min(ready.saturating_sub(next));
            if due == 0 {
                let next_due = u128::from(next) * 1_000_000_000 / u128::from(rate);
                let next_due = Duration::from_nanos(next_due.min(u128::from(u64::MAX)) as u64);
                std::thread::sleep(next_due.min(duration).saturating_sub(elapsed));
                continue;
            }
        }
        let now_ns = start.elapsed().as_nanos() as u64;
        tx.clear();
        for k in 0..due as usize {
            let n = next + k as u64;
            let index = ((n / train) % flows.len() as u64) as usize;
            let flow = &flows[index];
            let slot = &mut payloads[k * slot_len..(k + 1) * slot_len];
            if slot_flow[k] != index {
                slot[..flow.prefix.len()].copy_from_slice(&flow.prefix);
                slot_flow[k] = index;
            }
            layout.stamp(slot, flow, now_ns, n);
            if gso.is_some() {
                continue;
            }
            tx.push(TxItem { offset: k * slot_len, ..flow.packet });
        }
        let report = match gso {
            Some(sockets) => send_trains(sockets, args, next, due, slot_len, &payloads),
            None => sender.send(&tx, &payloads).total(),
        };
        if report.sent == 0 && totals.sent == 0 {
            let error = io::Error::from_raw_os_error(report.last_error.unwrap_or(0));
            bail!("cannot send to {}: {error}", args.target);
        }
        totals.sent += report.sent;
        totals.failed += report.failed;
        next += due;
    }
}

/// Sends packets `next..next + due` (stamped in `payloads`, one `slot_len` slot each) as
/// segmented sends: consecutive packets of one flow go out together from the flow's socket.
fn send_trains(
    sockets: &[GsoSocket],
    args: &LoadgenArgs,
    next: u64,
    due: u64,
    slot_len: usize,
    payloads: &[u8],
) -> crate::net::sys::SendReport {
    let train = u64::from(args.train);
    let per_send = MAX_GSO_SEGMENTS.min(MAX_GSO_BYTES / slot_len).max(1);
    let flow_of = |k: usize| ((next + k as u64) / train % sockets.len() as u64) as usize;
    let target = args.target;
    let mut report = crate::net::sys::SendReport::default();
    let mut k = 0;
    while k < due as usize {
        let flow = flow_of(k);
        let mut end = k + 1;
        while end < due as usize && end - k < per_send && flow_of(end) == flow {
            end += 1;
        }
        let count = (end - k) as u64;
        match sockets[flow].send(target, &payloads[k * slot_len..end * slot_len], slot_len as u16) {
            Ok(()) => {
                report.sent += count;
                report.sent_bytes += count * (slot_len + OUTER_HEADER_LEN) as u64;
                report.calls += 1;
            }
            Err(error) => {
                report.failed += count;
                report.last_error = error.raw_os_error();
            }
        }
        k = end;
    }
    report
}

/// How a reply is recognised as one of ours.
#[derive(Debug)]
struct ReplyChecker {
    layout: Layout,
    /// GENEVE header of each flow, as it must come back.
    geneve: Vec<[u8; GWLB_HEADER_LEN]>,
    train: u64,
}

impl ReplyChecker {
    /// The latency in ns of an intact reply that came from outer source port `port`.
    fn latency_ns(&self, port: u16, datagram: &[u8], now_ns: u64) -> Option<u64> {
        if datagram.len() != self.layout.datagram_len {
            return None;
        }
        let flow = usize::from(port.checked_sub(OUTER_PORT_BASE)?);
        if datagram[..GWLB_HEADER_LEN] != *self.geneve.get(flow)? {
            return None;
        }
        let stamp = &datagram[self.layout.stamp_offset..self.layout.stamp_offset + STAMP_LEN];
        let sent_ns = u64::from_be_bytes(stamp[..8].try_into().ok()?);
        let seq = u64::from_be_bytes(stamp[8..].try_into().ok()?);
        let seq_flow = (seq / self.train) % self.geneve.len() as u64;
        (seq_flow == flow as u64 && sent_ns <= now_ns).then(|| now_ns - sent_ns)
    }
}

#[derive(Debug)]
struct ReplyTotals {
    received: u64,
    unexpected: u64,
    latency_ns: Histogram<u64>,
}

/// Receives replies in batches (GRO trains split by their stride) until `stop` is set.
fn receive_loop(
    socket: &std::net::UdpSocket,
    state: &UdpSocketState,
    checker: &ReplyChecker,
    start: Instant,
    stop: &AtomicBool,
    published: &AtomicU64,
) -> ReplyTotals {
    let mut totals = ReplyTotals {
        received: 0,
        unexpected: 0,
        latency_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid bounds"),
    };
    let mut storage = vec![0u8; RECEIVE_STRIDE * BATCH_SIZE];
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    while !stop.load(Ordering::Acquire) {
        let result = {
            let mut chunks = storage.chunks_exact_mut(RECEIVE_STRIDE);
            let mut slots: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
                IoSliceMut::new(chunks.next().map_or(&mut [][..], |c| &mut c[..RECEIVE_SLOT]))
            });
            state.recv(UdpSockRef::from(socket), &mut slots, &mut metas)
        };
        let count = match result {
            Ok(count) => count,
            Err(_) => {
                // Nothing to read (or a transient error): wait, then look at the stop flag.
                // A failing poll only makes the loop look at it sooner.
                let _ = wait_readable(socket.as_raw_fd(), IDLE_WAIT);
                continue;
            }
        };
        let now_ns = start.elapsed().as_nanos() as u64;
        for (slot, meta) in metas[..count].iter().enumerate() {
            let data = &storage[slot * RECEIVE_STRIDE..slot * RECEIVE_STRIDE + meta.len];
            let stride = if meta.stride == 0 { meta.len.max(1) } else { meta.stride };
            for datagram in data.chunks(stride) {
                match checker.latency_ns(meta.addr.port(), datagram, now_ns) {
                    Some(latency) => {
                        totals.received += 1;
                        totals.latency_ns.saturating_record(latency.max(1));
                    }
                    None => totals.unexpected += 1,
                }
            }
        }
        published.store(totals.received, Ordering::Relaxed);
    }
    totals
}

fn bind_listen(listen: SocketAddrV4) -> anyhow::Result<std::net::UdpSocket> {
    match bind_udp_receiver(listen, RECEIVE_BUFFER) {
        Ok(socket) => Ok(socket),
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => bail!(
            "cannot listen on {listen}: the address is in use; give --listen a free address that \
             the appliance sends replies to (its reply_port)"
        ),
        Err(error) => bail!("cannot listen on {listen}: {error}"),
    }
}

impl fmt::Display for LoadgenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.proto == Proto::Tcp { "tcp" } else { "udp" };
        writeln!(
            f,
            "loadgen: {} flows, {proto} over {}, {}-byte inner packets ({}-byte GENEVE), {:.2} s",
            self.flows,
            self.family,
            self.size,
            usize::from(self.size) + GWLB_HEADER_LEN,
            self.duration_s
        )?;
        writeln!(f, "sent       {:>12}  {:>12.0} pps", self.sent, self.sent_pps)?;
        writeln!(
            f,
            "received   {:>12}  {:>12.0} pps  {:.3} Gbit/s (GENEVE datagrams)",
            self.received, self.pps, self.gbps
        )?;
        let share = self.lost as f64 * 100.0 / self.sent.max(1) as f64;
        writeln!(f, "lost       {:>12}  {share:>11.3} %", self.lost)?;
        if self.send_errors > 0 || self.unexpected > 0 {
            writeln!(
                f,
                "send errors {}, unexpected datagrams {}",
                self.send_errors, self.unexpected
            )?;
        }
        let l = &self.latency_us;
        writeln!(
            f,
            "latency    p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  max {:.1} us",
            l.p50, l.p90, l.p99, l.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Transport, tcp_flags};
    use crate::pipeline::decode;

    fn args(flags: &[&str]) -> LoadgenArgs {
        let base = ["--target", "127.0.0.1:6081", "--listen", "127.0.0.2:7000"];
        LoadgenArgs::parse_flags(&[&base[..], flags].concat()).unwrap()
    }

    /// Datagram `seq` of a run, exactly as the send loop writes it.
    fn datagram(args: &LoadgenArgs, seq: u64, sent_ns: u64) -> (Layout, Vec<u8>) {
        let layout = Layout::new(args).unwrap();
        let flows = build_flows(args, &layout);
        let flow = &flows[((seq / u64::from(args.train)) % flows.len() as u64) as usize];
        let mut bytes = vec![0u8; layout.datagram_len];
        bytes[..flow.prefix.len()].copy_from_slice(&flow.prefix);
        layout.stamp(&mut bytes, flow, sent_ns, seq);
        (layout, bytes)
    }

    /// Checks the transport checksum of a decoded inner packet with etherparse.
    fn assert_checksum_valid(inner: &[u8]) {
        let sliced = etherparse::SlicedPacket::from_ip(inner).unwrap();
        let ip = match sliced.net.unwrap() {
            etherparse::NetSlice::Ipv4(v4) => {
                let header = v4.header().to_header();
                assert_eq!(header.header_checksum, header.calc_header_checksum());
                Ok(header)
            }
            etherparse::NetSlice::Ipv6(v6) => Err(v6.header().to_header()),
            other => panic!("{other:?}"),
        };
        match sliced.transport.unwrap() {
            etherparse::TransportSlice::Udp(udp) => {
                let (header, payload) = (udp.to_header(), udp.payload());
                let expected = match &ip {
                    Ok(v4) => header.calc_checksum_ipv4(v4, payload).unwrap(),
                    Err(v6) => header.calc_checksum_ipv6(v6, payload).unwrap(),
                };
                assert_eq!(header.checksum, expected);
            }
            etherparse::TransportSlice::Tcp(tcp) => {
                let (header, payload) = (tcp.to_header(), tcp.payload());
                let expected = match &ip {
                    Ok(v4) => header.calc_checksum_ipv4(v4, payload).unwrap(),
                    Err(v6) => header.calc_checksum_ipv6(v6, payload).unwrap(),
                };
                assert_eq!(header.checksum, expected);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn generated_packets_are_valid_gwlb_geneve_with_the_intended_5_tuple() {
        let cases: [&[&str]; 4] = [
            &["--proto", "udp"],
            &["--proto", "tcp", "--size", "1500", "--dport", "443"],
            &["--src", "fd00:1::/64", "--dst", "fd00:20::/120", "--size", "8500"],
            &["--src", "fd00:1::/64", "--dst", "fd00:20::/64", "--proto", "tcp", "--train", "4"],
        ];
        for flags in cases {
            let args = args(flags);
            for seq in [0, 1, 5, 63, 64, 1000] {
                let (_, bytes) = datagram(&args, seq, 0x1234_5678_9abc + seq * 977);
                let packet = decode(&bytes).unwrap_or_else(|e| panic!("{flags:?} {seq}: {e:?}"));
                assert_eq!(bytes.len(), usize::from(args.size) + 40, "{flags:?}");
                assert_eq!(packet.inner.len, usize::from(args.size));
                let flow = (seq / u64::from(args.train)) % 64;
                assert_eq!(packet.gwlb.flow_cookie, flow_cookie(flow as u32));
                assert_eq!(packet.gwlb.endpoint_id, Some(ENDPOINT_ID));
                assert_eq!(packet.inner.src, flow_address(&args.src, flow));
                assert_eq!(packet.inner.dst, flow_address(&args.dst, flow));
                let sport = INNER_PORT_BASE + flow as u16;
                assert_eq!(packet.inner.ports(), Some((sport, args.dport)));
                match (args.proto, packet.inner.transport) {
                    (Proto::Tcp, Transport::Tcp { flags, .. }) => {
                        assert_eq!(flags, tcp_flags::ACK)
                    }
                    (Proto::Udp, Transport::Udp { .. }) => {}
                    other => panic!("{other:?}"),
                }
                assert_checksum_valid(&bytes[40..]);
            }
        }
    }

    #[test]
    fn flows_have_distinct_outer_ports_cookies_and_5_tuples() {
        let args = args(&["--flows", "300"]);
        let layout = Layout::new(&args).unwrap();
        let flows = build_flows(&args, &layout);
        let mut ports = std::collections::HashSet::new();
        let mut cookies = std::collections::HashSet::new();
        for flow in &flows {
            assert_eq!(flow.packet.src, Ipv4Addr::new(127, 0, 0, 2));
            assert_eq!(flow.packet.dst, Ipv4Addr::LOCALHOST);
            let udp = etherparse::UdpHeaderSlice::from_slice(&flow.packet.udp).unwrap();
            assert!(ports.insert(udp.source_port()));
            assert_eq!(udp.destination_port(), 6081);
            assert_eq!(usize::from(udp.length()), 8 + flow.packet.len);
            assert!(cookies.insert(flow.prefix[36..40].to_vec()));
        }
        assert_eq!(ports.len(), 300);
        assert_eq!(cookies.len(), 300);
    }

    #[test]
    fn replies_are_checked_against_flow_and_stamp() {
        let args = args(&["--train", "2"]);
        let (layout, bytes) = datagram(&args, 7, 1_000);
        let flows = build_flows(&args, &layout);
        let checker = ReplyChecker {
            layout,
            geneve: flows.iter().map(Flow::geneve_header).collect(),
            train: 2,
        };
        let port = OUTER_PORT_BASE + 3; // packet 7 of trains of 2 is flow 3
        assert_eq!(checker.latency_ns(port, &bytes, 5_000), Some(4_000));
        assert_eq!(checker.latency_ns(port + 1, &bytes, 5_000), None, "other flow's port");
        assert_eq!(checker.latency_ns(port, &bytes, 999), None, "stamped in the future");
        assert_eq!(checker.latency_ns(port, &bytes[..bytes.len() - 1], 5_000), None);
        let mut changed = bytes.clone();
        changed[39] ^= 1; // flow cookie
        assert_eq!(checker.latency_ns(port, &changed, 5_000), None);
        assert_eq!(checker.latency_ns(1, &bytes, 5_000), None);
    }

    #[test]
    fn addresses_are_drawn_from_the_prefix_by_flow_index() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = parse_prefix("10.0.1.0/24").unwrap();
        assert_eq!(flow_address(&net, 0), ip("10.0.1.1"));
        assert_eq!(flow_address(&net, 253), ip("10.0.1.254"));
        assert_eq!(flow_address(&net, 254), ip("10.0.1.1"));
        let host = parse_prefix("10.9.9.9").unwrap();
        assert_eq!((host.prefix_len(), flow_address(&host, 5)), (32, ip("10.9.9.9")));
        let v6 = parse_prefix("fd00:20::77/64").unwrap();
        assert_eq!(flow_address(&v6, 5), ip("fd00:20::6"));
        let all = parse_prefix("::/0").unwrap();
        assert_eq!(flow_address(&all, 0), ip("::1"));
        for bad in ["10.0.0.0/33", "fd00::/129", "nonsense/8", "10.0.0.0/x"] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_settings_are_refused_with_the_flag_named() {
        for (flags, wrong) in [
            (&["--size", "127"][..], "--size"),
            (&["--size", "8501"], "--size"),
            (&["--flows", "0"], "--flows"),
            (&["--duration", "0"], "--duration"),
            (&["--duration", "3601"], "--duration"),
            (&["--train", "65"], "--train"),
            (&["--count", "0"], "--count"),
        ] {
            let base = ["--target", "127.0.0.1:6081", "--listen", "127.0.0.2:7000"];
            let error = LoadgenArgs::parse_flags(&[&base[..], flags].concat()).unwrap_err();
            assert!(error.to_string().contains(wrong), "{flags:?}: {error}");
        }
        let mut mixed = args(&["--dst", "fd00::/64"]);
        let error = generate(&mixed).unwrap_err().to_string();
        assert!(error.contains("both be IPv4 or both IPv6"), "{error}");
        mixed.dst = parse_prefix("10.20.0.0/24").unwrap();
        mixed.size = 100;
        assert!(generate(&mixed).unwrap_err().to_string().contains("--size"));
        let mut unspecified = args(&[]);
        unspecified.listen = "0.0.0.0:7000".parse().unwrap();
        assert!(generate(&unspecified).unwrap_err().to_string().contains("--listen"));
    }

    #[test]
    fn report_prints_as_text_and_json() {
        let report = LoadgenReport {
            flows: 64,
            proto: Proto::Tcp,
            family: "ipv6",
            size: 1500,
            duration_s: 2.0,
            sent: 1000,
            received: 990,
            lost: 10,
            send_errors: 0,
            unexpected: 0,
            sent_pps: 500.0,
            pps: 495.0,
            gbps: 0.006,
            latency_us: LatencyUs { p50: 10.0, p90: 20.0, p99: 30.5, max: 99.0 },
        };
        let text = report.to_string();
        assert!(text.contains("tcp over ipv6") && text.contains("p99 30.5 us"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["proto"], "tcp");
        assert_eq!(json["received"], 990);
        assert_eq!(json["latency_us"]["p99"], 30.5);
    }
}
