//! What `labelwall replay` reports: the counts of one replay ([`ReplayReport`]), printed as
//! JSON or as the few aligned lines of [`ReplayReport::to_text`]. Plain data: it must not
//! depend on the pipeline, the capture or the rest of replay.
//! Must not depend on: the pipeline, I/O.

use std::fmt::Write as _;

use serde::Serialize;

/// What `labelwall replay` prints (with `--json`, as one object).
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub capture: String,
    /// `pcap` or `pcapng`.
    pub format: &'static str,
    /// Link types of the capture's interfaces that carried packets.
    pub link_types: Vec<&'static str>,
    /// Packet records read.
    pub records: u64,
    /// Time from the first to the last record, by the capture's timestamps.
    pub capture_seconds: f64,
    /// GENEVE datagrams run through the pipeline.
    pub geneve: u64,
    pub skipped: SkippedCounts,
    /// As `labelwall_packets_total{verdict}`.
    pub verdicts: VerdictCounts,
    /// As `labelwall_drops_total{reason}`, every reason.
    pub drops: std::collections::BTreeMap<&'static str, u64>,
    /// Packets written to `--out` (or that would have been, without it).
    pub written: u64,
    /// Of those, datagrams sent back unchanged (allow and audit).
    pub sent_back: u64,
    /// Of those, rejects (TCP RST or ICMP) sent in the place of the packet.
    pub rejects_sent: u64,
    pub out: Option<String>,
    /// Packets per rule in policy order, then `default`.
    pub rule_hits: Vec<RuleHitCount>,
    pub flows: FlowCountsReport,
    pub flow_log: Option<FlowLogCounts>,
    /// The capture ended in the middle of a record.
    pub capture_truncated: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SkippedCounts {
    pub total: u64,
    /// Not IPv4 + UDP to the GENEVE port.
    pub not_geneve: u64,
    /// Outer IPv4 fragments (GWLB never fragments; the kernel would reassemble them).
    pub outer_fragment: u64,
    /// Outer IPv4 or UDP headers the kernel would have refused.
    pub outer_malformed: u64,
    /// Records cut short by the capture's snap length.
    pub truncated: u64,
    /// Packets the capturing host sent (known on Linux cooked captures and pcapng with flags).
    pub outgoing: u64,
    /// To the GENEVE port of an address other than `dataplane.listen`'s (when that is not
    /// 0.0.0.0): the appliance's socket would not have received them.
    pub other_address: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct VerdictCounts {
    pub allow: u64,
    pub deny: u64,
    pub reject: u64,
    pub audit: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleHitCount {
    pub rule: String,
    pub packets: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct FlowCountsReport {
    pub created: u64,
    pub evicted: u64,
    pub open_at_end: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct FlowLogCounts {
    pub written: u64,
    pub dropped: u64,
}

impl ReplayReport {
    /// The text form: a few aligned lines an operator reads at a glance.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let v = &self.verdicts;
        let s = &self.skipped;
        let _ = writeln!(
            text,
            "{}: {} records ({}, {}) over {:.3} s",
            self.capture,
            self.records,
            self.format,
            if self.link_types.is_empty() {
                "no packets".into()
            } else {
                self.link_types.join(", ")
            },
            self.capture_seconds
        );
        let _ = writeln!(text, "geneve      {}", self.geneve);
        let _ = writeln!(
            text,
            "skipped     {} (not_geneve {}, outer_fragment {}, outer_malformed {}, truncated {}, \
             outgoing {}, other_address {})",
            s.total,
            s.not_geneve,
            s.outer_fragment,
            s.outer_malformed,
            s.truncated,
            s.outgoing,
            s.other_address
        );
        let _ = writeln!(
            text,
            "verdicts    allow {}  deny {}  reject {}  audit {}",
            v.allow, v.deny, v.reject, v.audit
        );
        let drops: Vec<String> = self
            .drops
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let total_drops: u64 = self.drops.values().sum();
        if drops.is_empty() {
            let _ = writeln!(text, "drops       0");
        } else {
            let _ = writeln!(text, "drops       {total_drops} ({})", drops.join(", "));
        }
        let target = match &self.out {
            Some(out) => format!("written to {out}"),
            None => "not written (no --out)".to_string(),
        };
        let _ = writeln!(
            text,
            "sent back   {} packets {target}: {} unchanged, {} rejects",
            self.written, self.sent_back, self.rejects_sent
        );
        let _ = writeln!(
            text,
            "flows       {} created, {} evicted, {} open at the end",
            self.flows.created, self.flows.evicted, self.flows.open_at_end
        );
        if let Some(log) = &self.flow_log {
            let _ = writeln!(
                text,
                "flow log    {} records written, {} dropped",
                log.written, log.dropped
            );
        }
        let _ = writeln!(text, "rule hits");
        let width = self.rule_hits.iter().map(|h| h.rule.len()).max().unwrap_or(0);
        for hit in &self.rule_hits {
            let _ = writeln!(text, "  {:<width$}  {}", hit.rule, hit.packets);
        }
        text
    }
}
