//! The `packet_ring` receive path: a TPACKET_V2 receive ring per worker on an `AF_PACKET`
//! socket, joined into a fanout group that spreads flows as the workers' UDP sockets are
//! spread ([`spread_program`]), with a classic BPF filter that lets only GENEVE to the tapped
//! addresses and the listen port in; the same program, as a tc ingress classifier, drops those
//! packets after the tap (`net/ingress.rs`).
//! Must not depend on: the pipeline, policy, labels, the data plane, tokio.
//!
//! Why a ring: on the sockets path each packet costs the kernel the IP and UDP receive code,
//! a socket queue and a `recvmmsg` copy. A packet tap sees the frame before all that; with a
//! mapped ring the kernel copies it once into memory the worker reads in place, and a busy
//! worker makes no system call to receive at all (it walks the ring while frames are ready).
//!
//! Why V2 and not V3: V3 packs packets into blocks and hands a block over when it is full or
//! its timer fires (at least 1 ms): at low load every packet would wait for the timer. V2
//! hands over each frame as soon as it is written, and while frames are ready reading them
//! costs no system call either, so V3 saves nothing at high load. V2's price is fixed-size
//! frames, and the ring takes only what fits a 2 KiB one ([`MAX_RING_FRAME`]: a GWLB packet
//! carrying a 1,500-byte inner packet, with room to spare). Longer packets (8,500-byte jumbo
//! GENEVE, and trains: a GSO packet handed over whole by a local sender on veth, or a NIC's
//! UDP GRO) the filter leaves to the kernel's UDP stack and the workers' UDP sockets, the
//! sockets path, spread over workers by the same [`spread_program`] as the ring's fanout, so
//! a flow's packets of any size meet one worker. Frames sized for 9,001-byte packets (10 KiB,
//! until 2026-12-07) made the ring 22 MiB per worker: every frame cold by the time the ring
//! came round to it again, and 8,500-byte packets cost 1.5x what the sockets path pays for
//! them (docs/performance.md). `PACKET_VNET_HDR` puts a virtio header before each frame:
//! the segment size of a small train that fits a frame, and whether the kernel left the UDP
//! checksum to offload.
//!
//! The mapping is shared with the kernel, which writes the frames it owns at any time: it is
//! reached through a raw pointer, each frame's status atomically (acquire to take a frame,
//! release to give it back), and a Rust slice exists only over a frame user space holds.
//! A worker sends replies from the frames it holds and from its own buffer (injected
//! rejects): [`RingPayloads`] finds both by offset, as one buffer does on the
//! sockets path.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

use super::sys::Payloads;

/// Bytes per frame: two to a page.
pub const FRAME_SIZE: usize = 2048;
/// What the kernel puts before the Ethernet header in a TPACKET_V2 frame with a virtio
/// header (`tpacket_rcv`): the frame header and a `sockaddr_ll` (52 bytes), aligned with
/// room for a 16-byte link header to 80, plus the 10-byte virtio header, less the 14-byte
/// Ethernet header it makes room for: 76.
const FRAME_HEADROOM: usize = 76;
/// Frames per ring block: 64 KiB blocks (the kernel allocates each as a power-of-two run of
/// pages; 64 KiB finds contiguous pages easily).
const FRAMES_PER_BLOCK: usize = 32;
/// Fewest frames per ring.
const MIN_FRAMES: usize = 64;
/// Bytes of `dataplane.receive_buffer` per frame: a ring holds a packet per frame whatever
/// its size, where a socket's buffer counts each packet's real size (1-2 KiB for a small
/// one); at a frame per 2 KiB the ring holds about the packets the same setting holds on the
/// sockets path (a shallower ring dropped bursts at 100k packets/s that the sockets
/// absorbed, docs/performance.md). 4,096 frames by default (8 MiB per worker).
const BUFFER_BYTES_PER_FRAME: usize = 2048;
/// `struct virtio_net_hdr` (without `num_buffers`).
const VNET_HEADER_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
const TPACKET_V2: libc::c_int = 1;
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;
/// The group's hook skips outgoing packets. Once a socket is in a fanout group the group's
/// hook replaces the socket's own, so `PACKET_IGNORE_OUTGOING` on the socket no longer
/// applies: without this flag every reply sent is cloned and run through the spread and the
/// filter only to be refused (`dev_queue_xmit_nit`, seen in profiles). Kernels older than
/// the flag refuse it: the group is then made without it and pays that, as it did before.
const PACKET_FANOUT_FLAG_IGNORE_OUTGOING: u32 = 0x4000;
/// A classic BPF program's "accept the whole packet".
const ACCEPT: u32 = 0x0004_0000;
/// tc's verdicts for a direct-action classifier: drop, or go on with the next filter.
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

/// The longest frame a ring takes, Ethernet header included: 1,972 bytes, an outer packet of
/// 1,958 (GWLB wraps a 1,500-byte inner packet in 1,568 with its options). Longer ones are
/// jumbo GENEVE and trains (a local sender's GSO packet on veth, or UDP GRO on a NIC, which
/// the kernel does for GENEVE because a socket with `UDP_GRO` listens on its port): they go
/// on to that socket, the sockets path, instead of being copied into the ring.
pub const MAX_RING_FRAME: usize = FRAME_SIZE - FRAME_HEADROOM;

/// The classic BPF program that matches GENEVE for this appliance: a frame to this host, at
/// most [`MAX_RING_FRAME`] bytes, IPv4, UDP, to one of `addresses` (any when empty), not a
/// later fragment, to `port`. Returns `matched` for it and `other` for everything else.
/// Offsets are from the Ethernet header, which both a packet socket filter and tc's `bpf`
/// classifier at ingress see first.
pub fn geneve_filter(
    addresses: &[Ipv4Addr],
    port: u16,
    matched: u32,
    other: u32,
) -> Vec<Instruction> {
    const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const LD_ABS_H: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LD_ABS_B: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const LD_IND_H: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
    const LDX_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const LD_LEN: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    /// What a jump does: leave for `other` when its test fails (`Miss`) or holds (`Hit`), or
    /// on a hit skip that many instructions (an address matched: past the other addresses).
    #[derive(Clone, Copy)]
    enum Jump {
        None,
        Miss,
        Hit,
        Skip(u8),
    }
    let pkttype = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;
    let mut program = vec![
        (LD_ABS_W, pkttype, Jump::None),
        (JEQ, libc::PACKET_HOST as u32, Jump::Miss),
        (LD_LEN, 0, Jump::None),
        (JGT, MAX_RING_FRAME as u32, Jump::Hit),
        (LD_ABS_H, 12, Jump::None),
        (JEQ, 0x0800, Jump::Miss),
        (LD_ABS_B, 14 + 9, Jump::None),
        (JEQ, 17, Jump::Miss),
    ];
    if let Some((last, others)) = addresses.split_last() {
        program.push((LD_ABS_W, 14 + 16, Jump::None));
        for (i, address) in others.iter().enumerate() {
            program.push((JEQ, u32::from(*address), Jump::Skip((others.len() - i) as u8)));
        }
        program.push((JEQ, u32::from(*last), Jump::Miss));
    }
    program.extend([
        (LD_ABS_H, 14 + 6, Jump::None),
        (JSET, 0x1fff, Jump::Hit), // a fragment offset: no UDP header here
        (LDX_MSH, 14, Jump::None), // X = the IPv4 header's length
        (LD_IND_H, 14 + 2, Jump::None),
        (JEQ, u32::from(port), Jump::Miss),
        (RET, matched, Jump::None),
        (RET, other, Jump::None),
    ]);
    assert!(program.len() <= 256, "too many addresses for a jump to reach `other`");
    let last = program.len() - 1;
    program
        .iter()
        .enumerate()
        .map(|(i, &(code, k, jump))| {
            // Jumps count the instructions between them and their target; `other` is last
            // (the two returns, which do not jump, are past it or it).
            let to_other = last.saturating_sub(i + 1) as u8;
            let (jt, jf) = match jump {
                Jump::None => (0, 0),
                Jump::Miss => (0, to_other),
                Jump::Hit => (to_other, 0),
                Jump::Skip(n) => (n, 0),
            };
            Instruction { code, jt, jf, k }
        })
        .collect()
}

/// The classic BPF program that picks a flow's worker, the same on both receive paths: the
/// ring's fanout (`PACKET_FANOUT_CBPF`) and the UDP sockets' `SO_REUSEPORT` group
/// (`SO_ATTACH_REUSEPORT_CBPF`), so that a flow's single packets (ring) and its trains
/// (socket) meet the same flow table: a flow judged on one worker and picked up mid-flow on
/// another would be judged twice, and a flow waiting for its server name would be judged
/// with none by the other. The outer source address XOR the outer source port (GWLB gives
/// each flow its own) modulo `workers`, read relative to the network header (`SKF_NET_OFF`),
/// where both hooks find the same bytes; a 20-byte IPv4 header is assumed (GWLB sends no
/// options; were there any, both would still read the same bytes).
pub fn spread_program(workers: usize) -> Vec<Instruction> {
    const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const LD_ABS_H: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
    const XOR_X: u16 = (libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X) as u16;
    const MOD_K: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
    const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
    let net = libc::SKF_NET_OFF as u32;
    [
        (LD_ABS_W, net.wrapping_add(12)), // source address
        (TAX, 0),
        (LD_ABS_H, net.wrapping_add(20)), // UDP source port
        (XOR_X, 0),
        (MOD_K, workers.max(1) as u32),
        (RET_A, 0),
    ]
    .map(|(code, k)| Instruction { code, jt: 0, jf: 0, k })
    .to_vec()
}

/// A program as the kernel's `struct sock_fprog` points to it.
pub fn sock_filters(program: &[Instruction]) -> Vec<SockFilter> {
    program.iter().map(|i| SockFilter::new(i.code, i.jt, i.jf, i.k)).collect()
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// The program as `tc filter ... bpf bytecode` reads it: `count,code jt jf k,...`.
pub fn bytecode_text(program: &[Instruction]) -> String {
    let mut text = program.len().to_string();
    for i in program {
        text += &format!(",{} {} {} {}", i.code, i.jt, i.jf, i.k);
    }
    text
}

/// One ready frame of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxFrame {
    /// Where the Ethernet frame starts in the ring ([`RxRing::bytes`] reads it while it is
    /// held), and its length there.
    pub offset: usize,
    pub len: usize,
    /// The packet's length on the wire (more than `len` when it was cut).
    pub wire_len: usize,
    /// The kernel or the NIC verified the UDP checksum, or a local sender left it to offload.
    pub checksum_known: bool,
    /// A train's datagram size (a GSO packet from a local sender, or UDP GRO), else 0.
    pub segment: usize,
}

/// What the ring's socket counted since the last [`RxRing::take_drops`] (`struct
/// tpacket_stats`).
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
struct Stats {
    /// Packets the socket received (unused: the worker counts what it reads).
    _packets: u32,
    drops: u32,
}

/// A TPACKET_V2 receive ring on one interface.
///
/// The mapping is shared with the kernel, which writes any frame whose status is
/// `TP_STATUS_KERNEL` at any time, so it is never behind a Rust reference as a whole: frame
/// statuses are read and written atomically through raw pointers, and a slice is made only
/// over a frame the kernel has handed over ([`RxRing::frame`]) until it goes back
/// ([`RxRing::release`], which needs `&mut self`, so no slice outlives the hand-back).
#[derive(Debug)]
pub struct RxRing {
    socket: Socket,
    ring: *mut u8,
    ring_len: usize,
    frames: usize,
    /// The next frame to look at.
    head: usize,
    /// Frames from the head the kernel has handed over (status seen `TP_STATUS_USER` with
    /// acquire ordering) and not yet released: the only ones [`RxRing::bytes`] reads.
    held: Cell<usize>,
}

// SAFETY: the mapping is owned by this value alone (the kernel writes only frames it owns);
// it moves to its worker thread once. (`Cell` keeps it from being shared between threads.)
unsafe impl Send for RxRing {}

impl RxRing {
    /// Opens the socket on `tap`'s interface with a frame per [`BUFFER_BYTES_PER_FRAME`] of
    /// `receive_buffer` (`dataplane.receive_buffer`), filtered to GENEVE
    /// to `tap`'s addresses and `port`, and joins fanout group `fanout` (`None`: makes a new group of
    /// `workers` members spread by [`spread_program`]; [`RxRing::fanout_group`] tells its id
    /// to the next ones, which must join in worker order).
    pub fn open(
        tap: &TapPoint,
        port: u16,
        receive_buffer: usize,
        fanout: Option<u16>,
        workers: usize,
    ) -> io::Result<RxRing> {
        // Protocol 0: nothing reaches the socket before the filter and the ring are in place.
        let socket = Socket::new(Domain::PACKET, Type::RAW.cloexec(), Some(Protocol::from(0)))?;
        set(&socket, libc::PACKET_VNET_HDR, &1i32)?;
        set(&socket, libc::PACKET_VERSION, &TPACKET_V2)?;
        // Outgoing packets (our replies) are not for this tap.
        set(&socket, libc::PACKET_IGNORE_OUTGOING, &1i32)?;
        socket.attach_filter(&sock_filters(&geneve_filter(&tap.addresses, port, ACCEPT, 0)))?;
        let wanted = (receive_buffer / BUFFER_BYTES_PER_FRAME).max(MIN_FRAMES);
        let blocks = wanted.div_ceil(FRAMES_PER_BLOCK);
        let frames = blocks * FRAMES_PER_BLOCK;
        let request = libc::tpacket_req {
            tp_block_size: (FRAME_SIZE * FRAMES_PER_BLOCK) as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: FRAME_SIZE as u32,
            tp_frame_nr: frames as u32,
        };
        set(&socket, libc::PACKET_RX_RING, &request)?;
        let ring_len = frames * FRAME_SIZE;
        let ring = map(&socket, ring_len)?;
        let ring = RxRing { socket, ring, ring_len, frames, head: 0, held: Cell::new(0) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        address.sll_ifindex = tap.index as i32;
        // SAFETY: bind reads one sockaddr_ll of the given length.
        let rc = unsafe {
            libc::bind(
                ring.socket.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let group = match fanout {
            None => PACKET_FANOUT_FLAG_UNIQUEID << 16,
            Some(id) => u32::from(id),
        };
        let mode = libc::PACKET_FANOUT_CBPF;
        let ignore_outgoing = PACKET_FANOUT_FLAG_IGNORE_OUTGOING << 16;
        if set(&ring.socket, libc::PACKET_FANOUT, &(group | ignore_outgoing | (mode << 16)))
            .is_err()
        {
            set(&ring.socket, libc::PACKET_FANOUT, &(group | (mode << 16)))?;
        }
        if fanout.is_none() {
            // The group's program, set once by its first member ([`spread_program`]).
            let program = sock_filters(&spread_program(workers));
            let fprog = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            set(&ring.socket, libc::PACKET_FANOUT_DATA, &fprog)?;
        }
        Ok(ring)
    }

    /// The fanout group this socket is in (for the next workers' sockets to join).
    pub fn fanout_group(&self) -> io::Result<u16> {
        Ok(get::<u32>(&self.socket, libc::PACKET_FANOUT)? as u16)
    }

    /// Whether the group's hook skips outgoing packets ([`PACKET_FANOUT_FLAG_IGNORE_OUTGOING`];
    /// the kernel reports the group's flags in the option's top byte).
    pub fn ignores_outgoing(&self) -> io::Result<bool> {
        let flags = get::<u32>(&self.socket, libc::PACKET_FANOUT)? >> 24;
        Ok(flags & (PACKET_FANOUT_FLAG_IGNORE_OUTGOING >> 8) != 0)
    }

    pub fn fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    /// Bytes of the ring: offsets of frames in it are below this.
    pub fn ring_len(&self) -> usize {
        self.ring_len
    }

    /// The `n`th frame after the head if the kernel has handed it over, and every frame
    /// before it too (they are handed over in order); from then on it is held until released.
    pub fn frame(&self, n: usize) -> Option<RxFrame> {
        if n >= self.frames {
            return None;
        }
        for k in self.held.get()..=n {
            let status = self.status(self.frame_at(k)).load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                return None;
            }
            self.held.set(k + 1);
        }
        let at = self.frame_at(n);
        let frame = self.bytes(at, FRAME_SIZE);
        // A held frame's header is ours to read like the rest of it.
        let word = |at: usize| {
            u32::from_ne_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
        };
        let (status, wire_len, snap_len) = (word(0), word(TP_LEN), word(TP_SNAPLEN));
        let mac = u16::from_ne_bytes([frame[TP_MAC], frame[TP_MAC + 1]]);
        // The kernel puts the Ethernet header after its own headers and the virtio header;
        // clamped so that a bad offset can only make a bad frame, never a read outside it.
        let mac = (mac as usize).clamp(VNET_HEADER_LEN, FRAME_SIZE);
        let len = (snap_len as usize).min(FRAME_SIZE - mac);
        // The virtio header sits just before the Ethernet header.
        let (checksum_known, segment) = read_vnet(&frame[mac - VNET_HEADER_LEN..mac]);
        Some(RxFrame {
            offset: at + mac,
            len,
            wire_len: wire_len as usize,
            checksum_known: checksum_known
                || status & (libc::TP_STATUS_CSUM_VALID | libc::TP_STATUS_CSUMNOTREADY) != 0,
            segment,
        })
    }

    /// The `len` bytes at `offset` in the ring, which must lie in one frame this ring holds
    /// (returned by [`RxRing::frame`] and not released yet); panics otherwise.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let index = offset / FRAME_SIZE;
        // How far the frame is after the head, going round the ring.
        let after_head =
            if index >= self.head { index - self.head } else { index + self.frames - self.head };
        let held = index < self.frames
            && after_head < self.held.get()
            && offset.checked_add(len).is_some_and(|end| end <= (index + 1) * FRAME_SIZE);
        assert!(held, "{len} bytes at {offset} are not in a frame the ring holds");
        // SAFETY: the bytes are inside the mapping, in one frame the kernel handed over (its
        // status was read as TP_STATUS_USER with acquire ordering, so its writes to the frame
        // happened before) and will not write again until `release` gives it back; `release`
        // takes `&mut self`, so this shared borrow ends first.
        unsafe { std::slice::from_raw_parts(self.ring.add(offset), len) }
    }

    /// Hands the first `count` frames after the head back to the kernel and moves the head.
    pub fn release(&mut self, count: usize) {
        assert!(count <= self.held.get(), "releasing frames the ring does not hold");
        for n in 0..count {
            self.status(self.frame_at(n)).store(libc::TP_STATUS_KERNEL, Ordering::Release);
        }
        self.head = (self.head + count) % self.frames;
        self.held.set(self.held.get() - count);
    }

    /// Packets the kernel dropped since the last call because the ring was full. A system
    /// call: call it rarely.
    pub fn take_drops(&self) -> io::Result<u64> {
        // Reading PACKET_STATISTICS resets it.
        Ok(u64::from(get::<Stats>(&self.socket, libc::PACKET_STATISTICS)?.drops))
    }

    /// Where the `n`th frame after the head starts.
    fn frame_at(&self, n: usize) -> usize {
        ((self.head + n) % self.frames) * FRAME_SIZE
    }

    fn status(&self, frame_at: usize) -> &AtomicU32 {
        // SAFETY: tp_status is the first u32 of every frame header, inside the mapping and
        // 4-aligned (frames are FRAME_SIZE apart in a page-aligned mapping); the kernel and we
        // share it only through atomic accesses, and no slice covers a frame the kernel owns.
        unsafe { AtomicU32::from_ptr(self.ring.add(frame_at).cast::<u32>()) }
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the ring `map` made; nothing refers to it any more.
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
    }
}

/// What a ring worker sends from, by offset: the frames its ring holds below
/// [`RxRing::ring_len`], its own buffer (`room`: injected rejects) after.
#[derive(Debug, Clone, Copy)]
pub struct RingPayloads<'a> {
    pub ring: &'a RxRing,
    pub room: &'a [u8],
}

impl<'a> RingPayloads<'a> {
    /// The `len` bytes at `offset`; panics when they are not in a held frame or the room.
    pub fn get(&self, offset: usize, len: usize) -> &'a [u8] {
        match offset.checked_sub(self.ring.ring_len) {
            None => self.ring.bytes(offset, len),
            Some(at) => &self.room[at..at + len],
        }
    }
}

impl Payloads for RingPayloads<'_> {
    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        self.get(offset, len)
    }
}

/// Offsets of `struct tpacket2_hdr`'s fields after `tp_status` (host byte order).
const TP_LEN: usize = 4;
const TP_SNAPLEN: usize = 8;
const TP_MAC: usize = 12;

/// (checksum known, segment size) from a virtio header.
fn read_vnet(vnet: &[u8]) -> (bool, usize) {
    let flags = vnet[0];
    let known = flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) != 0;
    let segment = if vnet[1] & 0x7f == VIRTIO_NET_HDR_GSO_UDP_L4 {
        usize::from(u16::from_le_bytes([vnet[4], vnet[5]]))
    } else {
        0
    };
    (known, segment)
}

/// Maps the socket's ring.
fn map(socket: &Socket, ring_len: usize) -> io::Result<*mut u8> {
    // SAFETY: a new shared mapping of the socket's ring; no existing memory is touched.
    let ring = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ring_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            socket.as_raw_fd(),
            0,
        )
    };
    if ring == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ring.cast())
}

/// Reads a SOL_PACKET option: `T` must be the plain C struct or integer the kernel writes.
fn get<T: Default>(socket: &Socket, name: libc::c_int) -> io::Result<T> {
    let mut value = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`; the callers' `T` (u32,
    // `Stats`: two u32 like tpacket_stats) are valid for any bytes it writes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if rc == 0 { Ok(value) } else { Err(io::Error::last_os_error()) }
}

/// Sets a SOL_PACKET option to `value`.
fn set<T>(socket: &Socket, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: setsockopt reads size_of::<T>() bytes from `value`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Where the rings tap: a link and the addresses on it whose GENEVE they take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPoint {
    pub index: u32,
    pub name: String,
    pub addresses: Vec<Ipv4Addr>,
}

/// Most addresses one tap takes GENEVE for (each is an instruction in the filter).
const MAX_TAP_ADDRESSES: usize = 64;

/// The link the rings tap for `listen` (`dataplane.listen`'s address): the one that has that
/// address; for 0.0.0.0 the only link with IPv4 addresses or, when there are several, the
/// one with the IPv4 default route (GWLB's GENEVE comes in on the appliance's primary ENI),
/// taking GENEVE to every IPv4 address on it. GENEVE to the other links' addresses still
/// reaches the UDP sockets bound to 0.0.0.0. Why there is none, as a sentence.
pub fn tap_point(listen: Ipv4Addr) -> Result<TapPoint, String> {
    let addresses = ipv4_addresses()
        .map_err(|error| format!("cannot list the interfaces' addresses: {error}"))?;
    if !listen.is_unspecified() {
        let Some(found) = addresses.iter().find(|a| a.address == listen) else {
            return Err(format!("no interface has the listen address {listen}"));
        };
        if found.loopback {
            return Err(format!(
                "{listen} is on {}, a loopback interface (packet rings need a link)",
                found.name
            ));
        }
        return Ok(TapPoint {
            index: found.index,
            name: found.name.clone(),
            addresses: vec![listen],
        });
    }
    let mut links: Vec<&InterfaceAddress> = Vec::new();
    for address in addresses.iter().filter(|a| !a.loopback) {
        if !links.iter().any(|l| l.index == address.index) {
            links.push(address);
        }
    }
    let chosen = match links.as_slice() {
        [] => return Err("dataplane.listen is 0.0.0.0 and no link has an IPv4 address".into()),
        [only] => *only,
        several => {
            let routes = std::fs::read_to_string("/proc/self/net/route").unwrap_or_default();
            let default = default_route_interface(&routes);
            match several.iter().find(|l| Some(l.name.as_str()) == default.as_deref()) {
                Some(link) => *link,
                None => {
                    let names: Vec<&str> = several.iter().map(|l| l.name.as_str()).collect();
                    return Err(format!(
                        "dataplane.listen is 0.0.0.0 and several links have IPv4 addresses \
                         ({}), none with the default route: listen on the address GWLB sends \
                         to",
                        names.join(", ")
                    ));
                }
            }
        }
    };
    let on_link: Vec<Ipv4Addr> =
        addresses.iter().filter(|a| a.index == chosen.index).map(|a| a.address).collect();
    if on_link.len() > MAX_TAP_ADDRESSES {
        return Err(format!(
            "dataplane.listen is 0.0.0.0 and {} has {} IPv4 addresses (at most \
             {MAX_TAP_ADDRESSES}): listen on the address GWLB sends to",
            chosen.name,
            on_link.len()
        ));
    }
    Ok(TapPoint { index: chosen.index, name: chosen.name.clone(), addresses: on_link })
}

/// The interface of the IPv4 default route with the lowest metric in `/proc/net/route`'s
/// text (columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; hexadecimal).
fn default_route_interface(routes: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| fields.get(i).and_then(|f| u32::from_str_radix(f, 16).ok());
            let metric: u32 = fields.get(6)?.parse().ok()?;
            let default = hex(1)? == 0 && hex(7)? == 0 && hex(3)? & RTF_UP != 0;
            default.then(|| (metric, fields[0].to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

/// An IPv4 address of an interface, as `getifaddrs` lists it.
#[derive(Debug)]
struct InterfaceAddress {
    index: u32,
    name: String,
    loopback: bool,
    address: Ipv4Addr,
}

/// Every interface that has `ip` (any IPv4 address when `ip` is unspecified), each once, as
/// (index, name, loopback).
pub fn interfaces_with(ip: Ipv4Addr) -> io::Result<Vec<(u32, String, bool)>> {
    let mut found: Vec<(u32, String, bool)> = Vec::new();
    for entry in ipv4_addresses()? {
        if (ip.is_unspecified() || entry.address == ip)
            && !found.iter().any(|(i, _, _)| *i == entry.index)
        {
            found.push((entry.index, entry.name, entry.loopback));
        }
    }
    Ok(found)
}

fn ipv4_addresses() -> io::Result<Vec<InterfaceAddress>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: a node of the list getifaddrs made, alive until freeifaddrs.
        let node = unsafe { &*entry };
        entry = node.ifa_next;
        if node.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says its type.
        let family = unsafe { (*node.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let address = unsafe { &*node.ifa_addr.cast::<libc::sockaddr_in>() };
        let address = Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr));
        // SAFETY: ifa_name is a NUL-terminated string of the node.
        let name = unsafe { std::ffi::CStr::from_ptr(node.ifa_name) };
        // SAFETY: as above.
        let index = unsafe { libc::if_nametoindex(node.ifa_name) };
        found.push(InterfaceAddress {
            index,
            name: name.to_string_lossy().into_owned(),
            loopback: node.ifa_flags & libc::IFF_LOOPBACK as u32 != 0,
            address,
        });
    }
    // SAFETY: the list getifaddrs made, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF program over `packet` the way the kernel does for these opcodes,
    /// with `pkttype` as the packet's type.
    fn run(program: &[Instruction], packet: &[u8], pkttype: u32) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let be = |at: usize, n: usize| {
            packet[at..at + n].iter().fold(0u32, |v, b| v << 8 | u32::from(*b))
        };
        loop {
            let i = program[pc];
            pc += 1;
            let class = u32::from(i.code) & 0x07;
            let code = u32::from(i.code);
            match class {
                0x06 if code & 0x18 == 0x10 => return a, // ret A
                0x06 => return i.k,                      // ret K
                0x00 if i.k == (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32 => a = pkttype,
                0x00 if code & 0xe0 == 0x80 => a = packet.len() as u32, // ld len
                0x00 => {
                    let size = match code & 0x18 {
                        0x00 => 4,
                        0x08 => 2,
                        _ => 1,
                    };
                    let at = if code & 0xe0 == 0x40 { x + i.k } else { i.k };
                    // SKF_NET_OFF + n: n bytes into the network header (after Ethernet's 14).
                    let net = libc::SKF_NET_OFF as u32;
                    let at = if at >= net { at - net + 14 } else { at };
                    a = be(at as usize, size);
                }
                0x01 => x = 4 * (u32::from(packet[i.k as usize]) & 0xf),
                0x04 => match code & 0xf8 {
                    0xa8 => a ^= x,   // xor X
                    0x90 => a %= i.k, // mod K
                    other => panic!("alu {other:#x}"),
                },
                0x07 => x = a, // tax
                0x05 => {
                    let taken = match code & 0xf0 {
                        0x10 => a == i.k,
                        0x20 => a > i.k,
                        0x40 => a & i.k != 0,
                        other => panic!("jump {other:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                other => panic!("class {other}"),
            }
        }
    }

    fn frame(dst: [u8; 4], proto: u8, flags_offset: u16, dport: u16) -> Vec<u8> {
        let mut frame = vec![0u8; 14 + 20 + 8];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[14 + 6..14 + 8].copy_from_slice(&flags_offset.to_be_bytes());
        frame[14 + 9] = proto;
        frame[14 + 16..14 + 20].copy_from_slice(&dst);
        frame[14 + 22..14 + 24].copy_from_slice(&dport.to_be_bytes());
        frame
    }

    #[test]
    fn the_filter_matches_geneve_to_the_listen_address_only() {
        let ip = Ipv4Addr::new(10, 77, 0, 1);
        let program = geneve_filter(&[ip], 6081, 1, 0);
        let host = libc::PACKET_HOST as u32;
        assert_eq!(run(&program, &frame([10, 77, 0, 1], 17, 0x4000, 6081), host), 1);
        assert_eq!(
            run(&program, &frame([10, 77, 0, 1], 17, 0x2000, 6081), host),
            1,
            "first fragment: counted in user space"
        );
        for (packet, why) in [
            (frame([10, 77, 0, 2], 17, 0, 6081), "another address"),
            (frame([10, 77, 0, 1], 6, 0, 6081), "TCP"),
            (frame([10, 77, 0, 1], 17, 0, 6082), "another port"),
            (frame([10, 77, 0, 1], 17, 0x0010, 6081), "a later fragment"),
        ] {
            assert_eq!(run(&program, &packet, host), 0, "{why}");
        }
        assert_eq!(run(&program, &frame([10, 77, 0, 1], 17, 0, 6081), 3), 0, "not for this host");
        let mut ipv6 = frame([10, 77, 0, 1], 17, 0, 6081);
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(run(&program, &ipv6, host), 0);
        // IPv4 options move the UDP header.
        let mut options = frame([10, 77, 0, 1], 17, 0, 6081);
        options[14] = 0x46;
        options.splice(34..34, [1, 1, 1, 0]);
        assert_eq!(run(&program, &options, host), 1);
        // No address: any address.
        let any = geneve_filter(&[], 6081, 1, 0);
        assert_eq!(run(&any, &frame([10, 77, 0, 2], 17, 0, 6081), host), 1);
        // Several (listening on 0.0.0.0: every address of the tapped link), and only them.
        let several = [ip, Ipv4Addr::new(10, 77, 0, 5), Ipv4Addr::new(192, 168, 9, 1)];
        let program_of_several = geneve_filter(&several, 6081, 1, 0);
        for (dst, expected) in
            [([10, 77, 0, 1], 1), ([10, 77, 0, 5], 1), ([192, 168, 9, 1], 1), ([10, 77, 0, 2], 0)]
        {
            assert_eq!(run(&program_of_several, &frame(dst, 17, 0, 6081), host), expected);
            assert_eq!(run(&program_of_several, &frame(dst, 17, 0, 6082), host), 0, "port");
            assert_eq!(run(&program_of_several, &frame(dst, 17, 0x0010, 6081), host), 0);
        }
        // A frame longer than the ring takes (a train) goes on to the socket.
        let mut longest = frame([10, 77, 0, 1], 17, 0, 6081);
        longest.resize(MAX_RING_FRAME, 0);
        assert_eq!(run(&program, &longest, host), 1);
        longest.push(0);
        assert_eq!(run(&program, &longest, host), 0, "a train");
    }

    #[test]
    fn a_flows_packets_go_to_one_worker_whatever_their_size_and_flows_spread() {
        let program = spread_program(4);
        let with_port = |sport: u16, len: usize| {
            let mut f = frame([10, 77, 0, 1], 17, 0, 6081);
            f[14 + 12..14 + 16].copy_from_slice(&[10, 2, 0, 9]);
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f.resize(len, 0);
            f
        };
        let mut seen = [false; 4];
        for sport in 20_000..20_064 {
            let worker = run(&program, &with_port(sport, 200), 0);
            assert!(worker < 4);
            assert_eq!(run(&program, &with_port(sport, 64_000), 0), worker, "its train too");
            seen[worker as usize] = true;
        }
        assert_eq!(seen, [true; 4], "64 flows reach every worker");
        // The value itself: (source address ^ source port) % workers.
        let expected = (u32::from_be_bytes([10, 2, 0, 9]) ^ 20_001) % 4;
        assert_eq!(run(&program, &with_port(20_001, 100), 0), expected);
    }

    /// A ring on loopback and one UDP datagram to it: its frame is readable only from when the
    /// ring has seen it handed over until it is released.
    #[test]
    fn only_frames_the_ring_holds_can_be_read() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        let Some(mut ring) = loopback_ring(port, 1) else { return };
        let read = |ring: &RxRing, offset: usize, len: usize| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ring.bytes(offset, len).len()))
                .is_ok()
        };
        assert!(ring.frame(0).is_none());
        assert!(!read(&ring, 0, 1), "a frame the kernel owns");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"geneve?", ("127.0.0.1", port)).unwrap();
        let frame = first_frame(&ring);
        let bytes = ring.bytes(frame.offset, frame.len);
        assert_eq!(&bytes[bytes.len() - 7..], b"geneve?");
        assert!(read(&ring, 0, FRAME_SIZE));
        assert!(!read(&ring, 0, FRAME_SIZE + 1), "into the next frame, still the kernel's");
        assert!(!read(&ring, FRAME_SIZE, 1), "the next frame");
        ring.release(1);
        assert!(!read(&ring, frame.offset, 1), "released");
        assert!(ring.frame(0).is_none());
    }

    /// The longest packet the filter lets in fits its frame whole (the kernel would cut a
    /// longer one: [`FRAME_HEADROOM`] must be what `tpacket_rcv` puts first); one byte more
    /// passes the ring by, to the socket.
    #[test]
    fn the_longest_packet_the_ring_takes_fits_a_frame_whole() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        let Some(ring) = loopback_ring(port, 1) else { return };
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let longest = vec![7u8; MAX_RING_FRAME - 14 - 20 - 8];
        sender.send_to(&longest, ("127.0.0.1", port)).unwrap();
        let frame = first_frame(&ring);
        assert_eq!((frame.len, frame.wire_len), (MAX_RING_FRAME, MAX_RING_FRAME));
        assert_eq!(ring.bytes(frame.offset, frame.len)[42..], longest[..]);
        receiver.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buffer = vec![0u8; 4096];
        let _ = receiver.recv(&mut buffer).unwrap(); // the kernel delivers it too (no tc rule)
        sender.send_to(&[7u8; MAX_RING_FRAME - 14 - 20 - 8 + 1], ("127.0.0.1", port)).unwrap();
        assert_eq!(receiver.recv(&mut buffer).unwrap(), MAX_RING_FRAME - 14 - 20 - 8 + 1);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(ring.frame(1).is_none(), "a packet longer than a frame went into the ring");
    }

    /// The group made by the first ring skips outgoing packets, and a ring that joins it
    /// is in that same group (which a flag the joiner disagreed on would refuse).
    #[test]
    fn a_fanout_group_ignores_outgoing_packets_for_all_its_members() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        let Some(first) = loopback_ring(port, 2) else { return };
        let group = first.fanout_group().unwrap();
        let second = RxRing::open(&loopback_tap(), port, 0, Some(group), 2).unwrap();
        assert_eq!(second.fanout_group().unwrap(), group);
        assert!(first.ignores_outgoing().unwrap() && second.ignores_outgoing().unwrap());
    }

    /// Loopback (index 1), which [`tap_point`] refuses but a test may tap.
    fn loopback_tap() -> TapPoint {
        TapPoint { index: 1, name: "lo".into(), addresses: vec![Ipv4Addr::LOCALHOST] }
    }

    /// The ring's first frame, once the kernel has handed it over (5 s at most).
    fn first_frame(ring: &RxRing) -> RxFrame {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(frame) = ring.frame(0) {
                return frame;
            }
            assert!(std::time::Instant::now() < deadline, "no frame");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// A ring on loopback for `port`, first of a new group of `workers`; `None` (the test
    /// skipped) without CAP_NET_RAW.
    fn loopback_ring(port: u16, workers: usize) -> Option<RxRing> {
        match RxRing::open(&loopback_tap(), port, 0, None, workers) {
            Ok(ring) => Some(ring),
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                eprintln!("skipped: packet sockets need CAP_NET_RAW");
                None
            }
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn the_default_route_s_interface_is_the_one_with_the_lowest_metric() {
        let header =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let table = format!(
            "{header}\
             ens6\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
             ens5\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             ens7\t00000000\t0100000A\t0002\t0\t0\t1\t00000000\t0\t0\t0\n\
             ens8\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        );
        // ens7's route is down, ens8's is not a default route.
        assert_eq!(default_route_interface(&table).as_deref(), Some("ens5"));
        assert_eq!(default_route_interface(header), None);
        assert_eq!(default_route_interface(""), None);
    }

    #[test]
    fn bytecode_text_is_what_tc_reads() {
        let program =
            geneve_filter(&[Ipv4Addr::new(10, 0, 0, 1)], 6081, TC_ACT_SHOT, TC_ACT_UNSPEC);
        let text = bytecode_text(&program);
        assert!(text.starts_with(&format!("{},32 0 0 4294963204,21 0 ", program.len())), "{text}");
        assert!(text.ends_with(",6 0 0 2,6 0 0 4294967295"), "{text}");
    }
}
