//! One data-plane worker: a loop of batched receive, decide, batched send.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSockRef, UdpSocketState};

use super::stats::Counters;
use super::sys::{RawSender, TxItem, wait_readable};
use super::{ControlLinks, DataplaneSettings, WorkerStatus};
use crate::pipeline::{Outcome, Pipeline};
use crate::policy::Action;
use crate::reject::MAX_REJECT_LEN;
use crate::wire::DropReason;
use crate::wire::outer::{self, OUTER_HEADER_LEN, OuterAddressing};

/// One receive slot holds a whole GRO train (the kernel caps those at 64 KiB).
const SLOT_SIZE: usize = 64 * 1024;
/// At most 64 datagrams per GRO train (UDP_GRO_CNT_MAX).
const MAX_SEGMENTS_PER_SLOT: usize = 64;
/// The receive region of a worker's buffer.
const RX_REGION: usize = SLOT_SIZE * BATCH_SIZE;
/// Room after it for injected rejects: two slots' worth, flushed when less than one is left.
const INJECT_REGION: usize = 2 * MAX_SEGMENTS_PER_SLOT * MAX_REJECT_LEN;
/// How long an idle worker sleeps before it looks at the stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// At most one log line per this interval for repeated errors.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

pub(super) struct Worker {
    index: usize,
    socket: std::net::UdpSocket,
    sender: RawSender,
    listen_ip: Ipv4Addr,
    reply_port: u16,
    pipeline: Pipeline,
    status: Arc<WorkerStatus>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    pub(super) fn new(
        index: usize,
        socket: std::net::UdpSocket,
        sender: RawSender,
        settings: &DataplaneSettings,
        links: &ControlLinks,
        status: Arc<WorkerStatus>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Worker {
            index,
            socket,
            sender,
            listen_ip: *settings.listen.ip(),
            reply_port: settings.reply_port,
            pipeline: Pipeline::new(
                settings.mode,
                index,
                links.snapshots.clone(),
                settings.flows,
                links.flow_log.clone(),
            ),
            status,
            stop,
        }
    }

    pub(super) fn run(mut self) {
        let state = match UdpSocketState::new(UdpSockRef::from(&self.socket)) {
            Ok(state) => state,
            Err(error) => {
                tracing::error!(worker = self.index, %error, "cannot configure the data-plane socket");
                return;
            }
        };
        tracing::debug!(worker = self.index, gro_segments = state.gro_segments(), "worker started");
        let mut storage = vec![0u8; RX_REGION + INJECT_REGION];
        let mut metas = [RecvMeta::default(); BATCH_SIZE];
        let mut tx: Vec<TxItem> = Vec::with_capacity(BATCH_SIZE * MAX_SEGMENTS_PER_SLOT * 2);
        let mut counters = Counters::default();
        let mut errors = RateLimitedLog::default();
        let fd = self.socket.as_raw_fd();
        let clock = Instant::now();
        self.status.running.store(true, Ordering::Release);

        while !self.stop.load(Ordering::Acquire) {
            let received = {
                let mut chunks = storage[..RX_REGION].chunks_exact_mut(SLOT_SIZE);
                let mut slots: [IoSliceMut<'_>; BATCH_SIZE] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                state.recv(UdpSockRef::from(&self.socket), &mut slots, &mut metas)
            };
            let count = match received {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(error) = wait_readable(fd, IDLE_WAIT) {
                        errors.log(self.index, "poll", &error);
                    }
                    // Idle: still let flows expire and pick up new snapshots.
                    self.pipeline.begin_batch(clock.elapsed().as_millis() as u64);
                    counters.set_flows(self.pipeline.flow_counts());
                    self.status.counters.publish(&counters);
                    continue;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    counters.receive_error();
                    errors.log(self.index, "receive", &error);
                    continue;
                }
            };
            counters.batch();
            self.pipeline.begin_batch(clock.elapsed().as_millis() as u64);
            let mut injected = 0;
            for (slot, meta) in metas[..count].iter().enumerate() {
                if INJECT_REGION - injected < MAX_SEGMENTS_PER_SLOT * MAX_REJECT_LEN {
                    self.flush(&mut tx, &storage, &mut counters, &mut errors);
                    injected = 0;
                }
                let (rx, inject) = storage.split_at_mut(RX_REGION);
                let mut slot_io = SlotIo { rx, inject, injected: &mut injected, tx: &mut tx };
                self.handle_slot(slot * SLOT_SIZE, meta, &mut slot_io, &mut counters);
            }
            self.flush(&mut tx, &storage, &mut counters, &mut errors);
            counters.set_flows(self.pipeline.flow_counts());
            self.status.counters.publish(&counters);
        }
        self.pipeline.finish();
        counters.set_flows(self.pipeline.flow_counts());
        self.status.counters.publish(&counters);
        self.status.running.store(false, Ordering::Release);
        tracing::debug!(worker = self.index, "worker stopped");
    }

    /// Sends what is queued.
    fn flush(
        &mut self,
        tx: &mut Vec<TxItem>,
        storage: &[u8],
        counters: &mut Counters,
        errors: &mut RateLimitedLog,
    ) {
        if tx.is_empty() {
            return;
        }
        let report = self.sender.send(tx, storage);
        counters.sent(report.sent, report.sent_bytes);
        for _ in 0..report.failed {
            counters.drop(DropReason::SendFailed);
        }
        if let Some(errno) = report.last_error {
            errors.log(self.index, "send", &io::Error::from_raw_os_error(errno));
        }
        tx.clear();
    }

    /// Decides every datagram of one receive slot (several when GRO coalesced a train).
    fn handle_slot(
        &mut self,
        slot_offset: usize,
        meta: &RecvMeta,
        io: &mut SlotIo<'_>,
        counters: &mut Counters,
    ) {
        let SocketAddr::V4(gwlb) = meta.addr else { return };
        let appliance_ip = match meta.dst_ip {
            Some(IpAddr::V4(ip)) => ip,
            _ => self.listen_ip,
        };
        let addressing = OuterAddressing {
            src: appliance_ip,
            dst: *gwlb.ip(),
            src_port: gwlb.port(),
            dst_port: self.reply_port,
        };
        let data = &io.rx[slot_offset..slot_offset + meta.len];
        let stride = if meta.stride == 0 { meta.len.max(1) } else { meta.stride };
        let mut offset = slot_offset;
        for datagram in data.chunks(stride) {
            counters.received(datagram.len());
            let inject = &mut io.inject[*io.injected..];
            let send = match self.pipeline.process(datagram, inject) {
                Outcome::SendBack(action) => {
                    counters.verdict(action, datagram.len());
                    Some((offset, datagram.len()))
                }
                Outcome::Withhold(action) => {
                    counters.verdict(action, datagram.len());
                    None
                }
                Outcome::Reject { len } => {
                    counters.verdict(Action::Reject, datagram.len());
                    let at = RX_REGION + *io.injected;
                    *io.injected += len.next_multiple_of(8);
                    Some((at, len))
                }
                Outcome::Drop(reason) => {
                    counters.drop(reason);
                    None
                }
            };
            if let Some((at, len)) = send {
                let mut header = [0u8; OUTER_HEADER_LEN];
                if appliance_ip.is_unspecified()
                    || outer::emit(&mut header, &addressing, len).is_none()
                {
                    counters.drop(DropReason::SendFailed);
                } else {
                    io.tx.push(TxItem { header, offset: at, len, dst: addressing.dst });
                }
            }
            offset += datagram.len();
        }
    }
}

/// The buffers one slot is handled with: received datagrams, room for rejects, the send queue.
struct SlotIo<'a> {
    rx: &'a [u8],
    inject: &'a mut [u8],
    injected: &'a mut usize,
    tx: &'a mut Vec<TxItem>,
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
