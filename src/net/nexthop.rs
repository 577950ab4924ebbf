//! Replies through the link layer: which Ethernet header a reply to a GWLB node takes, learned
//! from the kernel, and the sender that uses it.
//! Must not depend on: the pipeline, policy, labels, tokio.
//!
//! A reply sent through the raw socket costs the kernel a route lookup, a socket lock and a
//! checksumming copy per packet (about 1 µs of 3.3 on a veth link, see docs/performance.md).
//! The appliance answers only a handful of GWLB node addresses, so it can ask the kernel once
//! where each of them is (route, interface, neighbour's hardware address) and then send whole
//! Ethernet frames through a packet socket. The kernel stays the authority: [`Resolver`] asks
//! again every [`REFRESH`], and whatever it cannot answer (no route, a loopback or non-Ethernet
//! interface, a neighbour not resolved yet) goes through the raw socket, which also makes the
//! kernel resolve the neighbour.
//!
//! Workers never wait for the resolver and take no lock: they read the published
//! [`NextHopTable`] and, for an address pair it does not have, leave a request in an atomic
//! slot.

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::net::netlink::{Netlink, NetlinkError};
use crate::net::sys::{
    ETHERNET_HEADER_LEN, FRAME_HEADER_LEN, Frame, PacketSocket, Payloads, RawSender, SEND_BATCH,
    SendReport, TxItem,
};
use crate::wire::outer::{self, IPV4_HEADER_LEN, OUTER_HEADER_LEN};

/// How often every known next hop is asked about again.
const REFRESH: Duration = Duration::from_secs(1);
/// How soon a request from a worker is answered.
const POLL: Duration = Duration::from_millis(20);
/// Address pairs kept; past that the oldest is forgotten (and asked for again if still used).
const MAX_ENTRIES: usize = 64;
/// Requests that can wait for the resolver at once.
const WANTED_SLOTS: usize = 16;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// Where a reply from one appliance address to one GWLB node goes on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkHop {
    pub interface: u32,
    /// Destination and source hardware addresses, EtherType IPv4.
    pub ethernet: [u8; ETHERNET_HEADER_LEN],
    /// Largest IPv4 packet the interface takes.
    pub mtu: u32,
}

impl LinkHop {
    fn new(interface: u32, neighbour: [u8; 6], own: [u8; 6], mtu: u32) -> LinkHop {
        let mut ethernet = [0u8; ETHERNET_HEADER_LEN];
        ethernet[..6].copy_from_slice(&neighbour);
        ethernet[6..12].copy_from_slice(&own);
        ethernet[12..].copy_from_slice(&ETHERTYPE_IPV4);
        LinkHop { interface, ethernet, mtu }
    }
}

/// One address pair: its hop, or `None` while replies go through the raw socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHopEntry {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub hop: Option<LinkHop>,
}

/// What the resolver published; searched linearly (a few GWLB nodes per appliance).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NextHopTable {
    pub entries: Vec<NextHopEntry>,
}

impl NextHopTable {
    pub fn find(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<&NextHopEntry> {
        self.entries.iter().find(|entry| entry.dst == dst && entry.src == src)
    }
}

/// The table shared by the resolver (one writer) and the senders, and the senders' requests.
#[derive(Debug, Default)]
pub struct NextHops {
    table: ArcSwap<NextHopTable>,
    /// Address pairs a sender found no entry for: `src << 32 | dst`, 0 = free.
    wanted: [AtomicU64; WANTED_SLOTS],
}

impl NextHops {
    pub fn table(&self) -> arc_swap::Guard<Arc<NextHopTable>> {
        self.table.load()
    }

    /// Asks the resolver about `src -> dst` (lock-free; a request already waiting is not
    /// repeated, and one that finds every slot taken is dropped: the next packet asks again).
    pub fn want(&self, src: Ipv4Addr, dst: Ipv4Addr) {
        let key = (u64::from(u32::from(src)) << 32) | u64::from(u32::from(dst));
        for slot in &self.wanted {
            match slot.load(Ordering::Relaxed) {
                found if found == key => return,
                0 => match slot.compare_exchange(0, key, Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(found) if found == key => return,
                    Err(_) => {}
                },
                _ => {}
            }
        }
    }

    fn take_wanted(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        self.wanted
            .iter()
            .map(|slot| slot.swap(0, Ordering::Acquire))
            .filter(|&key| key != 0)
            .map(|key| (Ipv4Addr::from((key >> 32) as u32), Ipv4Addr::from(key as u32)))
            .collect()
    }

    /// How many address pairs currently go out through the packet socket, and how many
    /// through the raw socket (no usable next hop).
    pub fn counts(&self) -> (usize, usize) {
        let table = self.table();
        let packet = table.entries.iter().filter(|entry| entry.hop.is_some()).count();
        (packet, table.entries.len() - packet)
    }

    fn publish(&self, table: NextHopTable) {
        self.table.store(Arc::new(table));
    }
}

/// Keeps a [`NextHops`] table current from the kernel's routes, links and neighbours.
#[derive(Debug)]
pub struct Resolver {
    hops: Arc<NextHops>,
    netlink: Netlink,
    /// Whether the netlink socket's last failure was logged (once until it works again).
    failing: bool,
}

impl Resolver {
    /// Opens the netlink socket (so that an error is known before any packet is sent) and
    /// starts the thread, which ends soon after `stop` is set.
    pub fn spawn(hops: Arc<NextHops>, stop: Arc<AtomicBool>) -> io::Result<JoinHandle<()>> {
        let mut resolver = Resolver { hops, netlink: Netlink::open()?, failing: false };
        std::thread::Builder::new().name("lw-nexthop".into()).spawn(move || resolver.run(&stop))
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut refreshed = Instant::now();
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(POLL);
            let wanted = self.hops.take_wanted();
            if wanted.is_empty() && refreshed.elapsed() < REFRESH {
                continue;
            }
            if refreshed.elapsed() >= REFRESH {
                refreshed = Instant::now();
            }
            self.update(&wanted);
        }
    }

    /// Asks again about every known pair and the `wanted` ones, and publishes the answers if
    /// anything changed.
    fn update(&mut self, wanted: &[(Ipv4Addr, Ipv4Addr)]) {
        let current = self.hops.table();
        let mut pairs: Vec<(Ipv4Addr, Ipv4Addr)> =
            current.entries.iter().map(|entry| (entry.src, entry.dst)).collect();
        for pair in wanted {
            if !pairs.contains(pair) {
                pairs.push(*pair);
            }
        }
        let skip = pairs.len().saturating_sub(MAX_ENTRIES);
        let entries: Vec<NextHopEntry> = pairs[skip..]
            .iter()
            .map(|&(src, dst)| NextHopEntry { src, dst, hop: self.resolve(src, dst) })
            .collect();
        for entry in &entries {
            let before = current.find(entry.src, entry.dst).map(|entry| entry.hop);
            if before != Some(entry.hop) {
                log_change(entry);
            }
        }
        let table = NextHopTable { entries };
        if table != **current {
            drop(current);
            self.hops.publish(table);
        }
    }

    fn resolve(&mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<LinkHop> {
        let answer = self.ask(src, dst);
        let failed = answer.is_err();
        let hop = match answer {
            Ok(Ok(hop)) => Some(hop),
            Ok(Err(reason)) => {
                tracing::trace!(%src, %dst, %reason, "no link-layer next hop");
                None
            }
            Err(error) => {
                if !self.failing {
                    tracing::warn!(%src, %dst, %error, "cannot ask the kernel for a next hop");
                }
                None
            }
        };
        self.failing = failed;
        hop
    }

    fn ask(&mut self, src: Ipv4Addr, dst: Ipv4Addr) -> io::Result<Result<LinkHop, NetlinkError>> {
        let route = match self.netlink.route(dst, src)? {
            Ok(route) => route,
            Err(reason) => return Ok(Err(reason)),
        };
        let link = match self.netlink.link(route.interface)? {
            Ok(link) if link.ethernet => link,
            Ok(_) => return Ok(Err(NetlinkError::NotEthernet(route.interface))),
            Err(reason) => return Ok(Err(reason)),
        };
        Ok(self
            .netlink
            .neighbour(route.interface, route.next_hop)?
            .map(|mac| LinkHop::new(route.interface, mac, link.mac, link.mtu)))
    }
}

fn log_change(entry: &NextHopEntry) {
    match entry.hop {
        Some(hop) => {
            let m = &hop.ethernet[..6];
            tracing::info!(
                src = %entry.src,
                dst = %entry.dst,
                interface = hop.interface,
                next_hop = format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]),
                "replies leave through the packet socket"
            );
        }
        None => tracing::info!(
            src = %entry.src,
            dst = %entry.dst,
            "replies leave through the raw socket (no link-layer next hop known)"
        ),
    }
}

/// Sends single packets: as Ethernet frames where the next hop is known, through the raw
/// socket otherwise (or always, without a packet socket). One per worker, and loadgen's.
#[derive(Debug)]
pub struct SingleSender {
    raw: RawSender,
    link: Option<LinkSender>,
    /// Scratch: what the packet socket left for the raw socket.
    rest: Vec<TxItem>,
}

/// What one [`SingleSender::send`] achieved on each path.
#[derive(Debug, Default, Clone, Copy)]
pub struct PathReports {
    pub packet: SendReport,
    pub raw: SendReport,
}

impl PathReports {
    /// Both paths together.
    pub fn total(&self) -> SendReport {
        let (a, b) = (&self.packet, &self.raw);
        SendReport {
            sent: a.sent + b.sent,
            sent_bytes: a.sent_bytes + b.sent_bytes,
            failed: a.failed + b.failed,
            calls: a.calls + b.calls,
            last_error: b.last_error.or(a.last_error),
        }
    }
}

impl SingleSender {
    /// `batch`: the most items one [`SingleSender::send`] is given (room reserved up front, so
    /// that sending never allocates).
    pub fn new(raw: RawSender, link: Option<LinkSender>, batch: usize) -> SingleSender {
        SingleSender { raw, link, rest: Vec::with_capacity(batch) }
    }

    pub fn send<P: Payloads + ?Sized>(&mut self, items: &[TxItem], payloads: &P) -> PathReports {
        let mut reports = PathReports::default();
        let Some(link) = &mut self.link else {
            reports.raw = self.raw.send(items, payloads);
            return reports;
        };
        link.send(items, payloads, &mut self.rest, &mut reports.packet);
        if !self.rest.is_empty() {
            reports.raw = self.raw.send(&self.rest, payloads);
            self.rest.clear();
        }
        reports
    }
}

/// Packet sockets for `count` senders, the resolver thread they share (ended by `stop`) and
/// its table (`bypass_qdisc`: frames go straight to the device's queue, see
/// [`PacketSocket::bypass_qdisc`]), or `None`, with a warning, when either cannot be opened (a sandbox without
/// `AF_PACKET` or `AF_NETLINK`, no CAP_NET_RAW): single packets then all go raw.
pub fn open_links(
    count: usize,
    send_buffer: usize,
    bypass_qdisc: bool,
    stop: &Arc<AtomicBool>,
) -> Option<(Vec<LinkSender>, JoinHandle<()>, Arc<NextHops>)> {
    let hops = Arc::new(NextHops::default());
    let opened = (0..count)
        .map(|_| {
            let socket = PacketSocket::open(send_buffer)?;
            if bypass_qdisc {
                socket.bypass_qdisc();
            }
            Ok(LinkSender::new(socket, Arc::clone(&hops)))
        })
        .collect::<io::Result<Vec<_>>>()
        .and_then(|senders| {
            Ok((senders, Resolver::spawn(Arc::clone(&hops), Arc::clone(stop))?, hops))
        });
    match opened {
        Ok(links) => Some(links),
        Err(error) => {
            tracing::warn!(
                %error,
                "cannot open the packet socket or the netlink socket that finds next hops: \
                 single packets go through the raw socket only"
            );
            None
        }
    }
}

/// A [`SingleSender`] with its own resolver when it can have one (loadgen's, which sends at
/// most [`SEND_BATCH`] items at a time).
pub fn standalone(
    raw: RawSender,
    send_buffer: usize,
    stop: &Arc<AtomicBool>,
) -> (SingleSender, Option<JoinHandle<()>>) {
    match open_links(1, send_buffer, false, stop) {
        Some((mut senders, resolver, _)) => {
            (SingleSender::new(raw, senders.pop(), SEND_BATCH), Some(resolver))
        }
        None => (SingleSender::new(raw, None, SEND_BATCH), None),
    }
}

/// The packet socket and the table, as one [`SingleSender`] uses them.
#[derive(Debug)]
pub struct LinkSender {
    socket: PacketSocket,
    hops: Arc<NextHops>,
    frames: Vec<Frame>,
}

impl LinkSender {
    pub fn new(socket: PacketSocket, hops: Arc<NextHops>) -> LinkSender {
        LinkSender { socket, hops, frames: Vec::with_capacity(SEND_BATCH) }
    }

    /// Sends the items whose next hop is known as frames, and leaves the others in `rest`
    /// (in order) for the raw socket, asking the resolver about pairs it has not seen.
    fn send<P: Payloads + ?Sized>(
        &mut self,
        items: &[TxItem],
        payloads: &P,
        rest: &mut Vec<TxItem>,
        report: &mut SendReport,
    ) {
        let table = self.hops.table();
        // The previous item's pair and hop: replies mostly go to one GWLB node.
        let mut last: Option<(Ipv4Addr, Ipv4Addr, Option<LinkHop>)> = None;
        for item in items {
            // An unspecified source (loadgen on 0.0.0.0) is the kernel's to choose.
            if item.src.is_unspecified() {
                rest.push(*item);
                continue;
            }
            let hop = match last {
                Some((src, dst, hop)) if src == item.src && dst == item.dst => hop,
                _ => {
                    let hop = match table.find(item.src, item.dst) {
                        Some(entry) => entry.hop,
                        None => {
                            self.hops.want(item.src, item.dst);
                            None
                        }
                    };
                    last = Some((item.src, item.dst, hop));
                    hop
                }
            };
            match hop {
                Some(hop) if (OUTER_HEADER_LEN + item.len) as u64 <= u64::from(hop.mtu) => {
                    self.frames.push(frame(&hop, item));
                    if self.frames.len() == self.frames.capacity() {
                        self.flush(payloads, report);
                    }
                }
                _ => rest.push(*item),
            }
        }
        self.flush(payloads, report);
    }

    fn flush<P: Payloads + ?Sized>(&mut self, payloads: &P, report: &mut SendReport) {
        if !self.frames.is_empty() {
            self.socket.send(&self.frames, payloads, report);
            self.frames.clear();
        }
    }
}

/// The frame for `item` out through `hop`.
fn frame(hop: &LinkHop, item: &TxItem) -> Frame {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let (ethernet, rest) = header.split_at_mut(ETHERNET_HEADER_LEN);
    let (ip, udp) = rest.split_at_mut(IPV4_HEADER_LEN);
    ethernet.copy_from_slice(&hop.ethernet);
    outer::emit_ipv4(ip.try_into().expect("IPv4 header"), item.src, item.dst, item.len);
    udp.copy_from_slice(&item.udp);
    Frame { header, interface: hop.interface, offset: item.offset, len: item.len }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::outer::OuterAddressing;

    const APPLIANCE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const GWLB: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

    #[test]
    fn frame_is_ethernet_then_the_outer_headers_the_raw_socket_would_send() {
        let hop = LinkHop::new(3, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 9001);
        let addressing =
            OuterAddressing { src: APPLIANCE, dst: GWLB, src_port: 50123, dst_port: 6081 };
        let item = TxItem::new(&addressing, 4096, 100).unwrap();
        let frame = frame(&hop, &item);
        assert_eq!((frame.interface, frame.offset, frame.len), (3, 4096, 100));
        #[rustfmt::skip]
        let expected: [u8; FRAME_HEADER_LEN] = [
            2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00,
            0x45, 0, 0, 128, 0, 0, 0x40, 0, 64, 17, 0x25, 0xa5, 10, 99, 0, 2, 10, 99, 0, 1,
            0xc3, 0xcb, 0x17, 0xc1, 0, 108, 0, 0,
        ];
        assert_eq!(frame.header, expected);
        let mut full = [0u8; OUTER_HEADER_LEN];
        outer::emit(&mut full, &addressing, 100).unwrap();
        assert_eq!(frame.header[ETHERNET_HEADER_LEN..], full, "same as replay's header");
    }

    #[test]
    fn requests_are_kept_once_each_until_taken() {
        let hops = NextHops::default();
        hops.want(APPLIANCE, GWLB);
        hops.want(APPLIANCE, GWLB);
        let other = Ipv4Addr::new(10, 99, 0, 3);
        hops.want(APPLIANCE, other);
        assert_eq!(hops.take_wanted(), vec![(APPLIANCE, GWLB), (APPLIANCE, other)]);
        assert!(hops.take_wanted().is_empty());
        // More pairs than slots: the extra ones are dropped, not blocked on.
        for i in 0..WANTED_SLOTS as u8 + 4 {
            hops.want(APPLIANCE, Ipv4Addr::new(10, 98, 0, i));
        }
        assert_eq!(hops.take_wanted().len(), WANTED_SLOTS);
    }

    #[test]
    fn what_the_packet_socket_cannot_carry_is_left_for_the_raw_socket() {
        // Opening a packet socket needs CAP_NET_RAW (the test suite runs as root); nothing
        // here is sent: every item is one the packet socket must leave alone.
        let Ok(socket) = PacketSocket::open(64 * 1024) else { return };
        let hops = Arc::new(NextHops::default());
        let hop = LinkHop::new(1, [2; 6], [4; 6], 1500);
        hops.publish(NextHopTable {
            entries: vec![
                NextHopEntry { src: APPLIANCE, dst: GWLB, hop: Some(hop) },
                NextHopEntry { src: APPLIANCE, dst: Ipv4Addr::new(10, 99, 0, 5), hop: None },
            ],
        });
        let mut link = LinkSender::new(socket, Arc::clone(&hops));
        let item = |src, dst, len| {
            let addressing = OuterAddressing { src, dst, src_port: 40000, dst_port: 6081 };
            TxItem::new(&addressing, 0, len).unwrap()
        };
        let unknown = Ipv4Addr::new(10, 99, 0, 9);
        let items = [
            item(APPLIANCE, GWLB, 1500 - OUTER_HEADER_LEN + 1), // above the interface's MTU
            item(Ipv4Addr::UNSPECIFIED, GWLB, 100),             // the kernel picks the source
            item(APPLIANCE, Ipv4Addr::new(10, 99, 0, 5), 100),  // known: no next hop
            item(APPLIANCE, unknown, 100),                      // not asked about yet
            item(APPLIANCE, unknown, 100),
        ];
        let (mut rest, mut report) = (Vec::new(), SendReport::default());
        link.send(&items, &[0u8; 2048][..], &mut rest, &mut report);
        assert_eq!(report, SendReport::default(), "nothing went through the packet socket");
        let rest: Vec<_> = rest.iter().map(|i| (i.src, i.dst, i.len)).collect();
        let expected: Vec<_> = items.iter().map(|i| (i.src, i.dst, i.len)).collect();
        assert_eq!(rest, expected, "all left, in order");
        assert_eq!(hops.take_wanted(), vec![(APPLIANCE, unknown)], "the unknown pair, once");
        assert_eq!(hops.counts(), (1, 1));
    }

    #[test]
    fn table_finds_by_both_addresses() {
        let hop = LinkHop::new(2, [1; 6], [2; 6], 1500);
        let table = NextHopTable {
            entries: vec![
                NextHopEntry { src: APPLIANCE, dst: GWLB, hop: Some(hop) },
                NextHopEntry { src: GWLB, dst: APPLIANCE, hop: None },
            ],
        };
        assert_eq!(table.find(APPLIANCE, GWLB).unwrap().hop, Some(hop));
        assert_eq!(table.find(GWLB, APPLIANCE).unwrap().hop, None);
        assert!(table.find(APPLIANCE, APPLIANCE).is_none());
    }
}
