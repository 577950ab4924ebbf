//! The three rtnetlink questions the link-layer send path asks the kernel, and their answers:
//! which route a packet from `src` to `dst` takes (`ip route get DST from SRC`), what the
//! route's interface is (`ip link show dev N`), and which hardware address the next hop has
//! (`ip neigh get ADDR dev N`).
//! Must not depend on: anything of labelwall's.
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
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const ARPHRD_ETHER: u16 = 1;
const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
/// Neighbour states whose hardware address is confirmed or being confirmed: REACHABLE, DELAY,
/// PROBE, PERMANENT. Not STALE: frames sent past the kernel confirm nothing, so an entry the
/// kernel stopped vouching for goes back to the raw socket, whose next packet makes the kernel
/// verify it (STALE -> DELAY -> PROBE -> REACHABLE), or learn a new address for it.
const NUD_USABLE: u16 = 0x02 | 0x08 | 0x10 | 0x80;
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
    attribute(&mut message, NDA_DST, &address.octets());
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
        .into_iter()
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
fn attributes(mut bytes: &[u8]) -> Result<Vec<(u16, &[u8])>, NetlinkError> {
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
    Ok(found)
}

fn u32_ne(bytes: &[u8]) -> Result<u32, NetlinkError> {
    Ok(u32::from_ne_bytes(bytes.try_into().map_err(|_| NetlinkError::Malformed("u32 size"))?))
}

fn ipv4(bytes: &[u8]) -> Result<Ipv4Addr, NetlinkError> {
    <[u8; 4]>::try_from(bytes)
        .map(Ipv4Addr::from)
        .map_err(|_| NetlinkError::Malformed("address size"))
}

/// Fixtures: requests as `ip` sends them and answers as a 6.x kernel gave them (little-endian
/// host), recorded in a network namespace with a veth pair 10.9.0.1 <-> 10.9.0.2.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    fn bytes(hex: &[&str]) -> Vec<u8> {
        let hex: String = hex.concat();
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);

    /// `ip route get 10.9.0.2 from 10.9.0.1`: on the link, out of interface 2.
    const ROUTE_ON_LINK: &[&str] = &[
        "680000001800000007000000bc55000002202000fe0000010002000008000f00fe00000008000100",
        "0a090002080002000a0900010800040002000000080019000000000024000c000200000000000000",
        "000000000000000000000000000000000000000000000000",
    ];
    /// `ip link show dev 2` (a veth), cut after IFLA_ADDRESS (the length field adjusted).
    const LINK: &[&str] = &[
        "0c0100001000000007000000bc55000000000100020000004310010000000000",
        "070003007641000008000d00e803000005001000060000000500110000000000",
        "050043000000000008000400dc050000080032004400000008003300ffff0000",
        "08001b000000000008001e000000000008003d000000000008001f0002000000",
        "08002800ffff0000080029000000010008003a000000010008003f0000000100",
        "080040000000010008003b00f8ff070008003c00ffff00000800420000000000",
        "08002000020000000500210001000000080023000200000008002f0001000000",
        "0800300001000000060044000000000006004500000000000500270000000000",
        "0a0001001e1147c08b960000",
    ];
    /// `ip neigh get 10.9.0.2 dev 2`: STALE, fa:cc:14:6d:b8:6d.
    const NEIGHBOUR_STALE: &[&str] = &[
        "4c0000001c00000007000000bc550000020000000200000004000001080001000a0900020a000200",
        "facc146db86d0000080004000100000014000300a3210000a32100002317000001000000",
    ];

    #[test]
    fn requests_match_fixtures() {
        assert_eq!(
            route_request(7, PEER, ADDRESS),
            bytes(&[
                "2c0000001a00010007000000000000000220200000000000000000000800",
                "01000a090002080002000a090001"
            ])
        );
        // Without a source address: no RTA_SRC, source length 0.
        assert_eq!(
            route_request(7, Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::UNSPECIFIED),
            bytes(&["240000001a000100070000000000000002200000000000000000000008000100c0000201"])
        );
        assert_eq!(
            link_request(7, 2),
            bytes(&["2000000012000100070000000000000000000000020000000000000000000000"])
        );
        assert_eq!(
            neighbour_request(7, 2, PEER),
            bytes(&["240000001e0001000700000000000000020000000200000000000000080001000a090002"])
        );
    }

    #[test]
    fn route_on_the_link_goes_to_the_destination_itself() {
        let answer = bytes(ROUTE_ON_LINK);
        assert_eq!(parse_route(&answer, PEER), Ok(Route { interface: 2, next_hop: PEER }));
    }

    #[test]
    fn route_through_a_gateway_goes_to_the_gateway() {
        // The on-link answer with an RTA_GATEWAY 10.9.0.254 added before RTA_OIF.
        let mut answer = bytes(&[
            "000000001800000007000000bc55000002202000fe0000010002000008000f00fe00000008000100",
            "c0000201080005000a0900fe0800040002000000",
        ]);
        let len = answer.len() as u32;
        answer[..4].copy_from_slice(&len.to_ne_bytes());
        let gateway = Ipv4Addr::new(10, 9, 0, 254);
        let dst = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(parse_route(&answer, dst), Ok(Route { interface: 2, next_hop: gateway }));
    }

    #[test]
    fn local_routes_and_kernel_errors_are_not_usable() {
        let local = bytes(&[
            "680000001800000007000000bc55000002202000fe0000020002008008000f00fe00000008000100",
            "0a090001080002000a0900010800040001000000080019000000000024000c000100000000000000",
            "000000000000000000000000000000000000000000000000",
        ]);
        assert_eq!(parse_route(&local, ADDRESS), Err(NetlinkError::NotUnicast(2)));
        let unreachable = bytes(&[
            "380000000200000007000000bc5500009bffffff240000001a0001000700000000000000022000",
            "00000000000000000008000100c0000201",
        ]);
        assert_eq!(parse_route(&unreachable, PEER), Err(NetlinkError::Kernel(libc::ENETUNREACH)));
    }

    #[test]
    fn link_gives_mac_mtu_and_whether_it_is_ethernet() {
        let mut answer = bytes(LINK);
        let mac = [0x1e, 0x11, 0x47, 0xc0, 0x8b, 0x96];
        assert_eq!(parse_link(&answer), Ok(Link { ethernet: true, mac, mtu: 1500 }));
        // The same interface down (flags without IFF_UP) or of another type (ARPHRD_NONE, a
        // TUN device) is not usable.
        answer[24] &= !1;
        assert!(!parse_link(&answer).unwrap().ethernet);
        answer[24] |= 1;
        answer[18..20].copy_from_slice(&0xfffeu16.to_ne_bytes());
        assert!(!parse_link(&answer).unwrap().ethernet);
    }

    #[test]
    fn neighbour_with_a_usable_state_gives_its_mac() {
        let mut answer = bytes(NEIGHBOUR_STALE);
        let mac = [0xfa, 0xcc, 0x14, 0x6d, 0xb8, 0x6d];
        assert_eq!(parse_neighbour(&answer), Err(NetlinkError::Unresolved(0x04))); // STALE
        let states: [(u16, bool); 6] =
            [(0x02, true), (0x08, true), (0x10, true), (0x80, true), (0x01, false), (0x20, false)];
        for (state, usable) in states {
            answer[24..26].copy_from_slice(&state.to_ne_bytes());
            let expected = if usable { Ok(mac) } else { Err(NetlinkError::Unresolved(state)) };
            assert_eq!(parse_neighbour(&answer), expected, "state {state:#x}");
        }
        let unknown = bytes(&[
            "380000000200000007000000bc550000feffffff240000001e0001000700000000000000020000",
            "000200000000000000080001000a09004d",
        ]);
        assert_eq!(parse_neighbour(&unknown), Err(NetlinkError::Kernel(libc::ENOENT)));
    }

    /// Every fixture cut at every length and with every byte set to 0x00, 0x7f, 0x80 and 0xff:
    /// the parsers answer something and never panic.
    #[test]
    fn mutated_answers_never_panic() {
        let fixtures = [bytes(ROUTE_ON_LINK), bytes(LINK), bytes(NEIGHBOUR_STALE)];
        let parse_all = |answer: &[u8]| {
            let _ = parse_route(answer, PEER);
            let _ = parse_link(answer);
            let _ = parse_neighbour(answer);
        };
        for fixture in &fixtures {
            for len in 0..=fixture.len() {
                parse_all(&fixture[..len]);
            }
            for at in 0..fixture.len() {
                for value in [0x00, 0x7f, 0x80, 0xff] {
                    let mut mutated = fixture.clone();
                    mutated[at] = value;
                    parse_all(&mutated);
                }
            }
        }
    }

    #[test]
    fn truncated_and_malformed_answers_are_errors_not_panics() {
        let answer = bytes(NEIGHBOUR_STALE);
        for len in 0..answer.len() {
            assert!(parse_neighbour(&answer[..len]).is_err(), "{len} bytes");
        }
        let mut bad_attribute = answer.clone();
        bad_attribute[28..30].copy_from_slice(&200u16.to_ne_bytes());
        assert!(matches!(parse_neighbour(&bad_attribute), Err(NetlinkError::Malformed(_))));
        assert!(matches!(parse_route(&answer, PEER), Err(NetlinkError::Malformed(_))));
    }
}
