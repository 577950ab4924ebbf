//! The only place with `unsafe`: the raw-socket and packet-socket `sendmmsg(2)` of the
//! send-back path, the `sendmsg(2)` with a `UDP_SEGMENT` control message of the
//! segmentation-offload path, socket options socket2 does not have, `poll(2)` waits and the
//! eventfd that ends them (the TUN ioctls are in `tun.rs`).
//! Must not depend on: anything of labelwall's but the outer header layout (`wire::outer`).
//!
//! Why unsafe: GWLB wants replies from its own source port to `reply_port`, which a UDP socket
//! bound to 6081 cannot send, so replies go through a raw `IPPROTO_UDP` socket with a UDP
//! header we write, or through a packet socket with the whole Ethernet frame. No maintained
//! crate batches sends on these (quinn-udp only does UDP sockets), and one system call per
//! packet would cost more than everything else on the path. Each message is two iovecs (the
//! headers we write, the unchanged datagram in the receive buffer), so nothing is copied.

#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

use crate::wire::outer::{self, OUTER_HEADER_LEN, OuterAddressing, UDP_HEADER_LEN};

/// Messages per `sendmmsg` call.
pub const SEND_BATCH: usize = 64;
/// Source addresses a [`RawSender`] keeps a socket for (an appliance answers from the one or
/// few addresses GWLB sends to); past that the oldest socket is closed.
pub const MAX_SOURCE_ADDRESSES: usize = 8;

/// The memory the items of a send point into, by offset: one buffer, or a receive ring's
/// frames and the worker's own room after them (`ring::RingPayloads`), which are not one
/// slice.
pub trait Payloads {
    /// The `len` bytes at `offset`; panics when they are not there.
    fn bytes(&self, offset: usize, len: usize) -> &[u8];
}

impl Payloads for [u8] {
    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        &self[offset..offset + len]
    }
}

impl Payloads for Vec<u8> {
    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        &self[offset..offset + len]
    }
}

/// One packet to send: a UDP header, then `len` bytes at `offset` in the payload buffer, from
/// `src` to `dst`. The kernel writes the IPv4 header in front.
#[derive(Debug, Clone, Copy)]
pub struct TxItem {
    pub udp: [u8; UDP_HEADER_LEN],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub offset: usize,
    pub len: usize,
}

impl TxItem {
    /// The packet for a UDP payload of `len` bytes at `offset`, or `None` when it cannot fit
    /// in one IPv4 packet.
    pub fn new(addressing: &OuterAddressing, offset: usize, len: usize) -> Option<TxItem> {
        let mut udp = [0u8; UDP_HEADER_LEN];
        outer::emit_udp(&mut udp, addressing, len)?;
        Some(TxItem { udp, src: addressing.src, dst: addressing.dst, offset, len })
    }
}

/// What one [`RawSender::send`] achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub sent: u64,
    pub sent_bytes: u64,
    pub failed: u64,
    /// `sendmmsg` calls that sent something.
    pub calls: u64,
    /// The errno of the last failure, for a rate-limited log line.
    pub last_error: Option<i32>,
}

/// Sends UDP datagrams with any source port through raw `IPPROTO_UDP` sockets: we write the
/// UDP header, the kernel the IPv4 header (DF set, TTL 64, checksum).
///
/// Not `IPPROTO_RAW` (`IP_HDRINCL`, where we would write the IPv4 header too): the kernel
/// routes such packets with "next hop known", which for a directly connected destination (GWLB
/// in the appliance's subnet, or loopback) builds and frees a route entry for every packet,
/// about 100 ns more per packet than a UDP socket's send. Without `IP_HDRINCL` the source
/// address is the socket's own, so there is one socket per source address, bound to it.
///
/// A raw `IPPROTO_UDP` socket would also be handed a copy of every UDP datagram the host
/// receives. Each socket is therefore connected to its own address: the kernel then copies to
/// it only datagrams from that address to that address (none, in practice), and a filter that
/// drops everything keeps even those out of its queue.
#[derive(Debug)]
pub struct RawSender {
    send_buffer: usize,
    /// Oldest first.
    sockets: Vec<(Ipv4Addr, Socket)>,
}

impl RawSender {
    /// Checks that raw sockets may be opened (CAP_NET_RAW); sockets are opened per source
    /// address on first use.
    pub fn open(send_buffer: usize) -> io::Result<Self> {
        drop(Self::raw_udp_socket()?);
        Ok(RawSender { send_buffer, sockets: Vec::new() })
    }

    fn raw_udp_socket() -> io::Result<Socket> {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))
    }

    /// A socket sending from `src`. When `src` is unspecified (loadgen or gwlb-sim told to
    /// listen on 0.0.0.0; never the data plane, which answers from a known address) the kernel
    /// picks the source address, and the socket, unconnected, is handed copies of incoming UDP
    /// that its filter drops.
    fn open_from(&self, src: Ipv4Addr) -> io::Result<Socket> {
        let socket = Self::raw_udp_socket()?;
        // BPF "ret #0": accept nothing.
        socket.attach_filter(&[SockFilter::new((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, 0)])?;
        let _ = socket.set_recv_buffer_size(0); // rounded up to the kernel's minimum
        set_buffer_size(&socket, libc::SO_SNDBUFFORCE, self.send_buffer, |s, n| {
            s.set_send_buffer_size(n)
        });
        set_int_option(&socket, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)?;
        set_int_option(&socket, libc::IPPROTO_IP, libc::IP_TTL, i32::from(outer::TTL))?;
        if !src.is_unspecified() {
            let local = SocketAddrV4::new(src, 0);
            socket.bind(&local.into())?;
            socket.connect(&local.into())?;
            // Connecting cached a route on the socket that no send uses (a raw send routes each
            // packet itself), but that every send still checks when it releases the socket
            // (about 1% of a packet's path). Changing the TOS drops it; nothing sets it again.
            set_int_option(&socket, libc::IPPROTO_IP, libc::IP_TOS, 4)?;
            set_int_option(&socket, libc::IPPROTO_IP, libc::IP_TOS, 0)?;
        }
        Ok(socket)
    }

    /// The socket for `src`, opened on first use.
    fn socket_for(&mut self, src: Ipv4Addr) -> io::Result<RawFd> {
        if let Some((_, socket)) = self.sockets.iter().find(|(address, _)| *address == src) {
            return Ok(socket.as_raw_fd());
        }
        let socket = self.open_from(src)?;
        if self.sockets.len() == MAX_SOURCE_ADDRESSES {
            self.sockets.remove(0);
        }
        let fd = socket.as_raw_fd();
        self.sockets.push((src, socket));
        Ok(fd)
    }

    /// Sends every item, batching system calls (one `sendmmsg` per run of items with the same
    /// source address, up to [`SEND_BATCH`] each); a message the kernel refuses is counted as
    /// failed and skipped, the rest still go out.
    pub fn send<P: Payloads + ?Sized>(&mut self, items: &[TxItem], payloads: &P) -> SendReport {
        let mut report = SendReport::default();
        let mut rest = items;
        while let Some(first) = rest.first() {
            let same =
                rest.iter().take(SEND_BATCH).take_while(|item| item.src == first.src).count();
            let (chunk, after) = rest.split_at(same);
            match self.socket_for(first.src) {
                Ok(fd) => send_chunk(fd, chunk, payloads, &mut report),
                Err(error) => {
                    report.failed += chunk.len() as u64;
                    report.last_error = error.raw_os_error();
                }
            }
            rest = after;
        }
        report
    }
}

fn send_chunk<P: Payloads + ?Sized>(
    fd: RawFd,
    chunk: &[TxItem],
    payloads: &P,
    report: &mut SendReport,
) {
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut iovecs: [[libc::iovec; 2]; SEND_BATCH] = unsafe { zeroed() };
    let mut addrs: [libc::sockaddr_in; SEND_BATCH] = unsafe { zeroed() };
    let mut messages: [libc::mmsghdr; SEND_BATCH] = unsafe { zeroed() };
    for (i, item) in chunk.iter().enumerate() {
        addrs[i].sin_family = libc::AF_INET as libc::sa_family_t;
        addrs[i].sin_addr.s_addr = u32::from_ne_bytes(item.dst.octets());
        let payload = payloads.bytes(item.offset, item.len);
        fill_message(&mut messages[i], &mut addrs[i], &mut iovecs[i], &item.udp, payload);
    }
    // SAFETY: the messages point into `iovecs`, `addrs`, `chunk` and `payloads`, which
    // outlive the call.
    unsafe { send_messages(fd, &mut messages[..chunk.len()], |i| chunk[i].len, report) };
}

/// Points `message` at the destination `name` and at `iov`, which it fills with `header`
/// and `payload`: the two iovecs of every message the send paths write. It only stores
/// pointers; whoever sends the message keeps all four alive until then.
fn fill_message<A>(
    message: &mut libc::mmsghdr,
    name: &mut A,
    iov: &mut [libc::iovec; 2],
    header: &[u8],
    payload: &[u8],
) {
    *iov = [
        libc::iovec { iov_base: header.as_ptr() as *mut _, iov_len: header.len() },
        libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() },
    ];
    let header = &mut message.msg_hdr;
    header.msg_name = (name as *mut A).cast();
    header.msg_namelen = size_of::<A>() as libc::socklen_t;
    header.msg_iov = iov.as_mut_ptr();
    header.msg_iovlen = 2;
}

/// `sendmmsg` until every message went out or failed: a message the kernel refuses is
/// counted as failed and skipped. `payload_len(i)` is message `i`'s UDP payload, counted in
/// `sent_bytes` with the outer IPv4 and UDP headers.
///
/// # Safety
/// Every message must point to memory valid for reads for the duration of the call.
unsafe fn send_messages(
    fd: RawFd,
    messages: &mut [libc::mmsghdr],
    payload_len: impl Fn(usize) -> usize,
    report: &mut SendReport,
) {
    let mut done = 0;
    while done < messages.len() {
        // SAFETY: the caller vouches for what the messages point to; the kernel only reads it.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                messages.as_mut_ptr().add(done),
                (messages.len() - done) as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // sendmmsg reports the error of the first message it could not send.
            report.failed += 1;
            report.last_error = error.raw_os_error();
            done += 1;
            continue;
        }
        report.calls += 1;
        for i in done..done + rc as usize {
            report.sent += 1;
            report.sent_bytes += (OUTER_HEADER_LEN + payload_len(i)) as u64;
        }
        done += rc as usize;
    }
}

/// Ethernet header, then the outer IPv4 and UDP headers.
pub const FRAME_HEADER_LEN: usize = ETHERNET_HEADER_LEN + OUTER_HEADER_LEN;
pub const ETHERNET_HEADER_LEN: usize = 14;

/// One Ethernet frame for the packet socket: a header we wrote whole (Ethernet, IPv4, UDP),
/// then `len` bytes at `offset` in the payload buffer, out of interface `interface`.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub header: [u8; FRAME_HEADER_LEN],
    pub interface: u32,
    pub offset: usize,
    pub len: usize,
}

/// Sends whole Ethernet frames through an `AF_PACKET` socket, past the kernel's IP layer: no
/// route lookup, no socket lock, no checksumming copy per packet. Used for replies whose next
/// hop's hardware address the kernel's neighbour table knows (see `nexthop`); the socket
/// receives nothing (protocol 0 and never bound).
#[derive(Debug)]
pub struct PacketSocket {
    socket: Socket,
}

impl PacketSocket {
    pub fn open(send_buffer: usize) -> io::Result<Self> {
        let socket = Socket::new(Domain::PACKET, Type::RAW.cloexec(), Some(Protocol::from(0)))?;
        set_buffer_size(&socket, libc::SO_SNDBUFFORCE, send_buffer, |s, n| {
            s.set_send_buffer_size(n)
        });
        Ok(PacketSocket { socket })
    }

    /// Frames skip the qdisc layer (`PACKET_QDISC_BYPASS`): no queueing discipline, no tc
    /// egress rules, straight to the driver's transmit queue (which reports a full queue as a
    /// send error instead of queueing). Best effort: without it frames take the qdisc path.
    pub fn bypass_qdisc(&self) {
        let _ = set_int_option(&self.socket, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
    }

    /// Sends every frame in `sendmmsg` batches of up to [`SEND_BATCH`].
    pub fn send<P: Payloads + ?Sized>(
        &self,
        frames: &[Frame],
        payloads: &P,
        report: &mut SendReport,
    ) {
        for chunk in frames.chunks(SEND_BATCH) {
            // SAFETY: all-zero is a valid value for these plain C structs.
            let mut iovecs: [[libc::iovec; 2]; SEND_BATCH] = unsafe { zeroed() };
            let mut addrs: [libc::sockaddr_ll; SEND_BATCH] = unsafe { zeroed() };
            let mut messages: [libc::mmsghdr; SEND_BATCH] = unsafe { zeroed() };
            for (i, frame) in chunk.iter().enumerate() {
                addrs[i].sll_family = libc::AF_PACKET as libc::sa_family_t;
                addrs[i].sll_protocol = (libc::ETH_P_IP as u16).to_be();
                addrs[i].sll_ifindex = frame.interface as i32;
                let payload = payloads.bytes(frame.offset, frame.len);
                fill_message(
                    &mut messages[i],
                    &mut addrs[i],
                    &mut iovecs[i],
                    &frame.header,
                    payload,
                );
            }
            // SAFETY: the messages point into `iovecs`, `addrs`, `chunk` and `payloads`,
            // which outlive the call.
            unsafe {
                send_messages(
                    self.socket.as_raw_fd(),
                    &mut messages[..chunk.len()],
                    |i| chunk[i].len,
                    report,
                )
            };
        }
    }
}

/// Turns off the per-datagram control messages quinn-udp's `UdpSocketState::new` asks for but
/// the caller does not use: the receive timestamp and the TOS byte always, the destination
/// address (`IP_PKTINFO`) unless `destination` is wanted. Each costs the kernel a `put_cmsg`
/// per datagram (together about 5% of a single packet's path on loopback), and while any
/// socket wants timestamps the kernel reads the clock for every packet it receives. GRO segment
/// sizes stay on.
pub fn skip_unused_control_messages(
    socket: &std::net::UdpSocket,
    destination: bool,
) -> io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    set_int_option(&socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 0)?;
    set_int_option(&socket, libc::IPPROTO_IP, libc::IP_RECVTOS, 0)?;
    if !destination {
        set_int_option(&socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 0)?;
    }
    Ok(())
}

/// Sets an integer socket option.
pub fn set_int_option(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the right length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Busy polling on `socket`: `SO_BUSY_POLL` for `micros`, `SO_PREFER_BUSY_POLL` and a budget
/// of [`SEND_BATCH`] packets per poll where the kernel has them (5.11+; an older kernel keeps
/// plain `SO_BUSY_POLL`).
pub fn set_busy_poll(socket: &Socket, micros: u32) -> io::Result<()> {
    let micros = micros.min(i32::MAX as u32) as libc::c_int;
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_BUSY_POLL, micros)?;
    let _ = set_int_option(socket, libc::SOL_SOCKET, SO_PREFER_BUSY_POLL, 1);
    let _ = set_int_option(socket, libc::SOL_SOCKET, SO_BUSY_POLL_BUDGET, SEND_BATCH as _);
    Ok(())
}

/// asm-generic/socket.h (5.11+).
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// `UDP_SEGMENT` (linux/udp.h; not in the libc crate for glibc targets).
const UDP_SEGMENT: libc::c_int = 103;
/// Most segments the kernel accepts in one `UDP_SEGMENT` send (UDP_MAX_SEGMENTS).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most payload bytes in one UDP send: the IPv4 total length field's limit minus the IPv4 and
/// UDP headers (a segmented send is one UDP datagram until the kernel cuts it).
pub const MAX_GSO_BYTES: usize = 65535 - OUTER_HEADER_LEN;

/// A UDP socket bound to one (appliance IP, GWLB source port), used only to send trains of
/// same-size datagrams with UDP segmentation offload (`UDP_SEGMENT`): one system call and one
/// pass through the stack for up to 64 datagrams, cut by the kernel (or the NIC) at the end.
///
/// It never joins a `SO_REUSEPORT` group and sets no `SO_REUSEADDR`: if anything else holds the
/// address (the listen sockets, when GWLB's source port is the listen port; another worker;
/// another program), `open` fails with `EADDRINUSE` and the caller falls back to the raw
/// socket, rather than stealing that socket's traffic. It must not collect traffic either:
/// a socket filter that drops everything keeps anything addressed to it out of its receive
/// queue (no memory held, nothing to drain), and the receive buffer is the kernel's minimum.
#[derive(Debug)]
pub struct GsoSocket {
    socket: Socket,
}

impl GsoSocket {
    /// Opens and binds the socket to `local`.
    pub fn open(local: SocketAddrV4) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // BPF "ret #0": accept nothing.
        socket.attach_filter(&[SockFilter::new((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, 0)])?;
        let _ = socket.set_recv_buffer_size(0); // rounded up to the kernel's minimum
        socket.bind(&local.into())?;
        Ok(GsoSocket { socket })
    }

    /// Whether this kernel has UDP segmentation offload (Linux 4.18+): sets `UDP_SEGMENT` on a
    /// throwaway socket.
    pub fn supported() -> bool {
        let Ok(socket) = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)) else {
            return false;
        };
        set_int_option(&socket, libc::SOL_UDP, UDP_SEGMENT, 1400).is_ok()
    }

    /// Sends `data` to `dst` as datagrams of `segment_size` bytes (the last may be shorter)
    /// in one `sendmsg`. With `segment_size >= data.len()` it is one plain datagram. The
    /// caller keeps `data` within [`MAX_GSO_BYTES`] and [`MAX_GSO_SEGMENTS`] segments.
    pub fn send(&self, dst: SocketAddrV4, data: &[u8], segment_size: u16) -> io::Result<()> {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut addr: libc::sockaddr_in = unsafe { zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = dst.port().to_be();
        addr.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
        // Room for one cmsg carrying a u16, aligned like a cmsghdr.
        let mut control = [0u64; 4];
        // SAFETY: as above.
        let mut message: libc::msghdr = unsafe { zeroed() };
        message.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        message.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        let segmented = usize::from(segment_size) < data.len();
        if segmented {
            message.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure computation.
            message.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
            debug_assert!(message.msg_controllen <= size_of::<[u64; 4]>());
            // SAFETY: msg_control points at `control`, which is large enough for one cmsghdr
            // with a u16 (checked above) and aligned for it (u64); CMSG_FIRSTHDR and
            // CMSG_DATA stay inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&message);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment_size);
            }
        }
        loop {
            // SAFETY: `message` points at `addr`, `iov` (-> `data`) and `control`, all alive
            // for the call; the kernel only reads them.
            let rc = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &message, 0) };
            if rc >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

/// Sets a socket buffer size, forcing past the sysctl cap when we may (root or CAP_NET_ADMIN),
/// else as far as the cap allows.
pub fn set_buffer_size(
    socket: &Socket,
    force_option: libc::c_int,
    size: usize,
    fallback: impl Fn(&Socket, usize) -> io::Result<()>,
) {
    let value = size.min(i32::MAX as usize) as libc::c_int;
    if set_int_option(socket, libc::SOL_SOCKET, force_option, value).is_err() {
        let _ = fallback(socket, size);
    }
}

/// A UDP socket bound to `at` with a receive buffer of `buffer` bytes (forced past the
/// sysctl cap when we may): how loadgen and gwlb-sim listen for what comes back.
pub fn bind_udp_receiver(at: SocketAddrV4, buffer: usize) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    set_buffer_size(&socket, libc::SO_RCVBUFFORCE, buffer, |s, n| s.set_recv_buffer_size(n));
    socket.bind(&std::net::SocketAddr::V4(at).into())?;
    Ok(socket.into())
}

/// The process's open-file limit: (soft, hard).
pub fn open_file_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft open-file limit to `to` (at most the hard limit).
pub fn raise_open_file_limit(to: u64) -> io::Result<()> {
    let (_, hard) = open_file_limit()?;
    let limit = libc::rlimit { rlim_cur: to.min(hard), rlim_max: hard };
    // SAFETY: setrlimit reads one rlimit, which lives for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches a classic BPF program to the `SO_REUSEPORT` group of `socket` (bound): it picks
/// which socket of the group gets each datagram (its return value is the socket's index in
/// the order they were bound).
pub fn attach_reuseport_program(
    socket: &Socket,
    program: &[super::ring::Instruction],
) -> io::Result<()> {
    let filters = super::ring::sock_filters(program);
    let fprog = libc::sock_fprog {
        len: filters.len() as u16,
        filter: filters.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: setsockopt reads one sock_fprog, whose filter array lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passes; true when readable.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut fds = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }];
    poll(&mut fds, Some(timeout))?;
    Ok(fds[0].revents != 0)
}

/// What ended a [`wait_readable_or_woken`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Woken {
    /// The file descriptor waited for is readable.
    pub readable: bool,
    /// The second one (when given) is readable.
    pub also_readable: bool,
    /// The ticker fired (and was cleared).
    pub ticked: bool,
}

/// Waits, with no timeout (so the kernel arms no timer for it), until `fd` or `also` (when
/// given) is readable, `wake` was woken or `ticker` fires.
pub fn wait_readable_or_woken(
    fd: RawFd,
    also: Option<RawFd>,
    wake: &Wake,
    ticker: &Ticker,
) -> io::Result<Woken> {
    // An absent second descriptor is -1, which poll skips.
    let mut fds = [fd, also.unwrap_or(-1), wake.0.as_raw_fd(), ticker.fd.as_raw_fd()]
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    poll(&mut fds, None)?;
    let ticked = fds[3].revents != 0;
    if ticked {
        ticker.clear();
    }
    Ok(Woken { readable: fds[0].revents != 0, also_readable: fds[1].revents != 0, ticked })
}

/// `poll(2)` on `fds` for at most `timeout` (`None`: until one is ready); an interrupted
/// wait counts as a timeout.
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let millis = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: `fds` is a valid array of pollfds of the length given.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
        fds.iter_mut().for_each(|fd| fd.revents = 0);
    }
    Ok(())
}

/// An eventfd that, once [`Wake::wake`] was called, wakes every thread that waits on it in
/// [`wait_readable_or_woken`], then and later (nothing reads it, so it stays readable): how
/// the data plane stops workers that sleep without a timeout.
#[derive(Debug)]
pub struct Wake(OwnedFd);

impl Wake {
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd takes no pointers; a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        Ok(Wake(owned(fd)?))
    }

    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write reads the 8 bytes of `one`, which live for the call. It can only fail
        // when the counter is near overflow, and then the eventfd is readable anyway.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// A periodic timer (timerfd) that wakes a [`wait_readable_or_woken`] while it is on: one
/// kernel timer for as long as it runs, instead of one armed for every wait with a timeout.
#[derive(Debug)]
pub struct Ticker {
    fd: OwnedFd,
    on: bool,
}

impl Ticker {
    /// A ticker, off.
    pub fn new() -> io::Result<Ticker> {
        let flags = libc::TFD_CLOEXEC | libc::TFD_NONBLOCK;
        // SAFETY: timerfd_create takes no pointers; a new descriptor or -1.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
        Ok(Ticker { fd: owned(fd)?, on: false })
    }

    /// Fires every `period` from now while `on`, never while off; a system call only when
    /// that changes.
    pub fn set(&mut self, on: bool, period: Duration) -> io::Result<()> {
        if on == self.on {
            return Ok(());
        }
        let period = if on {
            libc::timespec {
                tv_sec: period.as_secs() as libc::time_t,
                tv_nsec: period.subsec_nanos() as libc::c_long,
            }
        } else {
            libc::timespec { tv_sec: 0, tv_nsec: 0 }
        };
        let spec = libc::itimerspec { it_interval: period, it_value: period };
        // SAFETY: timerfd_settime reads one itimerspec and writes none (null old value).
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.on = on;
        Ok(())
    }

    /// Takes the expirations so far: not readable again until the next.
    fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: read writes at most 8 bytes into `count`. Nothing to read (EAGAIN) is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

/// Owns the new descriptor `fd`, or the error when it is -1.
fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened by the caller and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// An idle wait ends on a tick only while the ticker is on, and on a wake at once, for
    /// every waiter, every time after.
    #[test]
    fn idle_waits_end_on_ticks_while_on_and_on_the_wake() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = socket.as_raw_fd();
        let wake = Arc::new(Wake::new().unwrap());
        let mut ticker = Ticker::new().unwrap();
        ticker.set(true, Duration::from_millis(20)).unwrap();
        for _ in 0..3 {
            let woken = wait_readable_or_woken(fd, None, &wake, &ticker).unwrap();
            assert_eq!(woken, Woken { ticked: true, ..Woken::default() });
        }
        ticker.set(false, Duration::from_millis(20)).unwrap();
        let waker = {
            let wake = Arc::clone(&wake);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                wake.wake();
            })
        };
        let started = Instant::now();
        let woken = wait_readable_or_woken(fd, None, &wake, &ticker).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250), "a tick while off: {woken:?}");
        assert_eq!(woken, Woken::default());
        waker.join().unwrap();
        assert_eq!(wait_readable_or_woken(fd, None, &wake, &ticker).unwrap(), Woken::default());
        // The second descriptor, told apart from the first.
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        other.send_to(b"x", other.local_addr().unwrap()).unwrap();
        let woken = wait_readable_or_woken(fd, Some(other.as_raw_fd()), &wake, &ticker).unwrap();
        assert_eq!((woken.readable, woken.also_readable), (false, true));
        socket.send_to(b"x", socket.local_addr().unwrap()).unwrap();
        assert!(wait_readable_or_woken(fd, None, &wake, &ticker).unwrap().readable);
    }
}
