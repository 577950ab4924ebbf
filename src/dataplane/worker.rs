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
use super::{DataplaneSettings, WorkerStatus};
use crate::pipeline::{Outcome, Pipeline};
use crate::wire::DropReason;
use crate::wire::outer::{self, OUTER_HEADER_LEN, OuterAddressing};

/// One receive slot holds a whole GRO train (the kernel caps those at 64 KiB).
const SLOT_SIZE: usize = 64 * 1024;
/// At most 64 datagrams per GRO train (UDP_GRO_CNT_MAX).
const MAX_SEGMENTS_PER_SLOT: usize = 64;
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
        status: Arc<WorkerStatus>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Worker {
            index,
            socket,
            sender,
            listen_ip: *settings.listen.ip(),
            reply_port: settings.reply_port,
            pipeline: Pipeline::new(settings.mode),
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
        let mut storage = vec![0u8; SLOT_SIZE * BATCH_SIZE];
        let mut metas = [RecvMeta::default(); BATCH_SIZE];
        let mut tx: Vec<TxItem> = Vec::with_capacity(BATCH_SIZE * MAX_SEGMENTS_PER_SLOT);
        let mut counters = Counters::default();
        let mut errors = RateLimitedLog::default();
        let fd = self.socket.as_raw_fd();
        self.status.running.store(true, Ordering::Release);

        while !self.stop.load(Ordering::Acquire) {
            let received = {
                let mut chunks = storage.chunks_exact_mut(SLOT_SIZE);
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
            for (slot, meta) in metas[..count].iter().enumerate() {
                self.handle_slot(slot * SLOT_SIZE, meta, &storage, &mut tx, &mut counters);
            }
            if !tx.is_empty() {
                let report = self.sender.send(&tx, &storage);
                counters.sent(report.sent, report.sent_bytes);
                for _ in 0..report.failed {
                    counters.drop(DropReason::SendFailed);
                }
                if let Some(errno) = report.last_error {
                    errors.log(self.index, "send", &io::Error::from_raw_os_error(errno));
                }
                tx.clear();
            }
            self.status.counters.publish(&counters);
        }
        self.status.counters.publish(&counters);
        self.status.running.store(false, Ordering::Release);
        tracing::debug!(worker = self.index, "worker stopped");
    }

    /// Decides every datagram of one receive slot (several when GRO coalesced a train).
    fn handle_slot(
        &mut self,
        slot_offset: usize,
        meta: &RecvMeta,
        storage: &[u8],
        tx: &mut Vec<TxItem>,
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
        let data = &storage[slot_offset..slot_offset + meta.len];
        let stride = if meta.stride == 0 { meta.len.max(1) } else { meta.stride };
        let mut offset = slot_offset;
        for datagram in data.chunks(stride) {
            counters.received(datagram.len());
            match self.pipeline.process(datagram) {
                Outcome::SendBack(verdict) => {
                    counters.verdict(verdict, datagram.len());
                    let mut header = [0u8; OUTER_HEADER_LEN];
                    if appliance_ip.is_unspecified()
                        || outer::emit(&mut header, &addressing, datagram.len()).is_none()
                    {
                        counters.drop(DropReason::SendFailed);
                    } else {
                        tx.push(TxItem {
                            header,
                            offset,
                            len: datagram.len(),
                            dst: addressing.dst,
                        });
                    }
                }
                Outcome::Withhold(verdict) => counters.verdict(verdict, datagram.len()),
                Outcome::Drop(reason) => counters.drop(reason),
            }
            offset += datagram.len();
        }
    }
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
