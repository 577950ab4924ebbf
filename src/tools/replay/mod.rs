//! `labelwall replay`: runs a capture of GWLB GENEVE traffic (pcap or pcapng, as seen on an
//! appliance ENI) through the data plane's own [`Pipeline`] offline, writes what the appliance
//! would have sent back, and counts verdicts, drops and rule hits as `/metrics` would. This file
//! owns the command (its arguments, [`run`], [`replay`]) and the replay loop (`Replayer`: a
//! record in, its outcome counted and its reply written); beside it are reading the capture
//! (`capture.rs`), the outer headers (`link.rs`), the writer (`output.rs`) and the report
//! (`report.rs`). As every tool, it must not depend on the data plane's workers and sockets,
//! nor on anything the product does not make public: it uses the pipeline, the wire formats,
//! the control plane and the config as an outsider would.
//!
//! Invariants: every GENEVE datagram is decided by the same [`Pipeline::process`] as in
//! `labelwall run`, under the snapshot [`ControlPlane::start`] builds from the same config, with
//! the capture's timestamps as the pipeline's clock (so flows time out as they did when the
//! capture was taken); nothing here decides a verdict. What the appliance would never have
//! received as GENEVE (other traffic, outer IPv4 fragments, records cut short by the snap
//! length, packets the host itself sent, packets to another address than a specific
//! `dataplane.listen`) is counted as skipped and never judged. Captures are streamed: memory
//! does not grow with the capture's size.
//!
//! Limits: outer checksums are not verified (captures taken with checksum offload carry
//! partial ones); on Ethernet and raw-IP captures the direction is unknown, so when
//! `reply_port` equals the GENEVE port and `dataplane.listen` is 0.0.0.0, capture only what
//! arrives (`tcpdump -Q in`, or `dst host` the appliance), or the appliance's own replies are
//! replayed as if GWLB had sent them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::control::ControlPlane;
use crate::flowlog::{FlowLogSender, FlowLogWriter};
use crate::pipeline::{Mode, Outcome, Pipeline};
use crate::policy::Action;
use crate::reject::MAX_REJECT_LEN;
use crate::wire::DropReason;
use crate::wire::outer::{self, OUTER_HEADER_LEN, OuterAddressing};

mod capture;
mod link;
mod output;
mod report;

use capture::{Capture, Ended, Record};
use link::{Skip, classify};
use output::Output;
pub use report::{
    FlowCountsReport, FlowLogCounts, ReplayReport, RuleHitCount, SkippedCounts, VerdictCounts,
};

/// Arguments of `labelwall replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Path of labelwall.yaml (policy and label sources, as `labelwall run` loads them).
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// The capture: pcap or pcapng with Ethernet, Linux cooked (SLL, SLL2) or raw IP frames.
    #[arg(value_name = "CAPTURE.pcap")]
    pub capture: PathBuf,
    /// Write the packets that would have been sent back to GWLB (allowed and audited packets,
    /// and the rejects built in their place), with outer IPv4 + UDP and Ethernet headers;
    /// pcapng when the name ends in `.pcapng`, else pcap.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the replay's flow log here (`-` = stdout); the config's `flow_log` is not used,
    /// so that a replay never writes into the appliance's own flow log.
    #[arg(long, value_name = "FILE")]
    pub flow_log: Option<PathBuf>,
    /// The GENEVE UDP port GWLB sends to [default: the port of `dataplane.listen`].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `labelwall replay` and prints its report.
pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    let report = replay(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// Replays the capture and returns what happened (the library entry point of the command).
pub fn replay(args: &ReplayArgs) -> anyhow::Result<ReplayReport> {
    let config = Config::load(&args.config)?;
    // The capture is opened first: a wrong path fails before anything is started.
    let mut capture = Capture::open(&args.capture)?;
    if let Some(out) = &args.out
        && same_file(out, &args.capture)
    {
        bail!("--out {} is the capture itself: name another file", out.display());
    }
    let mut warnings = Vec::new();
    if !config.labels.kubernetes.is_empty() {
        warnings.push(
            "`labels.kubernetes` sources are not read by replay: only the inventory files label \
             addresses"
                .to_string(),
        );
    }
    let (flow_log, flow_log_writer) = match &args.flow_log {
        Some(path) => {
            // Offline: as fast as the capture is read, no rate limit.
            let (sender, writer) = FlowLogWriter::start(path, None)
                .with_context(|| format!("cannot open the flow log {}", path.display()))?;
            (Some(sender), Some(writer))
        }
        None => (None, None),
    };
    let control =
        ControlPlane::start(&config, 1, flow_log_writer.as_ref().map(|w| Arc::clone(&w.stats)))?;
    let state = control.state();
    // As `labelwall run` sets up its workers, with the whole flow budget in one pipeline.
    let flows = config.pipeline_settings(1);
    let pipeline = Pipeline::new(
        Mode::Inspect,
        0,
        Some(Arc::clone(&state.snapshots)),
        flows,
        flow_log.is_some(),
    );
    let output = match &args.out {
        Some(path) => Some(Output::create(path)?),
        None => None,
    };
    let mut replayer = Replayer {
        pipeline,
        flow_log,
        inject: vec![0u8; MAX_REJECT_LEN],
        release: vec![0u8; crate::pipeline::MAX_GENEVE_DATAGRAM],
        geneve_port: args.port.unwrap_or(config.dataplane.listen.port()),
        // A socket bound to one address gets only what is sent to it.
        listen_ip: Some(*config.dataplane.listen.ip()).filter(|ip| !ip.is_unspecified()),
        reply_port: config.dataplane.reply_port,
        output,
        clock_ms: 0,
        counts: Counts::default(),
    };
    let ended = capture.for_each(|record| replayer.handle(&record))?;
    if let Ended::Truncated = ended {
        warnings.push(format!(
            "{} ends in the middle of a record (cut short while it was written?): the {} \
             records before it were replayed",
            args.capture.display(),
            capture.records
        ));
    }
    let open_at_end = replayer.pipeline.flow_counts().active;
    // End every flow, as `labelwall run` does when it stops: the flow log gets end records.
    let flow_log = &replayer.flow_log;
    replayer.pipeline.finish(|record| {
        if let Some(log) = flow_log {
            log.send(record);
        }
    });
    let flow_counts = replayer.pipeline.flow_counts();
    let Replayer { flow_log, output, counts, .. } = replayer;
    drop(flow_log); // the flow-log writer ends once its sender is gone
    if let Some(output) = output {
        output.finish().with_context(|| format!("cannot write {}", display(&args.out)))?;
    }
    let flow_log = flow_log_writer.map(|writer| {
        let stats = Arc::clone(&writer.stats);
        writer.join();
        FlowLogCounts {
            written: stats.written.load(Ordering::Relaxed),
            dropped: stats.dropped.load(Ordering::Relaxed),
        }
    });
    if let Some(log) = &flow_log
        && log.dropped > 0
    {
        warnings.push(format!(
            "the flow log is incomplete: {} records were dropped because its writer fell behind",
            log.dropped
        ));
    }
    if counts.geneve == 0 && counts.skipped[Skip::OtherAddress.index()] > 0 {
        warnings.push(format!(
            "every GENEVE packet in the capture went to another address than \
             dataplane.listen's {}: replay with a config that listens on 0.0.0.0 to take them",
            config.dataplane.listen.ip()
        ));
    }
    if counts.geneve == 0 && counts.skipped[Skip::Outgoing.index()] > 0 {
        warnings.push(
            "every GENEVE packet in the capture is marked as sent by this host, and sent \
             packets are skipped (a capture on lo with `-i any` marks all of them so)"
                .to_string(),
        );
    }

    let snapshot = state.snapshot();
    let mut rule_hits: Vec<RuleHitCount> = snapshot
        .policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| RuleHitCount {
            rule: rule.name.to_string(),
            packets: snapshot.rule_hits.total(Some(i)),
        })
        .collect();
    rule_hits.push(RuleHitCount {
        rule: "default".to_string(),
        packets: snapshot.rule_hits.total(None),
    });
    let verdict = |action: Action| counts.verdicts[action.index()];
    Ok(ReplayReport {
        capture: args.capture.display().to_string(),
        format: capture.format,
        link_types: capture.link_types.iter().map(|l| l.name()).collect(),
        records: capture.records,
        capture_seconds: counts.span_seconds(),
        geneve: counts.geneve,
        skipped: SkippedCounts {
            total: counts.skipped.iter().sum(),
            not_geneve: counts.skipped[Skip::NotGeneve.index()],
            outer_fragment: counts.skipped[Skip::OuterFragment.index()],
            outer_malformed: counts.skipped[Skip::OuterMalformed.index()],
            truncated: counts.skipped[Skip::Truncated.index()],
            outgoing: counts.skipped[Skip::Outgoing.index()],
            other_address: counts.skipped[Skip::OtherAddress.index()],
        },
        verdicts: VerdictCounts {
            allow: verdict(Action::Allow),
            deny: verdict(Action::Deny),
            reject: verdict(Action::Reject),
            audit: verdict(Action::Audit),
        },
        drops: DropReason::ALL.iter().map(|r| (r.as_str(), counts.drops[r.index()])).collect(),
        written: counts.sent_back + counts.rejects_sent,
        sent_back: counts.sent_back,
        rejects_sent: counts.rejects_sent,
        out: args.out.as_ref().map(|p| p.display().to_string()),
        rule_hits,
        flows: FlowCountsReport {
            created: flow_counts.created,
            evicted: flow_counts.evicted,
            open_at_end,
        },
        flow_log,
        capture_truncated: matches!(ended, Ended::Truncated),
        warnings,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn display(path: &Option<PathBuf>) -> String {
    path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
}

/// What the replay counts as it goes: the report's numbers.
#[derive(Debug, Default)]
struct Counts {
    geneve: u64,
    skipped: [u64; Skip::COUNT],
    verdicts: [u64; Action::COUNT],
    drops: [u64; DropReason::COUNT],
    sent_back: u64,
    rejects_sent: u64,
    first_ns: Option<u64>,
    last_ns: u64,
}

impl Counts {
    fn span_seconds(&self) -> f64 {
        self.first_ns.map_or(0.0, |first| self.last_ns.saturating_sub(first) as f64 / 1e9)
    }
}

/// The pipeline and what surrounds it in a data-plane worker, fed from a file.
struct Replayer {
    pipeline: Pipeline,
    /// Where the pipeline's flow records go after each datagram.
    flow_log: Option<FlowLogSender>,
    inject: Vec<u8>,
    /// Where a datagram a pending flow's verdict releases is copied.
    release: Vec<u8>,
    geneve_port: u16,
    listen_ip: Option<Ipv4Addr>,
    reply_port: u16,
    output: Option<Output>,
    /// The pipeline's clock: the capture's time in ms, never going back.
    clock_ms: u64,
    counts: Counts,
}

impl Replayer {
    /// Writes what verdicts on pending flows released (held datagrams in order, or a
    /// reject's RSTs), with the Ethernet addresses of the datagram at hand.
    fn write_releases(
        &mut self,
        timestamp_ns: u64,
        macs: Option<([u8; 6], [u8; 6])>,
    ) -> anyhow::Result<()> {
        while let Some((len, origin)) = self.pipeline.pop_release(&mut self.release) {
            let addressing = OuterAddressing::from_origin(origin);
            let mut header = [0u8; OUTER_HEADER_LEN];
            if outer::emit(&mut header, &addressing, len).is_none() {
                self.counts.drops[DropReason::SendFailed.index()] += 1;
                continue;
            }
            self.counts.sent_back += 1;
            if let Some(output) = &mut self.output {
                output
                    .write_reply(timestamp_ns, macs, &header, &self.release[..len])
                    .map_err(|e| anyhow::anyhow!("cannot write the replies: {e}"))?;
            }
        }
        Ok(())
    }

    fn handle(&mut self, record: &Record<'_>) -> anyhow::Result<()> {
        let counts = &mut self.counts;
        counts.first_ns.get_or_insert(record.timestamp_ns);
        counts.last_ns = counts.last_ns.max(record.timestamp_ns);
        let packet = match classify(record.link, record.data, self.geneve_port) {
            Ok(_) if record.outgoing => Err(Skip::Outgoing),
            Ok(packet) if self.listen_ip.is_some_and(|ip| ip != packet.dst) => {
                Err(Skip::OtherAddress)
            }
            other => other,
        };
        let packet = match packet {
            Ok(packet) => packet,
            Err(skip) => {
                counts.skipped[skip.index()] += 1;
                return Ok(());
            }
        };
        counts.geneve += 1;
        self.clock_ms = self.clock_ms.max(record.timestamp_ns / 1_000_000);
        self.pipeline.begin_batch(self.clock_ms);
        self.write_releases(record.timestamp_ns, packet.macs)?;
        // What the worker puts in front of it: addresses swapped, GWLB's port kept.
        let addressing = OuterAddressing {
            src: packet.dst,
            dst: packet.src,
            src_port: packet.src_port,
            dst_port: self.reply_port,
        };
        self.pipeline.set_origin(addressing.to_origin());
        let datagram = packet.datagram;
        let counts = &mut self.counts;
        // The reply and whether it is the datagram itself (else a reject in its place).
        // The reply's length and whether it is the datagram itself (else a reject in the
        // inject buffer).
        let reply: Option<(usize, bool)> = match self.pipeline.process(datagram, &mut self.inject) {
            Outcome::SendBack(action) => {
                counts.verdicts[action.index()] += 1;
                Some((datagram.len(), true))
            }
            Outcome::Withhold(action) => {
                counts.verdicts[action.index()] += 1;
                None
            }
            Outcome::Reject { len } => {
                counts.verdicts[Action::Reject.index()] += 1;
                Some((len, false))
            }
            Outcome::Drop(reason) => {
                counts.drops[reason.index()] += 1;
                None
            }
            // Held until its flow's server name is read: written when a verdict releases it.
            Outcome::Held => None,
        };
        if let Some(log) = &self.flow_log {
            log.take_from(&mut self.pipeline);
        }
        // What a verdict let go goes before the datagram that brought it.
        self.write_releases(record.timestamp_ns, packet.macs)?;
        let counts = &mut self.counts;
        let held = self.pipeline.take_held_verdicts();
        for (verdict, (packets, _)) in counts.verdicts.iter_mut().zip(held.0) {
            *verdict += packets;
        }
        let Some((len, unchanged)) = reply else { return Ok(()) };
        let reply = if unchanged { datagram } else { &self.inject[..len] };
        let mut header = [0u8; OUTER_HEADER_LEN];
        if outer::emit(&mut header, &addressing, reply.len()).is_none() {
            counts.drops[DropReason::SendFailed.index()] += 1;
            return Ok(());
        }
        if unchanged {
            counts.sent_back += 1;
        } else {
            counts.rejects_sent += 1;
        }
        let Some(output) = &mut self.output else { return Ok(()) };
        output
            .write_reply(record.timestamp_ns, packet.macs, &header, reply)
            .map_err(|e| anyhow::anyhow!("cannot write the replies: {e}"))?;
        Ok(())
    }
}
