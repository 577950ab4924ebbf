//! The flow log: one JSON line per flow start and per flow end (with totals), enriched with
//! who both ends are.
//! Must not depend on: the data plane's sockets and workers, tokio.
//!
//! Workers hand records to a bounded queue and never wait: when the writer falls behind, a
//! record is dropped and counted (`labelwall_flow_log_dropped_total`), the data plane goes
//! on. Formatting, identity lookups and file I/O happen on the writer thread.

use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::conntrack::FlowEnd;
use crate::labels::{EndpointKind, Labels, Who};
use crate::packet::ip_proto;
use crate::pipeline::{FlowEvent, FlowRecord, Pipeline};

/// Records the queue holds before it starts dropping.
pub const QUEUE_LEN: usize = 65_536;

/// The workers' end of the queue.
#[derive(Debug, Clone)]
pub struct FlowLogSender {
    queue: SyncSender<FlowRecord>,
    stats: Arc<FlowLogStats>,
}

#[derive(Debug, Default)]
pub struct FlowLogStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
}

impl FlowLogSender {
    /// Queues a record without waiting; counts it as dropped when the queue is full.
    pub fn send(&self, record: FlowRecord) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(record)
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes every record `pipeline` queued, and counts those it could not queue as dropped.
    pub fn take_from(&self, pipeline: &mut Pipeline) {
        while let Some(record) = pipeline.poll_flow_record() {
            self.send(record);
        }
        let lost = pipeline.take_lost_flow_records();
        if lost > 0 {
            self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
        }
    }
}

/// The writer thread; it ends when every sender is dropped, after writing what is queued.
#[derive(Debug)]
pub struct FlowLogWriter {
    thread: JoinHandle<()>,
    pub stats: Arc<FlowLogStats>,
}

impl FlowLogWriter {
    /// Opens `path` for appending (`-` = stdout) and starts the writer.
    pub fn start(path: &Path) -> std::io::Result<(FlowLogSender, FlowLogWriter)> {
        let output: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
        };
        Ok(Self::start_with(output))
    }

    /// Starts a writer on any output (tests use a pipe or a buffer).
    pub fn start_with(output: Box<dyn Write + Send>) -> (FlowLogSender, FlowLogWriter) {
        let (queue, receiver) = sync_channel(QUEUE_LEN);
        let stats = Arc::new(FlowLogStats::default());
        let writer_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("lw-flowlog".into())
            .spawn(move || write_loop(receiver, BufWriter::new(output), &writer_stats))
            .expect("spawning the flow-log thread");
        (FlowLogSender { queue, stats: Arc::clone(&stats) }, FlowLogWriter { thread, stats })
    }

    /// Waits for the writer to drain the queue (all senders must be dropped first).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

fn write_loop(
    receiver: Receiver<FlowRecord>,
    mut out: BufWriter<Box<dyn Write + Send>>,
    stats: &FlowLogStats,
) {
    let mut line = Vec::with_capacity(1024);
    while let Ok(record) = receiver.recv() {
        let mut next = Some(record);
        while let Some(record) = next {
            line.clear();
            if serde_json::to_writer(&mut line, &JsonRecord::new(&record)).is_ok() {
                line.push(b'\n');
                if out.write_all(&line).is_ok() {
                    stats.written.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            next = receiver.try_recv().ok();
        }
        // The queue is empty: make what we have visible.
        if out.flush().is_err() {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = out.flush();
}

/// The JSON shape of one line (documented in docs/operations.md).
#[derive(Serialize)]
struct JsonRecord<'a> {
    time: String,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_reason: Option<&'static str>,
    src: IpAddr,
    dst: IpAddr,
    proto: &'static str,
    sport: u16,
    dport: u16,
    verdict: &'static str,
    rule: &'a str,
    src_identity: Option<JsonIdentity<'a>>,
    dst_identity: Option<JsonIdentity<'a>>,
    gwlb_endpoint_id: Option<String>,
    gwlb_attachment_id: Option<String>,
    flow_cookie: String,
    packets: u64,
    bytes: u64,
    duration_ms: u64,
    policy_generation: u64,
}

#[derive(Serialize)]
struct JsonIdentity<'a> {
    cluster: &'a str,
    namespace: &'a str,
    name: &'a str,
    kind: EndpointKind,
    labels: &'a Labels,
}

impl<'a> JsonRecord<'a> {
    fn new(record: &'a FlowRecord) -> JsonRecord<'a> {
        let flow = &record.flow;
        let (src, sport) = flow.key.endpoint(flow.initiator);
        let (dst, dport) = flow.key.endpoint(flow.initiator.other());
        let identity = |who: &'a Option<Who>| {
            let who = who.as_ref()?;
            Some(JsonIdentity {
                cluster: &who.identity.cluster,
                namespace: &who.identity.namespace,
                name: &who.name,
                kind: who.identity.kind,
                labels: &who.identity.labels,
            })
        };
        let (event, end_reason) = match record.event {
            FlowEvent::Start => ("start", None),
            FlowEvent::End(end) => (
                "end",
                Some(match end {
                    FlowEnd::Expired => "idle",
                    FlowEnd::Evicted => "evicted",
                    FlowEnd::Replaced => "replaced",
                }),
            ),
        };
        JsonRecord {
            time: rfc3339_now(),
            event,
            end_reason,
            src,
            dst,
            proto: ip_proto::name(flow.key.protocol),
            sport,
            dport,
            verdict: flow.decision.action.as_str(),
            rule: &record.rule,
            src_identity: identity(&record.src),
            dst_identity: identity(&record.dst),
            gwlb_endpoint_id: flow.endpoint_id.map(|id| format!("{id:016x}")),
            gwlb_attachment_id: flow.attachment_id.map(|id| format!("{id:016x}")),
            flow_cookie: format!("{:08x}", flow.cookie),
            packets: flow.packets,
            bytes: flow.bytes,
            duration_ms: flow.last_seen_ms.saturating_sub(flow.started_ms),
            policy_generation: record.generation,
        }
    }
}

fn rfc3339_now() -> String {
    rfc3339(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// UTC time as RFC 3339 with milliseconds (truncated), always three digits:
/// `2026-12-31T23:59:59.123Z`. Past the year 9999 (jiff's range), its last instant.
fn rfc3339(since_epoch: std::time::Duration) -> String {
    let time = jiff::SignedDuration::try_from(since_epoch)
        .ok()
        .and_then(|since_epoch| jiff::Timestamp::from_duration(since_epoch).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    time.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_format_exactly() {
        use std::time::Duration;
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(Duration::from_millis(1_798_761_599_123)), "2026-12-31T23:59:59.123Z");
    }

    #[test]
    fn the_time_field_has_three_truncated_fraction_digits() {
        use std::time::Duration;
        // 2026-11-27T15:20:30Z plus a fraction: milliseconds, truncated, zero-padded.
        let at = |nanos| rfc3339(Duration::new(1_795_792_830, nanos));
        assert_eq!(at(0), "2026-11-27T15:20:30.000Z");
        assert_eq!(at(7_000_000), "2026-11-27T15:20:30.007Z");
        assert_eq!(at(50_000_000), "2026-11-27T15:20:30.050Z");
        assert_eq!(at(999_999_999), "2026-11-27T15:20:30.999Z");
        assert_eq!(at(1_999), "2026-11-27T15:20:30.000Z");
        assert_eq!(rfc3339(Duration::new(9, 1_000_000)), "1970-01-01T00:00:09.001Z");
        assert_eq!(rfc3339(Duration::MAX), "9999-12-30T22:00:00.999Z");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        assert!(t.starts_with("20"), "{t}");
    }
}
