//! One data-plane worker: a loop of batched receive, decide, batched send.
//! Must not depend on: tokio, kube, the control plane, the tools.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSockRef, UdpSocketState};

use super::send::{Run, RunBuilder, SendSockets};
use super::stats::{Counters, Fallback, SendPath};
use super::{ControlLinks, DataplaneSettings, WorkerStatus};
use crate::flowlog::FlowLogSender;
use crate::net::nexthop::SingleSender;
use crate::net::ring::{RingPayloads, RxFrame, RxRing};
use crate::net::sys::{
    GsoSocket, MAX_GSO_SEGMENTS, Payloads, SendReport, Ticker, TxItem, Wake,
    skip_unused_control_messages, wait_readable_or_woken,
};
use crate::pipeline::{MAX_GENEVE_DATAGRAM, Outcome, Pipeline};
use crate::policy::Action;
use crate::reject::MAX_REJECT_LEN;
use crate::wire::DropReason;
use crate::wire::outer::{self, OUTER_HEADER_LEN, OuterAddressing};

/// One receive slot holds a whole GRO train (the kernel caps those at 64 KiB).
const SLOT_SIZE: usize = 64 * 1024;
/// Distance between slot starts: 17 cache lines more than a slot, so that the slots' first
/// bytes (all a single datagram fills) fall into different cache sets. At a 64 KiB stride
/// they would all map to the same few sets of L1 and L2 and evict each other.
const SLOT_STRIDE: usize = SLOT_SIZE + 17 * 64;
/// At most 64 datagrams per GRO train (UDP_GRO_CNT_MAX).
const MAX_SEGMENTS_PER_SLOT: usize = 64;
/// The receive region of a worker's buffer.
const RX_REGION: usize = SLOT_STRIDE * BATCH_SIZE;
/// Room for one slot's injected packets: a reject per datagram, and datagrams that verdicts on
/// pending flows release (taken while a reject per datagram still fits after them; the rest
/// wait in the pipeline for the next datagram or batch).
const SLOT_INJECT: usize = MAX_SEGMENTS_PER_SLOT * MAX_REJECT_LEN + 64 * 1024;
/// Room after it for injected packets: two slots' worth, flushed when less than one is left.
const INJECT_REGION: usize = 2 * SLOT_INJECT;
/// Most single packets one flush sends: every datagram of a batch and as many rejects.
pub(super) const MAX_SINGLES_PER_FLUSH: usize = BATCH_SIZE * MAX_SEGMENTS_PER_SLOT * 2;
/// Receive slots per call while trains arrive: 8 trains (up to 512 datagrams, 512 KiB) per
/// call keep what was received in the core's cache until it is sent; 32 slots of 64 KiB
/// would be 2 MiB, and the segmented sends would read it back from memory.
const TRAIN_BATCH: usize = 8;
/// Ring batches a busy ring worker takes between reads of its trains' socket (which a wait
/// also watches): trains wait at most this many batches behind single packets.
const TRAIN_CHECK_BATCHES: u32 = 8;
/// How often a ring worker asks the kernel how many packets its full ring dropped.
const RING_STATS_INTERVAL_MS: u64 = 1_000;
/// How often an idle worker's ticker wakes it while something waits for its clock (flows or
/// fragments to expire, a ring's drop count to read); otherwise it sleeps until a packet
/// arrives or the data plane stops.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// At most one log line per this interval for repeated errors.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Where a worker receives GENEVE (`dataplane.io`).
pub(super) enum Receiver {
    /// A `SO_REUSEPORT` UDP socket, read with `recvmmsg` (GRO trains whole).
    Socket(std::net::UdpSocket),
    /// A TPACKET ring in the workers' fanout group for single packets, and a UDP socket as
    /// above for trains (which pass the ring by: longer than a frame), spread alike.
    Ring(RxRing, std::net::UdpSocket),
}

/// What receiving from a UDP socket needs: quinn-udp's state for it (GRO), the receive slots
/// (then the inject region) and their metadata, and how many slots the next call asks for.
struct SocketReceive<'s> {
    socket: &'s std::net::UdpSocket,
    state: UdpSocketState,
    storage: Vec<u8>,
    metas: [RecvMeta; BATCH_SIZE],
    batch: usize,
}

impl<'s> SocketReceive<'s> {
    fn new(worker: usize, listen_ip: Ipv4Addr, socket: &'s std::net::UdpSocket) -> Option<Self> {
        let state = match UdpSocketState::new(UdpSockRef::from(socket)) {
            Ok(state) => state,
            Err(error) => {
                tracing::error!(worker, %error, "cannot configure the data-plane socket");
                return None;
            }
        };
        // The destination address of each datagram is needed only to answer from it when
        // listening on 0.0.0.0.
        if let Err(error) = skip_unused_control_messages(socket, listen_ip.is_unspecified()) {
            tracing::warn!(worker, %error, "cannot turn off unused control messages");
        }
        Some(SocketReceive {
            socket,
            state,
            storage: vec![0u8; RX_REGION + INJECT_REGION],
            metas: [RecvMeta::default(); BATCH_SIZE],
            batch: BATCH_SIZE,
        })
    }
}

/// The sockets a worker receives and sends through (opened before any worker starts).
pub(super) struct WorkerSockets {
    pub receive: Receiver,
    /// Single packets: the raw socket, and the packet socket when `dataplane.packet_socket`
    /// is on.
    pub single: SingleSender,
}

pub(super) struct Worker {
    index: usize,
    receiver: Option<Receiver>,
    /// Microseconds a ring worker spins on its ring before it sleeps (`dataplane.busy_poll`).
    busy_poll: u32,
    sender: SingleSender,
    /// Per-port UDP sockets for segmented sends of trains.
    sockets: SendSockets,
    /// False when the kernel has no UDP segmentation offload (or refused it): raw only.
    gso: bool,
    listen_ip: Ipv4Addr,
    reply_port: u16,
    pipeline: Pipeline,
    /// Where the pipeline's flow records go after each batch.
    flow_log: Option<FlowLogSender>,
    /// Networks GENEVE may come from (`dataplane.allowed_peers`); `None` = any.
    allowed_peers: Option<Box<[Ipv4Net]>>,
    status: Arc<WorkerStatus>,
    stop: Arc<AtomicBool>,
    /// What ends an idle wait besides a packet.
    waits: Waits,
    /// Where an idle worker copies a released datagram to send it.
    release: Vec<u8>,
}

/// What ends a worker's idle wait besides a packet: the data plane's stop (`wake`, woken
/// after `stop` is set) and the worker's own ticker, on while something waits for its clock.
pub(super) struct Waits {
    pub wake: Arc<Wake>,
    pub ticker: Ticker,
}

impl Worker {
    pub(super) fn new(
        index: usize,
        sockets: WorkerSockets,
        settings: &DataplaneSettings,
        links: &ControlLinks,
        status: Arc<WorkerStatus>,
        stop: Arc<AtomicBool>,
        waits: Waits,
    ) -> Self {
        Worker {
            index,
            receiver: Some(sockets.receive),
            busy_poll: settings.busy_poll,
            sender: sockets.single,
            sockets: SendSockets::new(settings.send_sockets),
            gso: settings.send_sockets > 0 && GsoSocket::supported(),
            listen_ip: *settings.listen.ip(),
            reply_port: settings.reply_port,
            pipeline: Pipeline::new(
                settings.mode,
                index,
                links.snapshots.clone(),
                settings.flows,
                links.flow_log.is_some(),
            ),
            flow_log: links.flow_log.clone(),
            allowed_peers: settings.allowed_peers.as_deref().map(Box::from),
            status,
            stop,
            waits,
            release: vec![0u8; MAX_GENEVE_DATAGRAM],
        }
    }

    pub(super) fn run(mut self) {
        let mut tx = SendQueue {
            singles: Vec::with_capacity(MAX_SINGLES_PER_FLUSH),
            runs: Vec::with_capacity(BATCH_SIZE * MAX_SEGMENTS_PER_SLOT),
            fallback: Vec::with_capacity(MAX_GSO_SEGMENTS),
            now_ms: 0,
        };
        let mut counters = Counters::default();
        let mut errors = RateLimitedLog::default();
        match self.receiver.take() {
            Some(Receiver::Socket(socket)) => {
                self.receive_socket(&socket, &mut tx, &mut counters, &mut errors)
            }
            Some(Receiver::Ring(mut ring, socket)) => {
                if let Some(mut trains) = SocketReceive::new(self.index, self.listen_ip, &socket) {
                    self.receive_ring(&mut ring, &mut trains, &mut tx, &mut counters, &mut errors)
                }
            }
            None => {}
        }
        let flow_log = &self.flow_log;
        self.pipeline.finish(|record| {
            if let Some(log) = flow_log {
                log.send(record);
            }
        });
        counters.set_flows(self.pipeline.flow_counts());
        self.status.counters.publish(&counters);
        self.status.running.store(false, Ordering::Release);
        tracing::debug!(worker = self.index, "worker stopped");
    }

    /// The sockets path: `recvmmsg` (GRO trains whole) until stopped.
    fn receive_socket(
        &mut self,
        socket: &std::net::UdpSocket,
        tx: &mut SendQueue,
        counters: &mut Counters,
        errors: &mut RateLimitedLog,
    ) {
        let Some(mut rx) = SocketReceive::new(self.index, self.listen_ip, socket) else { return };
        tracing::debug!(
            worker = self.index,
            gro_segments = rx.state.gro_segments(),
            "worker started"
        );
        let clock = Instant::now();
        self.status.running.store(true, Ordering::Release);
        while !self.stop.load(Ordering::Acquire) {
            if !self.socket_batch(&mut rx, clock, tx, counters, errors) {
                self.sleep(socket.as_raw_fd(), None, false, errors);
                self.idle(clock, counters);
            }
        }
    }

    /// One `recvmmsg` on `rx`'s socket and everything it received decided and sent; false
    /// when nothing was waiting.
    fn socket_batch(
        &mut self,
        rx: &mut SocketReceive<'_>,
        clock: Instant,
        tx: &mut SendQueue,
        counters: &mut Counters,
        errors: &mut RateLimitedLog,
    ) -> bool {
        let received = {
            let mut chunks = rx.storage[..RX_REGION].chunks_exact_mut(SLOT_STRIDE);
            let mut slots: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
                IoSliceMut::new(chunks.next().map_or(&mut [][..], |c| &mut c[..SLOT_SIZE]))
            });
            let socket = UdpSockRef::from(rx.socket);
            rx.state.recv(socket, &mut slots[..rx.batch], &mut rx.metas[..rx.batch])
        };
        let count = match received {
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => return true,
            Err(error) => {
                counters.receive_error();
                errors.log(self.index, "receive", &error);
                return true;
            }
        };
        counters.batch();
        let metas = &rx.metas;
        // Trains (several datagrams per slot on average): fewer, fuller slots per call.
        let datagrams: usize = metas[..count].iter().map(|m| m.len / m.stride.max(1)).sum();
        rx.batch = if datagrams >= 4 * count { TRAIN_BATCH } else { BATCH_SIZE };
        tx.now_ms = clock.elapsed().as_millis() as u64;
        self.pipeline.begin_batch(tx.now_ms);
        let storage = &mut rx.storage;
        let mut injected = 0;
        {
            let inject = &mut storage[RX_REGION..];
            let mut io = SlotIo { inject, inject_base: RX_REGION, injected: &mut injected, tx };
            take_releases(&mut self.pipeline, &mut io, None, counters);
        }
        for (slot, meta) in metas[..count].iter().enumerate() {
            if INJECT_REGION - injected < SLOT_INJECT {
                self.flush(tx, &storage[..], counters, errors);
                injected = 0;
            }
            let SocketAddr::V4(gwlb) = meta.addr else { continue };
            let appliance_ip = match meta.dst_ip {
                Some(IpAddr::V4(ip)) => ip,
                _ => self.listen_ip,
            };
            let stride = if meta.stride == 0 { meta.len.max(1) } else { meta.stride };
            let at = slot * SLOT_STRIDE;
            let (rx_region, inject) = storage.split_at_mut(RX_REGION);
            let mut slot_io =
                SlotIo { inject, inject_base: RX_REGION, injected: &mut injected, tx };
            let arrival = Arrival { at, stride, gwlb, appliance_ip };
            self.handle_datagrams(arrival, &rx_region[at..at + meta.len], &mut slot_io, counters);
        }
        self.flush(tx, &storage[..], counters, errors);
        self.end_batch(counters);
        true
    }

    /// The `packet_ring` path: frames read in place from the ring, handed back after their
    /// replies went out; `poll` only when the ring is empty (after `busy_poll` of spinning).
    /// Trains pass the ring by and arrive on `trains`' socket: it is read when a wait says
    /// it is readable, and every [`TRAIN_CHECK_BATCHES`] ring batches while the ring is busy.
    fn receive_ring(
        &mut self,
        ring: &mut RxRing,
        trains: &mut SocketReceive<'_>,
        tx: &mut SendQueue,
        counters: &mut Counters,
        errors: &mut RateLimitedLog,
    ) {
        // Offsets at and above the ring's length are in `room`: injected rejects.
        let inject_base = ring.ring_len();
        let mut room = vec![0u8; INJECT_REGION];
        let clock = Instant::now();
        let mut stats_at_ms = 0;
        // Packets came since the drop count was last read (a full ring drops only then).
        let mut drops_unread = false;
        let mut frames = [None::<RxFrame>; BATCH_SIZE];
        // Whether the trains' socket may have something, and ring batches since it was read.
        let (mut trains_ready, mut batches_unchecked) = (true, 0);
        tracing::debug!(worker = self.index, "worker started on a packet ring");
        self.status.running.store(true, Ordering::Release);
        while !self.stop.load(Ordering::Acquire) {
            let now_ms = clock.elapsed().as_millis() as u64;
            if now_ms >= stats_at_ms + RING_STATS_INTERVAL_MS {
                stats_at_ms = now_ms;
                drops_unread = false;
                match ring.take_drops() {
                    Ok(0) => {}
                    Ok(dropped) => {
                        counters.drop_many(DropReason::RingFull, dropped);
                        // Seen now, not after the next packet: an idle worker may sleep on.
                        self.status.counters.publish(counters);
                    }
                    Err(error) => errors.log(self.index, "ring statistics", &error),
                }
            }
            if trains_ready || batches_unchecked >= TRAIN_CHECK_BATCHES {
                batches_unchecked = 0;
                trains_ready = self.socket_batch(trains, clock, tx, counters, errors);
            }
            if ring.frame(0).is_none() {
                // Nothing on the ring: wait, unless trains may still be waiting.
                if !trains_ready && !self.spin(ring) {
                    let socket = trains.socket.as_raw_fd();
                    trains_ready = self.sleep(ring.fd(), Some(socket), drops_unread, errors);
                    if !trains_ready && ring.frame(0).is_none() {
                        self.idle(clock, counters);
                    }
                }
                continue;
            }
            batches_unchecked += 1;
            // The ready frames, up to a batch.
            let mut taken = 0;
            while taken < BATCH_SIZE {
                let Some(frame) = ring.frame(taken) else { break };
                frames[taken] = Some(frame);
                taken += 1;
            }
            drops_unread = true;
            counters.batch();
            tx.now_ms = now_ms;
            self.pipeline.begin_batch(now_ms);
            let mut injected = 0;
            {
                let inject = &mut room[..];
                let mut io = SlotIo { inject, inject_base, injected: &mut injected, tx };
                take_releases(&mut self.pipeline, &mut io, None, counters);
            }
            for frame in frames[..taken].iter().flatten() {
                if INJECT_REGION - injected < SLOT_INJECT {
                    self.flush(tx, &RingPayloads { ring, room: &room }, counters, errors);
                    injected = 0;
                }
                if frame.len < frame.wire_len {
                    // Cut to the frame (the filter lets no longer packet in: not expected).
                    counters.received(frame.wire_len);
                    counters.drop(DropReason::RingFull);
                    continue;
                }
                let (bytes, inject) = (ring.bytes(frame.offset, frame.len), &mut room[..]);
                let outer = match outer::parse_frame(bytes, frame.checksum_known) {
                    Ok(outer) => outer,
                    Err(reason) => {
                        counters.received(frame.len);
                        counters.drop(reason);
                        continue;
                    }
                };
                let data = &bytes[outer.payload_offset..outer.payload_offset + outer.payload_len];
                let arrival = Arrival {
                    at: frame.offset + outer.payload_offset,
                    stride: if frame.segment == 0 { data.len().max(1) } else { frame.segment },
                    gwlb: SocketAddrV4::new(outer.src, outer.src_port),
                    appliance_ip: outer.dst,
                };
                let mut slot_io = SlotIo { inject, inject_base, injected: &mut injected, tx };
                self.handle_datagrams(arrival, data, &mut slot_io, counters);
            }
            self.flush(tx, &RingPayloads { ring, room: &room }, counters, errors);
            ring.release(taken);
            self.end_batch(counters);
        }
    }

    /// Spins on the ring for up to `busy_poll` microseconds; true when a frame arrived.
    fn spin(&self, ring: &RxRing) -> bool {
        if self.busy_poll == 0 {
            return false;
        }
        let until = Instant::now() + Duration::from_micros(u64::from(self.busy_poll));
        loop {
            if ring.frame(0).is_some() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Waits for `fd` (or `also`) to be readable or the data plane to stop, with no timeout;
    /// the ticker wakes it every [`IDLE_TICK`] while `timer` or flows or fragments to expire
    /// want the clock. Whether `also` is readable.
    fn sleep(
        &mut self,
        fd: RawFd,
        also: Option<RawFd>,
        timer: bool,
        errors: &mut RateLimitedLog,
    ) -> bool {
        let counts = self.pipeline.flow_counts();
        let timer = timer || counts.active > 0 || counts.fragments > 0;
        if let Err(error) = self.waits.ticker.set(timer, IDLE_TICK) {
            errors.log(self.index, "timer", &error);
        }
        match wait_readable_or_woken(fd, also, &self.waits.wake, &self.waits.ticker) {
            Ok(woken) => woken.also_readable,
            Err(error) => {
                errors.log(self.index, "poll", &error);
                false
            }
        }
    }

    /// Nothing arrived: still let flows expire and pick up new snapshots, and send what the
    /// verdicts of pending flows that timed out let go.
    fn idle(&mut self, clock: Instant, counters: &mut Counters) {
        self.pipeline.begin_batch(clock.elapsed().as_millis() as u64);
        counters.held_verdicts(self.pipeline.take_held_verdicts());
        // Bounded: the pipeline's queue holds at most `names.max_pending` flows' datagrams.
        while let Some((len, origin)) = self.pipeline.pop_release(&mut self.release) {
            let addressing = OuterAddressing::from_origin(origin);
            match TxItem::new(&addressing, 0, len).filter(|_| !addressing.src.is_unspecified()) {
                Some(item) => {
                    let reports = self.sender.send(&[item], &self.release[..]);
                    counters.sent(reports.packet.sent + reports.raw.sent, len as u64);
                }
                None => counters.drop(DropReason::SendFailed),
            }
        }
        self.hand_over_flow_records();
        counters.set_flows(self.pipeline.flow_counts());
        self.status.counters.publish(counters);
    }

    /// After a batch went out: flow records, gauges, counters published.
    fn end_batch(&mut self, counters: &mut Counters) {
        #[cfg(feature = "test-hooks")]
        test_hooks::panic_if_asked(counters);
        self.hand_over_flow_records();
        counters.held_verdicts(self.pipeline.take_held_verdicts());
        counters.set_flows(self.pipeline.flow_counts());
        counters.set_sockets_open(self.sockets.open());
        self.status.counters.publish(counters);
    }

    /// Gives the flow log what the pipeline recorded (after the batch's packets went out).
    fn hand_over_flow_records(&mut self) {
        if let Some(log) = &self.flow_log {
            log.take_from(&mut self.pipeline);
        }
    }

    /// Sends what is queued, in order: single packets in `sendmmsg` batches, each run of a
    /// train as one segmented send (or as single packets, one by one, when that cannot be
    /// done).
    fn flush<P: Payloads + ?Sized>(
        &mut self,
        tx: &mut SendQueue,
        storage: &P,
        counters: &mut Counters,
        errors: &mut RateLimitedLog,
    ) {
        let mut singles_sent = 0;
        for queued in &tx.runs {
            if queued.singles_before > singles_sent {
                self.send_singles(
                    &tx.singles[singles_sent..queued.singles_before],
                    storage,
                    counters,
                    errors,
                );
                singles_sent = queued.singles_before;
            }
            let run = queued.run;
            let a = queued.addressing;
            let local = SocketAddrV4::new(a.src, a.src_port);
            let reason = if !self.gso {
                Fallback::GsoUnsupported
            } else if let Some(socket) = self.sockets.get(local, tx.now_ms, counters) {
                let data = storage.bytes(run.offset, run.len);
                match socket.send(SocketAddrV4::new(a.dst, a.dst_port), data, run.segment as u16) {
                    Ok(()) => {
                        let count = run.count as u64;
                        counters.sent(count, (run.len + count as usize * OUTER_HEADER_LEN) as u64);
                        counters.send_path(SendPath::Gso, count, 1);
                        continue;
                    }
                    Err(error) => {
                        errors.log(self.index, "segmented send", &error);
                        if error.raw_os_error() == Some(libc::EIO) {
                            // No checksum offload on this route: segmentation cannot work.
                            self.gso = false;
                            Fallback::GsoUnsupported
                        } else {
                            Fallback::SendError
                        }
                    }
                }
            } else {
                Fallback::NoSocket
            };
            counters.fallback(reason, run.count as u64);
            tx.fallback.clear();
            let mut offset = run.offset;
            while offset < run.offset + run.len {
                let len = run.segment.min(run.offset + run.len - offset);
                if let Some(item) = TxItem::new(&a, offset, len) {
                    tx.fallback.push(item);
                } else {
                    counters.drop(DropReason::SendFailed);
                }
                offset += len;
            }
            self.send_singles(&tx.fallback, storage, counters, errors);
        }
        if tx.singles.len() > singles_sent {
            self.send_singles(&tx.singles[singles_sent..], storage, counters, errors);
        }
        tx.singles.clear();
        tx.runs.clear();
    }

    /// Sends single packets: as Ethernet frames where the next hop is known, else through
    /// the raw socket.
    fn send_singles<P: Payloads + ?Sized>(
        &mut self,
        items: &[TxItem],
        storage: &P,
        counters: &mut Counters,
        errors: &mut RateLimitedLog,
    ) {
        if items.is_empty() {
            return;
        }
        let reports = self.sender.send(items, storage);
        self.record(SendPath::Packet, &reports.packet, counters, errors);
        self.record(SendPath::Raw, &reports.raw, counters, errors);
    }

    fn record(
        &self,
        path: SendPath,
        report: &SendReport,
        counters: &mut Counters,
        errors: &mut RateLimitedLog,
    ) {
        counters.sent(report.sent, report.sent_bytes);
        counters.send_path(path, report.sent, report.calls);
        for _ in 0..report.failed {
            counters.drop(DropReason::SendFailed);
        }
        if let Some(errno) = report.last_error {
            errors.log(self.index, "send", &io::Error::from_raw_os_error(errno));
        }
    }

    /// Decides every datagram of one receive slot or ring frame (several when GRO or a GSO
    /// sender made a train).
    fn handle_datagrams(
        &mut self,
        arrival: Arrival,
        data: &[u8],
        io: &mut SlotIo<'_>,
        counters: &mut Counters,
    ) {
        let Arrival { at: slot_offset, stride, gwlb, appliance_ip } = arrival;
        if let Some(peers) = &self.allowed_peers
            && !peers.iter().any(|net| net.contains(gwlb.ip()))
        {
            // A slot holds what one sender sent: every datagram of it is refused.
            for datagram in data.chunks(stride) {
                counters.received(datagram.len());
                counters.drop(DropReason::PeerNotAllowed);
            }
            return;
        }
        let addressing = OuterAddressing {
            src: appliance_ip,
            dst: *gwlb.ip(),
            src_port: gwlb.port(),
            dst_port: self.reply_port,
        };
        let usable = !appliance_ip.is_unspecified();
        self.pipeline.set_origin(addressing.to_origin());
        let mut runs = RunBuilder::default();
        let mut offset = slot_offset;
        // The datagram before in this train: the next one is decoded by comparison with it.
        let mut previous: Option<&[u8]> = None;
        for datagram in data.chunks(stride) {
            counters.received(datagram.len());
            let inject = &mut io.inject[*io.injected..];
            let outcome = self.pipeline.process_after(previous, datagram, inject);
            previous = Some(datagram);
            if let Outcome::Held = outcome {
                // Nothing to send now, unless its verdict let the flow's datagrams go.
                take_releases(&mut self.pipeline, io, Some(&mut runs), counters);
                offset += datagram.len();
                continue;
            }
            take_releases(&mut self.pipeline, io, Some(&mut runs), counters);
            let closed = match outcome {
                Outcome::SendBack(action) => {
                    counters.verdict(action, datagram.len());
                    if usable {
                        runs.push(offset, datagram.len())
                    } else {
                        counters.drop(DropReason::SendFailed);
                        runs.finish()
                    }
                }
                Outcome::Withhold(action) => {
                    counters.verdict(action, datagram.len());
                    runs.finish()
                }
                Outcome::Reject { len } => {
                    counters.verdict(Action::Reject, datagram.len());
                    let at = io.inject_base + *io.injected;
                    *io.injected += len.next_multiple_of(8);
                    // The train's datagrams before the trigger go first.
                    if let Some(run) = runs.finish() {
                        io.tx.push_run(run, &addressing, counters);
                    }
                    io.tx.push_single(&addressing, usable, at, len, counters);
                    None
                }
                Outcome::Drop(reason) => {
                    counters.drop(reason);
                    runs.finish()
                }
                Outcome::Held => None,
            };
            if let Some(run) = closed {
                io.tx.push_run(run, &addressing, counters);
            }
            offset += datagram.len();
        }
        if let Some(run) = runs.finish() {
            io.tx.push_run(run, &addressing, counters);
        }
    }
}

/// Queues what verdicts on pending flows let go (before the datagram just judged, and after
/// the train's datagrams before it, which `runs` holds), while the inject region has room
/// for it and a reject per datagram of a slot after it.
fn take_releases(
    pipeline: &mut Pipeline,
    io: &mut SlotIo<'_>,
    runs: Option<&mut RunBuilder>,
    counters: &mut Counters,
) {
    let mut runs = runs;
    while io.inject.len() - *io.injected
        >= MAX_GENEVE_DATAGRAM + MAX_SEGMENTS_PER_SLOT * MAX_REJECT_LEN
    {
        let Some((len, origin)) = pipeline.pop_release(&mut io.inject[*io.injected..]) else {
            return;
        };
        let addressing = OuterAddressing::from_origin(origin);
        if let Some(run) = runs.as_deref_mut().and_then(RunBuilder::finish) {
            io.tx.push_run(run, &addressing, counters);
        }
        let at = io.inject_base + *io.injected;
        *io.injected += len.next_multiple_of(8);
        let usable = !addressing.src.is_unspecified();
        io.tx.push_single(&addressing, usable, at, len, counters);
    }
}

/// What a worker will send at the next flush, in order: single packets (packet or raw
/// socket), and runs of trains, each placed after the single packets queued before it.
struct SendQueue {
    singles: Vec<TxItem>,
    runs: Vec<QueuedRun>,
    /// Scratch for a run that has to go out as single packets after all.
    fallback: Vec<TxItem>,
    /// The batch's clock, for the send-socket cache.
    now_ms: u64,
}

struct QueuedRun {
    run: Run,
    addressing: OuterAddressing,
    singles_before: usize,
}

impl SendQueue {
    fn push_single(
        &mut self,
        addressing: &OuterAddressing,
        usable: bool,
        at: usize,
        len: usize,
        counters: &mut Counters,
    ) {
        match TxItem::new(addressing, at, len).filter(|_| usable) {
            Some(item) => self.singles.push(item),
            None => counters.drop(DropReason::SendFailed),
        }
    }

    /// A run of one datagram goes as a single packet (batched with others); longer ones as
    /// one send.
    fn push_run(&mut self, run: Run, addressing: &OuterAddressing, counters: &mut Counters) {
        if run.count == 1 {
            self.push_single(addressing, true, run.offset, run.len, counters);
        } else {
            self.runs.push(QueuedRun {
                run,
                addressing: *addressing,
                singles_before: self.singles.len(),
            });
        }
    }
}

/// Where what arrived in one receive slot or ring frame is: at `at` in what sends are taken
/// from, one datagram every `stride` bytes, from `gwlb` to `appliance_ip`.
struct Arrival {
    at: usize,
    stride: usize,
    gwlb: SocketAddrV4,
    appliance_ip: Ipv4Addr,
}

/// The buffers one slot is handled with: room for rejects, the send queue.
struct SlotIo<'a> {
    inject: &'a mut [u8],
    /// Where `inject` starts in the buffer sends are taken from.
    inject_base: usize,
    injected: &'a mut usize,
    tx: &'a mut SendQueue,
}

/// Logs repeated errors at most once per [`ERROR_LOG_INTERVAL`], with how many were held back.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn log(&mut self, worker: usize, operation: &str, error: &io::Error) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < ERROR_LOG_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(worker, operation, %error, suppressed = self.suppressed, "data-plane I/O error");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Faults the tests inject into a real appliance; compiled only with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
mod test_hooks {
    use super::Counters;

    /// `LABELWALL_TEST_PANIC_AFTER=N`: the worker panics once it has received N datagrams.
    pub(super) fn panic_if_asked(counters: &Counters) {
        static AFTER: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
        let after = AFTER.get_or_init(|| {
            std::env::var("LABELWALL_TEST_PANIC_AFTER").ok().and_then(|n| n.parse().ok())
        });
        if let Some(after) = *after
            && counters.rx_datagrams() >= after
        {
            panic!("test hook: a worker panics after {after} datagrams");
        }
    }
}
