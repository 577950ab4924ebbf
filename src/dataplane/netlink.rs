//! The three rtnetlink questions the link-layer send path asks the kernel, and their answers:
//! which route a packet from `src` to `dst` takes (`ip route get DST from SRC`), what the
//! route's interface is (`ip link show dev N`), and which hardware address the next hop has
//! (`ip neigh get ADDR dev N`).
//!
//! Requests and answers are built and parsed here as plain bytes (tested with fixtures taken
//! from the kernel); [`Netlink`] only moves them over an `AF_NETLINK` socket. Hand-written
//! rather than a netlink crate because three fixed messages are all it takes.

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

const NLMSG_HEADER_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const AF_INET: u8 = 2;
const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTN_UNICAST: u8 = 1;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const NDA_LLADDR: u16 = 2;
const ARPHRD_ETHER: u16 = 1;
const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
/// Neighbour states with a hardware address the kernel itself would send to: REACHABLE,
/// STALE, DELAY, PROBE, PERMANENT (not INCOMPLETE, FAILED, NOARP or NONE).
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80;
/// How long to wait for the kernel's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// The route a packet takes: out of `interface`, to `next_hop` (the gateway, or the
/// destination itself when it is on the link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub interface: u32,
    pub next_hop: Ipv4Addr,
}

/// What the send path needs of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Ethernet, up, not loopback.
    pub ethernet: bool,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// Why a question got no usable answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetlinkError {
    /// The kernel answered with an error (e.g. ENETUNREACH, ENOENT for an unknown neighbour).
    #[error("the kernel answered: {}", io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
    /// Not a local unicast route the link layer can carry (local, broadcast, blackhole, ...).
    #[error("route of type {0} is not unicast")]
    NotUnicast(u8),
    /// The route's interface is not an Ethernet interface that is up (loopback, a TUN device).
    #[error("interface {0} is not an Ethernet interface that is up")]
    NotEthernet(u32),
    /// The neighbour is known but has no usable hardware address (yet).
    #[error("neighbour in state {0:#x} has no usable hardware address")]
    Unresolved(u16),
    #[error("malformed netlink answer: {0}")]
    Malformed(&'static str),
}

/// `ip route get DST from SRC`.
pub fn route_request(seq: u32, dst: Ipv4Addr, src: Ipv4Addr) -> Vec<u8> {
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let rtmsg = [AF_INET, 32, if src.is_unspecified() { 0 } else { 32 }, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut message = header(RTM_GETROUTE, seq, &rtmsg);
    attribute(&mut message, RTA_DST, &dst.octets());
    if !src.is_unspecified() {
        attribute(&mut message, RTA_SRC, &src.octets());
    }
    finish(message)
}

/// `ip link show dev INDEX`.
pub fn link_request(seq: u32, interface: u32) -> Vec<u8> {
    // ifinfomsg: family, pad, type (u16), index (i32), flags (u32), change (u32).
    let mut ifinfo = [0u8; 16];
    ifinfo[4..8].copy_from_slice(&interface.to_ne_bytes());
    finish(header(RTM_GETLINK, seq, &ifinfo))
}

/// `ip neigh get ADDRESS dev INDEX`.
pub fn neighbour_request(seq: u32, interface: u32, address: Ipv4Addr) -> Vec<u8> {
    // ndmsg: family, pad (3), ifindex (i32), state (u16), flags, type.
    let mut ndmsg = [0u8; 12];
    ndmsg[0] = AF_INET;
    ndmsg[4..8].copy_from_slice(&interface.to_ne_bytes());
    let mut message = header(RTM_GETNEIGH, seq, &ndmsg);
    attribute(&mut message, 1, &address.octets()); // NDA_DST
    finish(message)
}

/// Parses the answer to [`route_request`].
pub fn parse_route(answer: &[u8], dst: Ipv4Addr) -> Result<Route, NetlinkError> {
    let body = body(answer, RTM_NEWROUTE, 12)?;
    let kind = body[7];
    if kind != RTN_UNICAST {
        return Err(NetlinkError::NotUnicast(kind));
    }
    let mut interface = None;
    let mut gateway = None;
    for (kind, value) in attributes(&body[12..])? {
        match kind {
            RTA_OIF => interface = Some(u32_ne(value)?),
            RTA_GATEWAY => gateway = Some(ipv4(value)?),
            _ => {}
        }
    }
    let interface = interface.ok_or(NetlinkError::Malformed("route without an interface"))?;
    Ok(Route { interface, next_hop: gateway.unwrap_or(dst) })
}

/// Parses the answer to [`link_request`].
pub fn parse_link(answer: &[u8]) -> Result<Link, NetlinkError> {
    let body = body(answer, RTM_NEWLINK, 16)?;
    let kind = u16::from_ne_bytes([body[2], body[3]]);
    let flags = u32_ne(&body[8..12])?;
    let mut mac = None;
    let mut mtu = None;
    for (kind, value) in attributes(&body[16..])? {
        match kind {
            IFLA_ADDRESS => mac = <[u8; 6]>::try_from(value).ok(),
            IFLA_MTU => mtu = Some(u32_ne(value)?),
            _ => {}
        }
    }
    let ethernet = kind == ARPHRD_ETHER && flags & IFF_UP != 0 && flags & IFF_LOOPBACK == 0;
    Ok(Link {
        ethernet: ethernet && mac.is_some(),
        mac: mac.unwrap_or_default(),
        mtu: mtu.ok_or(NetlinkError::Malformed("link without an MTU"))?,
    })
}

/// Parses the answer to [`neighbour_request`]: the neighbour's hardware address, if the
/// kernel has one it would send to.
pub fn parse_neighbour(answer: &[u8]) -> Result<[u8; 6], NetlinkError> {
    let body = body(answer, RTM_NEWNEIGH, 12)?;
    let state = u16::from_ne_bytes([body[8], body[9]]);
    let mac = attributes(&body[12..])?
        .find(|(kind, _)| *kind == NDA_LLADDR)
        .and_then(|(_, value)| <[u8; 6]>::try_from(value).ok());
    match mac {
        Some(mac) if state & NUD_USABLE != 0 => Ok(mac),
        _ => Err(NetlinkError::Unresolved(state)),
    }
}

/// A netlink route socket that asks one question at a time.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let socket = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW.cloexec(),
            Some(Protocol::from(libc::NETLINK_ROUTE)),
        )?;
        socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(Netlink { socket, seq: 0, buffer: vec![0; 32 * 1024] })
    }

    pub fn route(
        &mut self,
        dst: Ipv4Addr,
        src: Ipv4Addr,
    ) -> io::Result<Result<Route, NetlinkError>> {
        let seq = self.next_seq();
        let answer = self.ask(&route_request(seq, dst, src), seq)?;
        Ok(parse_route(answer, dst))
    }

    pub fn link(&mut self, interface: u32) -> io::Result<Result<Link, NetlinkError>> {
        let seq = self.next_seq();
        let answer = self.ask(&link_request(seq, interface), seq)?;
        Ok(parse_link(answer))
    }

    pub fn neighbour(
        &mut self,
        interface: u32,
        address: Ipv4Addr,
    ) -> io::Result<Result<[u8; 6], NetlinkError>> {
        let seq = self.next_seq();
        let answer = self.ask(&neighbour_request(seq, interface, address), seq)?;
        Ok(parse_neighbour(answer))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `request` to the kernel and returns its answer with sequence number `seq`
    /// (skipping late answers to earlier questions that timed out).
    fn ask(&mut self, request: &[u8], seq: u32) -> io::Result<&[u8]> {
        self.socket.send(request)?;
        loop {
            let len = (&self.socket).read(&mut self.buffer)?;
            let answer = &self.buffer[..len];
            if answer.len() >= NLMSG_HEADER_LEN && u32_ne(&answer[8..12]).ok() == Some(seq) {
                return Ok(&self.buffer[..len]);
            }
        }
    }
}

fn header(kind: u16, seq: u32, fixed: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    message.extend_from_slice(fixed);
    message
}

fn attribute(message: &mut Vec<u8>, kind: u16, value: &[u8]) {
    message.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(value);
    message.resize(message.len().next_multiple_of(4), 0);
}

fn finish(mut message: Vec<u8>) -> Vec<u8> {
    let len = message.len() as u32;
    message[..4].copy_from_slice(&len.to_ne_bytes());
    message
}

/// The body of the first message of `answer`, which must be of type `kind` with at least
/// `fixed` bytes before its attributes; a netlink error message becomes [`NetlinkError::Kernel`].
fn body(answer: &[u8], kind: u16, fixed: usize) -> Result<&[u8], NetlinkError> {
    if answer.len() < NLMSG_HEADER_LEN {
        return Err(NetlinkError::Malformed("shorter than a netlink header"));
    }
    let len = u32_ne(&answer[..4])? as usize;
    let message = answer
        .get(NLMSG_HEADER_LEN..len)
        .ok_or(NetlinkError::Malformed("length beyond the answer"))?;
    match u16::from_ne_bytes([answer[4], answer[5]]) {
        NLMSG_ERROR => {
            let code = i32::from_ne_bytes(
                message.get(..4).ok_or(NetlinkError::Malformed("short error"))?.try_into().unwrap(),
            );
            Err(NetlinkError::Kernel(-code))
        }
        found if found == kind && message.len() >= fixed => Ok(message),
        found if found == kind => Err(NetlinkError::Malformed("short message")),
        _ => Err(NetlinkError::Malformed("unexpected message type")),
    }
}

/// The (type, value) pairs of a run of route attributes.
fn attributes(mut bytes: &[u8]) -> Result<impl Iterator<Item = (u16, &[u8])>, NetlinkError> {
    let mut found = Vec::new();
    while bytes.len() >= 4 {
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        if len < 4 || len > bytes.len() {
            return Err(NetlinkError::Malformed("attribute length"));
        }
        // The top two bits of the type are flags (nested, byte order).
        found.push((u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff, &bytes[4..len]));
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    Ok(found.into_iter())
}

fn u32_ne(bytes: &[u8]) -> Result<u32, NetlinkError> {
    Ok(u32::from_ne_bytes(bytes.try_into().map_err(|_| NetlinkError::Malformed("u32 size"))?))
}

fn ipv4(bytes: &[u8]) -> Result<Ipv4Addr, NetlinkError> {
    <[u8; 4]>::try_from(bytes)
        .map(Ipv4Addr::from)
        .map_err(|_| NetlinkError::Malformed("address size"))
}
