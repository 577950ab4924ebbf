//! `labelwall replay`: runs a capture of GWLB GENEVE traffic (pcap or pcapng, as seen on an
//! appliance ENI) through the data plane's own [`Pipeline`] offline, writes what the appliance
//! would have sent back, and counts verdicts, drops and rule hits as `/metrics` would.
//!
//! This module owns reading captures (link types Ethernet, Linux cooked SLL and SLL2, raw IP),
//! picking out the outer IPv4 + UDP packets to the GENEVE port, and writing the replies.
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

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgWriter};
use pcap_file::{DataLink, PcapError, TsResolution};

use crate::config::Config;
use crate::control::ControlPlane;
use crate::flowlog::FlowLogWriter;
use crate::pipeline::{Mode, Outcome, Pipeline};
use crate::policy::Action;
use crate::reject::MAX_REJECT_LEN;
use crate::wire::DropReason;
use crate::wire::outer::{self, OUTER_HEADER_LEN, OuterAddressing};

mod capture;
mod report;

use capture::{Capture, Ended, Record};
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
            let (sender, writer) = FlowLogWriter::start(path)
                .with_context(|| format!("cannot open the flow log {}", path.display()))?;
            (Some(sender), Some(writer))
        }
        None => (None, None),
    };
    let control =
        ControlPlane::start(&config, 1, flow_log_writer.as_ref().map(|w| Arc::clone(&w.stats)))?;
    let state = control.state();
    // As `labelwall run` sets up its workers, with the whole flow budget in one pipeline.
    let flows = config.flows.per_pipeline(1);
    let pipeline =
        Pipeline::new(Mode::Inspect, 0, Some(Arc::clone(&state.snapshots)), flows, flow_log);
    let output = match &args.out {
        Some(path) => Some(Output::create(path)?),
        None => None,
    };
    let mut replayer = Replayer {
        pipeline,
        inject: vec![0u8; MAX_REJECT_LEN],
        frame: Vec::with_capacity(ETHERNET_HEADER_LEN + OUTER_HEADER_LEN + 9001),
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
    replayer.pipeline.finish();
    let flow_counts = replayer.pipeline.flow_counts();
    let Replayer { pipeline, output, counts, .. } = replayer;
    drop(pipeline); // the flow-log writer ends once the pipeline's sender is gone
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

/// Why a record was not run through the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotGeneve,
    OuterFragment,
    OuterMalformed,
    Truncated,
    Outgoing,
    OtherAddress,
}

impl Skip {
    const COUNT: usize = 6;

    const fn index(self) -> usize {
        self as usize
    }
}

/// Frame formats replay reads, by the link type of the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// LINKTYPE_ETHERNET (1): Ethernet II, with up to two VLAN tags.
    Ethernet,
    /// LINKTYPE_LINUX_SLL (113): `tcpdump -i any` before libpcap 1.10.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): `tcpdump -i any` since libpcap 1.10.
    LinuxSll2,
    /// LINKTYPE_RAW (101): the IP header first.
    RawIp,
    /// LINKTYPE_IPV4 (228): the IPv4 header first.
    RawIpv4,
}

impl LinkType {
    /// The link type of a LINKTYPE_ number, if replay reads it.
    pub fn from_number(number: u32) -> Option<LinkType> {
        match number {
            1 => Some(LinkType::Ethernet),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            101 => Some(LinkType::RawIp),
            228 => Some(LinkType::RawIpv4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LinkType::Ethernet => "ethernet",
            LinkType::LinuxSll => "linux_sll",
            LinkType::LinuxSll2 => "linux_sll2",
            LinkType::RawIp => "raw_ip",
            LinkType::RawIpv4 => "raw_ipv4",
        }
    }
}

/// An outer IPv4 + UDP packet to the GENEVE port, as the appliance's socket would receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterPacket<'a> {
    /// The GWLB node that sent it.
    pub src: Ipv4Addr,
    /// The appliance's address.
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// Ethernet source and destination, when the capture has them.
    pub macs: Option<([u8; 6], [u8; 6])>,
    /// The UDP payload: the GENEVE datagram.
    pub datagram: &'a [u8],
}

const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const SLL_HEADER_LEN: usize = 16;
const SLL2_HEADER_LEN: usize = 20;
/// `sll_pkttype` of a packet the capturing host sent.
const PACKET_OUTGOING: u16 = 4;
/// Ethernet addresses of replies written for captures that have none (locally administered).
const SYNTHETIC_APPLIANCE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SYNTHETIC_GWLB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Finds the GENEVE datagram in one captured frame, or says why there is none.
pub fn classify(link: LinkType, frame: &[u8], geneve_port: u16) -> Result<OuterPacket<'_>, Skip> {
    let (ethertype, ip, macs) = match link {
        LinkType::Ethernet => {
            if frame.len() < ETHERNET_HEADER_LEN {
                return Err(Skip::Truncated);
            }
            let mut at = 12;
            let mut ethertype = be16(frame, at);
            // Up to two VLAN tags (802.1Q, 802.1ad QinQ).
            for _ in 0..2 {
                if !ETHERTYPE_VLAN.contains(&ethertype) {
                    break;
                }
                at += 4;
                if frame.len() < at + 2 {
                    return Err(Skip::Truncated);
                }
                ethertype = be16(frame, at);
            }
            let mut dst = [0u8; 6];
            let mut src = [0u8; 6];
            dst.copy_from_slice(&frame[..6]);
            src.copy_from_slice(&frame[6..12]);
            (Some(ethertype), &frame[at + 2..], Some((src, dst)))
        }
        LinkType::LinuxSll => {
            if frame.len() < SLL_HEADER_LEN {
                return Err(Skip::Truncated);
            }
            if be16(frame, 0) == PACKET_OUTGOING {
                return Err(Skip::Outgoing);
            }
            (Some(be16(frame, 14)), &frame[SLL_HEADER_LEN..], None)
        }
        LinkType::LinuxSll2 => {
            if frame.len() < SLL2_HEADER_LEN {
                return Err(Skip::Truncated);
            }
            if u16::from(frame[10]) == PACKET_OUTGOING {
                return Err(Skip::Outgoing);
            }
            (Some(be16(frame, 0)), &frame[SLL2_HEADER_LEN..], None)
        }
        LinkType::RawIp | LinkType::RawIpv4 => (None, frame, None),
    };
    if ethertype.is_some_and(|t| t != ETHERTYPE_IPV4) {
        return Err(Skip::NotGeneve);
    }
    let mut packet = classify_ipv4(ip, geneve_port)?;
    packet.macs = macs;
    Ok(packet)
}

/// The outer IPv4 + UDP layers: what the kernel checks before the socket gets the datagram.
fn classify_ipv4(ip: &[u8], geneve_port: u16) -> Result<OuterPacket<'_>, Skip> {
    let Some(&first) = ip.first() else { return Err(Skip::Truncated) };
    if first >> 4 != 4 {
        return Err(Skip::NotGeneve); // outer IPv6 (GWLB's outer header is always IPv4)
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return Err(Skip::OuterMalformed);
    }
    if ip.len() < header_len {
        return Err(Skip::Truncated);
    }
    let total_len = usize::from(be16(ip, 2));
    if total_len < header_len {
        return Err(Skip::OuterMalformed);
    }
    if ip[9] != 17 {
        return Err(Skip::NotGeneve);
    }
    let fragment = be16(ip, 6);
    let more_fragments = fragment & 0x2000 != 0;
    let offset = fragment & 0x1fff;
    if more_fragments || offset != 0 {
        return Err(Skip::OuterFragment);
    }
    if total_len < header_len + 8 {
        return Err(Skip::OuterMalformed);
    }
    if ip.len() < header_len + 8 {
        return Err(Skip::Truncated);
    }
    let udp = &ip[header_len..];
    let dst_port = be16(udp, 2);
    if dst_port != geneve_port {
        return Err(Skip::NotGeneve);
    }
    // Bytes past the IPv4 total length (Ethernet padding) are not part of the packet.
    if ip.len() < total_len {
        return Err(Skip::Truncated);
    }
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < 8 || udp_len > total_len - header_len {
        return Err(Skip::OuterMalformed);
    }
    Ok(OuterPacket {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        src_port: be16(udp, 0),
        dst_port,
        macs: None,
        datagram: &udp[8..udp_len],
    })
}

/// Where the replies go.
enum Output {
    Pcap(PcapWriter<BufWriter<File>>),
    PcapNg(PcapNgWriter<BufWriter<File>>),
}

/// Snap length of the written capture: the largest frame replay writes, with room to spare.
const OUT_SNAPLEN: u32 = 262_144;

impl Output {
    fn create(path: &Path) -> anyhow::Result<Output> {
        let fail =
            |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot write {}: {e}", path.display());
        let file = BufWriter::new(File::create(path).map_err(|e| fail(&e))?);
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pcapng")) {
            let mut writer = PcapNgWriter::new(file).map_err(|e| fail(&e))?;
            let interface = InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: OUT_SNAPLEN,
                // Timestamps in nanoseconds, as the writer stores them.
                options: vec![InterfaceDescriptionOption::IfTsResol(9)],
            };
            writer.write_block(&Block::InterfaceDescription(interface)).map_err(|e| fail(&e))?;
            Ok(Output::PcapNg(writer))
        } else {
            let header = PcapHeader {
                snaplen: OUT_SNAPLEN,
                datalink: DataLink::ETHERNET,
                ts_resolution: TsResolution::NanoSecond,
                endianness: pcap_file::Endianness::native(),
                ..PcapHeader::default()
            };
            Ok(Output::Pcap(PcapWriter::with_header(file, header).map_err(|e| fail(&e))?))
        }
    }

    fn write(&mut self, timestamp_ns: u64, frame: &[u8]) -> Result<(), PcapError> {
        let timestamp = Duration::from_nanos(timestamp_ns);
        let len = frame.len() as u32;
        match self {
            Output::Pcap(writer) => {
                writer.write_packet(&PcapPacket::new(timestamp, len, frame)).map(drop)
            }
            Output::PcapNg(writer) => {
                let packet = EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp,
                    original_len: len,
                    data: frame.into(),
                    options: Vec::new(),
                };
                writer.write_block(&Block::EnhancedPacket(packet)).map(drop)
            }
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Output::Pcap(writer) => writer.into_writer().flush(),
            Output::PcapNg(writer) => writer.into_inner().flush(),
        }
    }
}

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
    inject: Vec<u8>,
    /// The reply being written (Ethernet + outer headers + datagram).
    frame: Vec<u8>,
    geneve_port: u16,
    listen_ip: Option<Ipv4Addr>,
    reply_port: u16,
    output: Option<Output>,
    /// The pipeline's clock: the capture's time in ms, never going back.
    clock_ms: u64,
    counts: Counts,
}

impl Replayer {
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
        let datagram = packet.datagram;
        // The reply and whether it is the datagram itself (else a reject in its place).
        let reply: Option<(&[u8], bool)> = match self.pipeline.process(datagram, &mut self.inject) {
            Outcome::SendBack(action) => {
                counts.verdicts[action.index()] += 1;
                Some((datagram, true))
            }
            Outcome::Withhold(action) => {
                counts.verdicts[action.index()] += 1;
                None
            }
            Outcome::Reject { len } => {
                counts.verdicts[Action::Reject.index()] += 1;
                Some((&self.inject[..len], false))
            }
            Outcome::Drop(reason) => {
                counts.drops[reason.index()] += 1;
                None
            }
        };
        let Some((reply, unchanged)) = reply else { return Ok(()) };
        // What the worker puts in front of it: addresses swapped, GWLB's port kept.
        let addressing = OuterAddressing {
            src: packet.dst,
            dst: packet.src,
            src_port: packet.src_port,
            dst_port: self.reply_port,
        };
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
        let (gwlb_mac, appliance_mac) =
            packet.macs.unwrap_or((SYNTHETIC_GWLB_MAC, SYNTHETIC_APPLIANCE_MAC));
        self.frame.clear();
        self.frame.extend_from_slice(&gwlb_mac);
        self.frame.extend_from_slice(&appliance_mac);
        self.frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        self.frame.extend_from_slice(&header);
        self.frame.extend_from_slice(reply);
        output
            .write(record.timestamp_ns, &self.frame)
            .map_err(|e| anyhow::anyhow!("cannot write the replies: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 6081;

    /// IPv4 (no options) + UDP from 10.0.0.9:40000 to 10.0.1.5:`dport` around `payload`.
    fn ipv4_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut packet = Vec::new();
        let builder =
            etherparse::PacketBuilder::ipv4([10, 0, 0, 9], [10, 0, 1, 5], 64).udp(40000, dport);
        builder.write(&mut packet, payload).unwrap();
        packet
    }

    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame =
            vec![0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn sll(packet_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = packet_type.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0, 1, 0, 6, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0, 0]);
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn sll2(packet_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = ETHERTYPE_IPV4.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, packet_type, 6]);
        frame.extend_from_slice(&[0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0, 0]);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn every_link_type_yields_the_same_datagram_and_addressing() {
        let datagram = [7u8; 60];
        let ip = ipv4_udp(PORT, &datagram);
        let frames = [
            (LinkType::Ethernet, ethernet(0x0800, &ip)),
            (LinkType::LinuxSll, sll(0, &ip)),
            (LinkType::LinuxSll2, sll2(0, &ip)),
            (LinkType::RawIp, ip.clone()),
            (LinkType::RawIpv4, ip.clone()),
        ];
        for (link, frame) in &frames {
            let packet = classify(*link, frame, PORT).unwrap_or_else(|e| panic!("{link:?}: {e:?}"));
            assert_eq!(packet.datagram, &datagram[..], "{link:?}");
            assert_eq!(packet.src, Ipv4Addr::new(10, 0, 0, 9));
            assert_eq!(packet.dst, Ipv4Addr::new(10, 0, 1, 5));
            assert_eq!((packet.src_port, packet.dst_port), (40000, PORT));
            assert_eq!(packet.macs.is_some(), *link == LinkType::Ethernet);
        }
        let ethernet = classify(LinkType::Ethernet, &frames[0].1, PORT).unwrap();
        assert_eq!(ethernet.macs, Some(([0xbb; 6], [0xaa; 6])), "(source, destination)");
    }

    #[test]
    fn vlan_tagged_ethernet_frames_are_read_through_both_tags() {
        let ip = ipv4_udp(PORT, &[1, 2, 3, 4]);
        let mut tagged = vec![0x00, 0x64, 0x81, 0x00, 0x00, 0xc8, 0x08, 0x00];
        tagged.extend_from_slice(&ip);
        let frame = ethernet(0x88a8, &tagged);
        assert_eq!(classify(LinkType::Ethernet, &frame, PORT).unwrap().datagram, &[1, 2, 3, 4]);
    }

    #[test]
    fn ethernet_padding_after_the_ip_packet_is_not_part_of_the_datagram() {
        let mut frame = ethernet(0x0800, &ipv4_udp(PORT, &[9; 3]));
        frame.extend_from_slice(&[0; 20]);
        assert_eq!(classify(LinkType::Ethernet, &frame, PORT).unwrap().datagram, &[9; 3]);
    }

    #[test]
    fn other_traffic_is_skipped_as_not_geneve() {
        let cases = [
            ethernet(0x0806, &[0; 28]),                // ARP
            ethernet(0x86dd, &[0x60; 48]),             // IPv6
            ethernet(0x0800, &ipv4_udp(53, &[0; 12])), // UDP to another port
            {
                let mut tcp = Vec::new();
                etherparse::PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
                    .tcp(1, PORT, 0, 100)
                    .write(&mut tcp, &[])
                    .unwrap();
                ethernet(0x0800, &tcp) // TCP to the GENEVE port
            },
        ];
        for frame in &cases {
            assert_eq!(classify(LinkType::Ethernet, frame, PORT), Err(Skip::NotGeneve));
        }
        assert_eq!(classify(LinkType::RawIp, &[0x60; 60], PORT), Err(Skip::NotGeneve));
    }

    #[test]
    fn outer_fragments_are_skipped_as_fragments() {
        for (flags, offset) in [(0x2000u16, 0u16), (0, 185), (0x2000, 8)] {
            let mut ip = ipv4_udp(PORT, &[0; 40]);
            ip[6..8].copy_from_slice(&(flags | offset).to_be_bytes());
            assert_eq!(classify(LinkType::RawIp, &ip, PORT), Err(Skip::OuterFragment));
        }
        // Don't-fragment alone is no fragment.
        let mut ip = ipv4_udp(PORT, &[0; 40]);
        ip[6] = 0x40;
        assert!(classify(LinkType::RawIp, &ip, PORT).is_ok());
    }

    #[test]
    fn records_cut_short_anywhere_are_skipped_as_truncated() {
        let frame = ethernet(0x0800, &ipv4_udp(PORT, &[5; 100]));
        // Cut inside the Ethernet header, the IPv4 header, the UDP header and the payload.
        for len in [0, 10, 14, 20, 34, 38, 60, frame.len() - 1] {
            assert_eq!(
                classify(LinkType::Ethernet, &frame[..len], PORT),
                Err(Skip::Truncated),
                "cut at {len}"
            );
        }
        assert_eq!(classify(LinkType::LinuxSll, &[0; 15], PORT), Err(Skip::Truncated));
        assert_eq!(classify(LinkType::LinuxSll2, &[0; 19], PORT), Err(Skip::Truncated));
        let ip = ipv4_udp(PORT, &[5; 100]);
        assert_eq!(classify(LinkType::RawIp, &ip[..ip.len() - 50], PORT), Err(Skip::Truncated));
    }

    #[test]
    fn outer_headers_the_kernel_would_refuse_are_skipped_as_malformed() {
        let good = ipv4_udp(PORT, &[0; 16]);
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        let mut short_total = good.clone();
        short_total[2..4].copy_from_slice(&24u16.to_be_bytes());
        let mut long_udp = good.clone();
        long_udp[24..26].copy_from_slice(&200u16.to_be_bytes());
        let mut tiny_udp = good;
        tiny_udp[24..26].copy_from_slice(&4u16.to_be_bytes());
        for ip in [short_ihl, short_total, long_udp, tiny_udp] {
            assert_eq!(classify(LinkType::RawIp, &ip, PORT), Err(Skip::OuterMalformed));
        }
    }

    #[test]
    fn packets_the_host_sent_are_skipped_on_linux_cooked_captures() {
        let ip = ipv4_udp(PORT, &[0; 8]);
        assert_eq!(classify(LinkType::LinuxSll, &sll(4, &ip), PORT), Err(Skip::Outgoing));
        assert_eq!(classify(LinkType::LinuxSll2, &sll2(4, &ip), PORT), Err(Skip::Outgoing));
        // 0 = to us, 1 = broadcast, 3 = to another host: all arrived.
        for packet_type in [0u8, 1, 3] {
            assert!(classify(LinkType::LinuxSll, &sll(packet_type.into(), &ip), PORT).is_ok());
            assert!(classify(LinkType::LinuxSll2, &sll2(packet_type, &ip), PORT).is_ok());
        }
    }

    #[test]
    fn link_type_numbers_map_to_what_replay_reads_and_nothing_else() {
        assert_eq!(LinkType::from_number(1), Some(LinkType::Ethernet));
        assert_eq!(LinkType::from_number(113), Some(LinkType::LinuxSll));
        assert_eq!(LinkType::from_number(276), Some(LinkType::LinuxSll2));
        assert_eq!(LinkType::from_number(101), Some(LinkType::RawIp));
        assert_eq!(LinkType::from_number(228), Some(LinkType::RawIpv4));
        for other in [0, 105, 127, 229, 147] {
            assert_eq!(LinkType::from_number(other), None, "{other}");
        }
    }
}
