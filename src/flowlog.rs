//! The flow log: one JSON line per flow start and per flow end (with totals), enriched with
//! who both ends are.
//! Must not depend on: the data plane's sockets and workers, tokio.
//!
//! Workers hand records to a bounded queue and never wait: when the writer falls behind, a
//! record is dropped and counted (`labelwall_flow_log_dropped_total{reason="queue_full"}`),
//! the data plane goes on. Formatting and file I/O happen on the writer thread, which writes
//! at most `flow_log.max_rate` records a second (the rest counted, `reason="rate_limited"`), so
//! that a flood of new flows on a logged rule cannot fill the disk, and reopens its path on
//! request (SIGUSR1, after logrotate moved the file).

use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// Records the queue could not take (the writer fell behind).
    pub dropped: AtomicU64,
    /// Records beyond `flow_log.max_rate`.
    pub rate_limited: AtomicU64,
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
    reopen: Arc<AtomicBool>,
}

/// How often the writer looks for a reopen request while no records arrive.
const IDLE_WAKE: Duration = Duration::from_millis(200);

impl FlowLogWriter {
    /// Opens `path` for appending (`-` = stdout) and starts the writer, which writes at most
    /// `max_rate` records per second (`None`: no limit).
    pub fn start(
        path: &Path,
        max_rate: Option<u32>,
    ) -> std::io::Result<(FlowLogSender, FlowLogWriter)> {
        let output = if path.as_os_str() == "-" {
            Output::Other(BufWriter::new(Box::new(std::io::stdout())))
        } else {
            Output::File { path: path.to_path_buf(), file: BufWriter::new(open_append(path)?) }
        };
        Ok(Self::start_output(output, max_rate))
    }

    /// Starts a writer on any output (tests use a pipe or a buffer).
    pub fn start_with(
        output: Box<dyn Write + Send>,
        max_rate: Option<u32>,
    ) -> (FlowLogSender, FlowLogWriter) {
        Self::start_output(Output::Other(BufWriter::new(output)), max_rate)
    }

    fn start_output(output: Output, max_rate: Option<u32>) -> (FlowLogSender, FlowLogWriter) {
        let (queue, receiver) = sync_channel(QUEUE_LEN);
        let stats = Arc::new(FlowLogStats::default());
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            output,
            stats: Arc::clone(&stats),
            reopen: Arc::clone(&reopen),
            rate: max_rate.map(RateLimit::new),
        };
        let thread = std::thread::Builder::new()
            .name("lw-flowlog".into())
            .spawn(move || writer.run(receiver))
            .expect("spawning the flow-log thread");
        (
            FlowLogSender { queue, stats: Arc::clone(&stats) },
            FlowLogWriter { thread, stats, reopen },
        )
    }

    /// Asks the writer to close its file and open the path again (SIGUSR1: logrotate moved
    /// the file away). Records queued meanwhile go to the new file; none are lost.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Waits for the writer to drain the queue (all senders must be dropped first).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Where the lines go: a file that can be reopened at its path, or anything else.
enum Output {
    File { path: PathBuf, file: BufWriter<std::fs::File> },
    Other(BufWriter<Box<dyn Write + Send>>),
}

impl Output {
    fn out(&mut self) -> &mut dyn Write {
        match self {
            Output::File { file, .. } => file,
            Output::Other(out) => out,
        }
    }
}

/// At most `per_second` records a second, a second's worth at once.
struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> RateLimit {
        let per_second = f64::from(per_second);
        RateLimit { per_second, tokens: per_second, last: Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The writer thread's state.
struct Writer {
    output: Output,
    stats: Arc<FlowLogStats>,
    reopen: Arc<AtomicBool>,
    rate: Option<RateLimit>,
}

impl Writer {
    fn run(mut self, receiver: Receiver<FlowRecord>) {
        let mut line = Vec::with_capacity(1024);
        loop {
            match receiver.recv_timeout(IDLE_WAKE) {
                Ok(record) => {
                    let mut next = Some(record);
                    while let Some(record) = next {
                        self.write(&record, &mut line);
                        next = receiver.try_recv().ok();
                    }
                    // The queue is empty: make what we have visible.
                    if self.output.out().flush().is_err() {
                        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.reopen_file();
            }
        }
        let _ = self.output.out().flush();
    }

    fn write(&mut self, record: &FlowRecord, line: &mut Vec<u8>) {
        if self.rate.as_mut().is_some_and(|rate| !rate.take()) {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return;
        }
        line.clear();
        if serde_json::to_writer(&mut *line, &JsonRecord::new(record)).is_ok() {
            line.push(b'\n');
            if self.output.out().write_all(line).is_ok() {
                self.stats.written.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Closes the file and opens its path again; on failure the old file stays in use.
    fn reopen_file(&mut self) {
        let Output::File { path, file } = &mut self.output else { return };
        if file.flush().is_err() {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        match open_append(path) {
            Ok(new) => {
                *file = BufWriter::new(new);
                tracing::info!(path = %path.display(), "flow log reopened");
            }
            Err(error) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %path.display(), %error, "cannot reopen the flow log; writing on to the old file");
            }
        }
    }
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
    /// The server name the flow showed (TLS SNI, HTTP Host, QUIC SNI), where it showed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_name: Option<&'a str>,
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
            rule: record.rule.as_deref().unwrap_or("default"),
            server_name: record.server_name.as_ref().map(|name| name.as_str()),
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

    fn record(port: u16) -> FlowRecord {
        use crate::conntrack::{Flow, FlowKey, Side, TcpState};
        use crate::policy::{Action, Decision};
        let (key, _) = FlowKey::of_packet(
            "10.0.1.10".parse().unwrap(),
            port,
            "10.20.0.5".parse().unwrap(),
            3306,
            ip_proto::TCP,
        );
        let flow = Flow {
            key,
            initiator: Side::A,
            generation: 1,
            decision: Decision { action: Action::Allow, rule: Some(0), log: true },
            rule_name: None,
            tcp: TcpState::SynSent,
            started_ms: 0,
            last_seen_ms: 0,
            packets: 1,
            bytes: 60,
            cookie: 7,
            endpoint_id: None,
            attachment_id: None,
            server_name: None,
            pending: None,
        };
        FlowRecord {
            event: FlowEvent::Start,
            flow,
            src: None,
            dst: None,
            rule: Some("r".into()),
            server_name: None,
            generation: 1,
        }
    }

    fn wait_for(what: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !what() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_flow_that_showed_a_server_name_is_logged_with_it_and_others_without_the_field() {
        let mut named = record(40_000);
        named.server_name = Some("api.allowed.example".parse().unwrap());
        let line = serde_json::to_string(&JsonRecord::new(&named)).unwrap();
        assert!(line.contains("\"server_name\":\"api.allowed.example\""), "{line}");
        named.event = FlowEvent::End(FlowEnd::Expired);
        let line = serde_json::to_string(&JsonRecord::new(&named)).unwrap();
        assert!(line.contains("\"server_name\":\"api.allowed.example\""), "end: {line}");
        let line = serde_json::to_string(&JsonRecord::new(&record(40_001))).unwrap();
        assert!(!line.contains("server_name"), "{line}");
    }

    #[test]
    fn reopen_moves_on_to_a_new_file_at_the_path_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.jsonl");
        let rotated = dir.path().join("flows.jsonl.1");
        let (sender, writer) = FlowLogWriter::start(&path, None).unwrap();
        for port in 0..3 {
            sender.send(record(40_000 + port));
        }
        wait_for(|| writer.stats.written.load(Ordering::Relaxed) == 3);
        // logrotate renames the file, then signals; records may arrive in between.
        std::fs::rename(&path, &rotated).unwrap();
        sender.send(record(40_003));
        writer.reopen();
        wait_for(|| path.exists());
        for port in 4..6 {
            sender.send(record(40_000 + port));
        }
        drop(sender);
        writer.join();
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(old.lines().count() + new.lines().count(), 6, "{old}\n--\n{new}");
        assert!(old.lines().count() >= 3 && new.lines().count() >= 2, "{old}\n--\n{new}");
        assert!(new.contains("\"sport\":40005"));
    }

    #[test]
    fn beyond_the_rate_records_are_dropped_and_counted() {
        let output = Vec::new();
        let (sender, writer) = FlowLogWriter::start_with(Box::new(output), Some(5));
        for port in 0..50 {
            sender.send(record(40_000 + port));
        }
        drop(sender);
        let stats = Arc::clone(&writer.stats);
        writer.join();
        let written = stats.written.load(Ordering::Relaxed);
        assert!((5..=6).contains(&written), "{written} written at 5 a second");
        assert_eq!(stats.rate_limited.load(Ordering::Relaxed), 50 - written);
    }
}
