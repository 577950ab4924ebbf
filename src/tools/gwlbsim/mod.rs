//! `labelwall gwlb-sim`: a GWLB simulator on one host, so that real kernel TCP (iperf3) crosses
//! the appliance. It owns a TUN device (`IFF_TUN | IFF_NO_PI`, its MTU and up state) and
//! everything between it and the appliance: inner IP packets the kernel routes into the device
//! are wrapped in GWLB GENEVE and sent to the appliance over UDP; what comes back is checked
//! against what was sent, and the inner packet of a good reply is written back to the device,
//! from where the kernel routes it on. It configures nothing else: addresses, routes and
//! policy routing are the operator's (or the test's) job, with `ip`. Like the other tools it
//! must not depend on the product's internals: the pipeline's decoder, wire, packet,
//! conntrack's `FlowKey` and `crate::net`, through their public API, are all it uses.
//!
//! This file has the command line and [`run`], which opens the device and the sockets and
//! starts the two loops of `loops.rs`; `flows.rs` keeps the flows and judges what comes back,
//! `header.rs` writes and compares their GENEVE headers, `stats.rs` counts.
//!
//! Invariants, GWLB's (see GWLB.md): a flow is a direction-independent inner 5-tuple (fragments:
//! the address pair and protocol; ICMP errors: the flow of the packet they quote); it has one
//! outer UDP source port and one flow cookie for its life; a finished 5-tuple (FIN both ways,
//! or a RST) that starts again with a SYN, or a flow idle past GWLB's timeout, is a new flow
//! with a new cookie. A returned packet is delivered only when it comes from the appliance and
//! the flow's source port and carries, byte for byte, the GENEVE header last sent for its flow
//! (the same options and the current cookie); anything else is counted and dropped, never
//! delivered. No per-packet logging: counters, printed to stderr periodically and on
//! SIGTERM/SIGINT.
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

mod flows;
mod header;
mod loops;
mod stats;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quinn_udp::{UdpSockRef, UdpSocketState};

use crate::net::nexthop;
use crate::net::sys::{self, RawSender, bind_udp_receiver};
use crate::net::tun;
use crate::pipeline::MAX_GENEVE_DATAGRAM;
use crate::wire::GWLB_HEADER_LEN;
use flows::{SimFlows, SimSettings};
use loops::{ForwardLoop, ReturnEnds, return_loop};
use stats::SimStats;

/// Largest `--mtu`: the inner packet plus GENEVE must fit in the largest datagram GWLB sends.
pub const MAX_MTU: u32 = (MAX_GENEVE_DATAGRAM - GWLB_HEADER_LEN) as u32;
/// Smallest `--mtu` (IPv6's minimum).
pub const MIN_MTU: u32 = 1280;
const SEND_BUFFER: usize = 4 << 20;
const RECEIVE_BUFFER: usize = 16 << 20;

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

#[cfg(test)]
mod tests {
    use super::*;

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
