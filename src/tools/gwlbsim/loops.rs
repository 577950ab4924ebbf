//! The simulator's two I/O loops, a thread each. TUN device -> appliance: read a batch of
//! inner packets, wrap each in its flow's header from its flow's source port, send the batch
//! in one go; this loop also sweeps idle flows and prints the periodic counters line.
//! Appliance -> TUN device: receive a batch (GRO trains included), check every datagram, write
//! the inner packets of the good ones back. Both take the flow-table lock once per batch. Must
//! not decide anything about flows or headers (flows.rs does): here bytes move and counters
//! count.

use std::fs::File;
use std::io::{self, IoSliceMut, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSockRef, UdpSocketState};

use super::flows::{ReplyCheck, SendRefusal, SimFlows};
use super::stats::SimStats;
use crate::net::nexthop::SingleSender;
use crate::net::sys::{SEND_BATCH, TxItem, wait_readable};
use crate::wire::GWLB_HEADER_LEN;
use crate::wire::outer::{OUTER_HEADER_LEN, OuterAddressing};

/// One receive slot holds a whole GRO train (the kernel caps those at 64 KiB).
const RECEIVE_SLOT: usize = 64 * 1024;
/// How long an idle loop waits before it looks at the stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How often idle flows are swept out of the table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// TUN device -> appliance: read a batch of inner packets, wrap them, send them in one go.
pub(super) struct ForwardLoop<'a> {
    pub(super) tun: &'a File,
    pub(super) sender: &'a mut SingleSender,
    pub(super) flows: &'a Mutex<SimFlows>,
    pub(super) stats: &'a SimStats,
    pub(super) stop: &'a AtomicBool,
    pub(super) clock: Instant,
    pub(super) local: Ipv4Addr,
    pub(super) appliance: SocketAddrV4,
    /// Bytes per packet in the buffer: GENEVE header, then room for an MTU-sized packet.
    pub(super) slot: usize,
    pub(super) stats_every: Duration,
}

impl ForwardLoop<'_> {
    pub(super) fn run(self) -> io::Result<()> {
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
pub(super) struct ReturnEnds<'a> {
    pub(super) socket: &'a std::net::UdpSocket,
    pub(super) state: &'a UdpSocketState,
    pub(super) tun: &'a File,
}

/// Appliance -> TUN device: receive a batch, check every datagram, deliver the good ones.
pub(super) fn return_loop(
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
