//! Prometheus metrics: read at scrape time from the data-plane workers' published counters,
//! so the per-packet path never touches the registry.
//! Must not depend on: the data plane's internals (it reads what workers publish), the
//! pipeline.
//!
//! Names follow SPEC.md (`labelwall_packets_total{verdict}`, `labelwall_drops_total{reason}`,
//! ...); per-worker figures carry a `worker` label.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::control::ControlState;
use crate::dataplane::{self, Fallback, ReceivePath, SendPath, SocketEvent, WorkerStatus};
use crate::net::nexthop::NextHops;
use crate::pipeline::NameResult;
use crate::policy::Action;
use crate::wire::DropReason;

/// Builds the registry the admin server renders.
pub fn registry(
    workers: Arc<[Arc<WorkerStatus>]>,
    next_hops: Option<Arc<NextHops>>,
    receive_path: ReceivePath,
    control: Arc<ControlState>,
) -> Registry {
    let mut registry = Registry::default();
    let started = Instant::now();
    let collector = DataplaneCollector { workers, next_hops, receive_path, started };
    registry.register_collector(Box::new(collector));
    registry.register_collector(Box::new(ControlCollector { control }));
    registry
}

/// Renders the registry in the Prometheus text format 0.0.4, the content type `/metrics`
/// declares.
pub fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut text, registry);
    openmetrics_to_prometheus(&text)
}

/// prometheus-client writes OpenMetrics: a counter family `x` has `# HELP x` and `# TYPE x
/// counter` over samples named `x_total`. In the Prometheus text format HELP and TYPE name
/// the samples, so a Prometheus scraping text 0.0.4 (and `promtool check metrics`) would
/// see `x_total` without help or type. The sample lines, hence the metric names, are the
/// same in both formats.
fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 1024);
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if let Some(descriptor) = line.strip_prefix("# TYPE ") {
            let (family, kind) = descriptor.split_once(' ').unwrap_or((descriptor, ""));
            let name = match kind {
                "counter" if !family.ends_with("_total") => format!("{family}_total"),
                _ => family.to_string(),
            };
            if let Some(help) = help.take() {
                match help["# HELP ".len()..].strip_prefix(family) {
                    Some(text) => out.push_str(&format!("# HELP {name}{text}\n")),
                    None => out.push_str(&format!("{help}\n")),
                }
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(help) = help.take() {
            out.push_str(help);
            out.push('\n');
        }
        if line != "# EOF" {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[derive(Debug)]
struct DataplaneCollector {
    workers: Arc<[Arc<WorkerStatus>]>,
    next_hops: Option<Arc<NextHops>>,
    receive_path: ReceivePath,
    started: Instant,
}

fn counter<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, i64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn single_counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> fmt::Result {
    let metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn single_gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let per_worker: Vec<_> = self.workers.iter().map(|w| w.counters()).collect();
        let total = dataplane::total(&self.workers);
        let e = &mut encoder;

        counter(
            e,
            "labelwall_packets",
            "Inner packets judged, by verdict (allow and audit are sent back to GWLB).",
            Action::ALL.map(|v| ([("verdict", v.as_str())], total.verdict_packets(v))),
        )?;
        counter(
            e,
            "labelwall_bytes",
            "GENEVE datagram bytes judged, by verdict.",
            Action::ALL.map(|v| ([("verdict", v.as_str())], total.verdict_bytes(v))),
        )?;
        single_counter(
            e,
            "labelwall_flows_created",
            "Flows the workers started tracking.",
            total.flows_created(),
        )?;
        single_counter(
            e,
            "labelwall_flow_evictions",
            "Flows evicted because a worker's flow table was full (judged again on their next packet).",
            total.flows_evicted(),
        )?;
        single_gauge(
            e,
            "labelwall_flows_active",
            "Flows tracked now, over all workers.",
            total.flows_active() as i64,
        )?;
        single_gauge(
            e,
            "labelwall_fragments_tracked",
            "Fragmented datagrams whose first fragment's ports are remembered, over all workers.",
            total.fragments_active() as i64,
        )?;
        single_counter(
            e,
            "labelwall_fragments_refused",
            "First fragments not remembered because their source held its share of the table.",
            total.fragments_refused(),
        )?;
        single_gauge(
            e,
            "labelwall_flows_pending",
            "Flows waiting for their server name (policy domains groups), over all workers.",
            total.flows_pending() as i64,
        )?;
        counter(
            e,
            "labelwall_server_names",
            "Flows that waited for their server name, by how the reading ended: found, none \
             (the bytes show none), too_long (names.max_bytes), timeout (names.timeout), \
             picked_up_mid_flow (first seen after its SYN), pending_full (names.max_pending).",
            NameResult::ALL.map(|r| ([("result", r.label())], total.server_names(r))),
        )?;
        single_counter(
            e,
            "labelwall_rejects_suppressed",
            "Rejects (TCP RSTs, ICMP errors) withheld because a worker reached dataplane.reject_limit.",
            total.rejects_suppressed(),
        )?;
        counter(
            e,
            "labelwall_drops",
            "Datagrams dropped without a reply, by layer (class) and cause (reason).",
            DropReason::ALL
                .map(|r| ([("class", r.class()), ("reason", r.as_str())], total.drops(r))),
        )?;
        counter(
            e,
            "labelwall_send_packets",
            "Packets sent back to GWLB by path: gso (a train as one segmented UDP send from a \
             per-port socket), raw (the raw IPv4 socket, one packet per message) or packet (the \
             packet socket, one Ethernet frame per message).",
            SendPath::ALL.map(|path| ([("path", path.as_str())], total.path_packets(path))),
        )?;
        counter(
            e,
            "labelwall_send_calls",
            "Send system calls by path (packets / calls = packets per call).",
            SendPath::ALL.map(|path| ([("path", path.as_str())], total.path_calls(path))),
        )?;
        let (packet, raw) = self.next_hops.as_ref().map_or((0, 0), |hops| hops.counts());
        gauge(
            e,
            "labelwall_next_hops",
            "(Appliance address, GWLB node) pairs single packets are sent to, by path: packet \
             (the kernel knows the next hop's hardware address) or raw (it does not, yet; or \
             the route is not over Ethernet). Both 0 when the packet socket is off.",
            [("packet", packet), ("raw", raw)].map(|(path, n)| ([("path", path)], n as i64)),
        )?;
        counter(
            e,
            "labelwall_send_fallbacks",
            "Datagrams of a train sent through the raw socket instead of one segmented send, by cause.",
            Fallback::ALL.map(|r| ([("reason", r.as_str())], total.fallbacks(r))),
        )?;
        counter(
            e,
            "labelwall_send_socket_events",
            "Per-port send sockets opened, evicted (cache full) or that could not be opened.",
            SocketEvent::ALL.map(|ev| ([("event", ev.as_str())], total.socket_events(ev))),
        )?;
        single_gauge(
            e,
            "labelwall_send_sockets",
            "Per-port send sockets open now, over all workers.",
            total.sockets_open() as i64,
        )?;
        let workers = || per_worker.iter().enumerate().map(|(i, c)| (i.to_string(), c));
        counter(
            e,
            "labelwall_worker_received_packets",
            "GENEVE datagrams received, per data-plane worker.",
            workers().map(|(w, c)| ([("worker", w)], c.rx_datagrams())),
        )?;
        counter(
            e,
            "labelwall_worker_received_bytes",
            "GENEVE datagram bytes received, per data-plane worker.",
            workers().map(|(w, c)| ([("worker", w)], c.rx_bytes())),
        )?;
        counter(
            e,
            "labelwall_worker_sent_packets",
            "Packets sent back to GWLB, per data-plane worker.",
            workers().map(|(w, c)| ([("worker", w)], c.tx_packets())),
        )?;
        counter(
            e,
            "labelwall_worker_sent_bytes",
            "Bytes sent back to GWLB (outer headers included), per data-plane worker.",
            workers().map(|(w, c)| ([("worker", w)], c.tx_bytes())),
        )?;
        counter(
            e,
            "labelwall_worker_receive_batches",
            "Receive system calls that returned data, per worker (packets / batches = batch fill).",
            workers().map(|(w, c)| ([("worker", w)], c.rx_batches())),
        )?;
        counter(
            e,
            "labelwall_worker_receive_errors",
            "Receive system calls that failed, per worker.",
            workers().map(|(w, c)| ([("worker", w)], c.rx_errors())),
        )?;
        counter(
            e,
            "labelwall_worker_drops",
            "Datagrams dropped, per worker (all reasons).",
            workers().map(|(w, c)| ([("worker", w)], c.total_drops())),
        )?;
        gauge(
            e,
            "labelwall_worker_running",
            "1 while the data-plane worker is receiving.",
            self.workers
                .iter()
                .enumerate()
                .map(|(i, w)| ([("worker", i.to_string())], i64::from(w.is_running()))),
        )?;
        let path = &self.receive_path;
        gauge(
            e,
            "labelwall_dataplane_io_info",
            "Always 1; how GENEVE is received: dataplane.io as configured, the path taken \
             (auto falls back to sockets where rings cannot work), the rings' interface.",
            [(
                [
                    ("configured", path.configured.as_str()),
                    ("io", path.taken.as_str()),
                    ("interface", path.interface.as_deref().unwrap_or("")),
                ],
                1,
            )],
        )?;
        gauge(
            e,
            "labelwall_build_info",
            "Always 1; the labels tell the version.",
            [([("version", env!("CARGO_PKG_VERSION"))], 1)],
        )?;
        single_gauge(
            e,
            "labelwall_uptime_seconds",
            "Seconds since the appliance started.",
            self.started.elapsed().as_secs() as i64,
        )?;
        Ok(())
    }
}

#[derive(Debug)]
struct ControlCollector {
    control: Arc<ControlState>,
}

impl Collector for ControlCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let control = &self.control;
        let snapshot = control.snapshot();
        let e = &mut encoder;
        single_gauge(
            e,
            "labelwall_policy_generation",
            "Generation of the published snapshot (policy and labels); grows with every change.",
            snapshot.generation as i64,
        )?;
        counter(
            e,
            "labelwall_policy_reloads",
            "Policy reloads by result; a failed reload keeps the running policy.",
            [
                ([("result", "ok")], control.reloads_ok.load(Ordering::Relaxed)),
                ([("result", "error")], control.reloads_error.load(Ordering::Relaxed)),
            ],
        )?;
        single_gauge(
            e,
            "labelwall_identities",
            "Distinct identities (cluster, namespace, kind, labels) in the label table.",
            snapshot.labels.identity_count() as i64,
        )?;
        single_gauge(
            e,
            "labelwall_endpoints",
            "Addresses and networks in the label table.",
            snapshot.labels.endpoint_count() as i64,
        )?;
        let sources = control.sources.lock().unwrap_or_else(|e| e.into_inner()).clone();
        counter(
            e,
            "labelwall_label_conflicts",
            "Times an address became contested, for the source whose claim joined another's: \
             inside a source (a pod and a pod or a node of one cluster; an inventory file's \
             repeated address) or between sources. The owner is chosen by rank (connected, not \
             terminating, newest, config order).",
            sources.iter().map(|s| ([("source", s.name.clone())], s.conflicts)),
        )?;
        gauge(
            e,
            "labelwall_label_source_synced",
            "1 while the label source is in sync with its origin.",
            sources.iter().map(|s| ([("source", s.name.clone())], i64::from(s.synced))),
        )?;
        gauge(
            e,
            "labelwall_label_source_last_sync_seconds",
            "Seconds since the label source last synced successfully.",
            sources.iter().map(|s| {
                let age = s.last_sync.map_or(-1, |t| t.elapsed().as_secs() as i64);
                ([("source", s.name.clone())], age)
            }),
        )?;
        gauge(
            e,
            "labelwall_label_source_stale_seconds",
            "Seconds the label source has been lost (0 while connected): its entries are the \
             last it reported, or withdrawn past its max_stale.",
            sources.iter().map(|s| {
                let stale = s.lost_since.map_or(0, |t| t.elapsed().as_secs() as i64);
                ([("source", s.name.clone())], stale)
            }),
        )?;
        gauge(
            e,
            "labelwall_label_source_withdrawn",
            "1 while the label source's entries are withdrawn (lost longer than its max_stale).",
            sources.iter().map(|s| ([("source", s.name.clone())], i64::from(s.withdrawn))),
        )?;
        counter(
            e,
            "labelwall_label_source_errors",
            "Failed reads or reloads of a label source (the previous entries stay).",
            sources.iter().map(|s| ([("source", s.name.clone())], s.errors)),
        )?;
        let mut hits = control.rule_hits_carried.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (i, rule) in snapshot.policy.rules.iter().enumerate() {
            *hits.entry(rule.name.to_string()).or_default() += snapshot.rule_hits.total(Some(i));
        }
        *hits.entry("default".into()).or_default() += snapshot.rule_hits.total(None);
        counter(
            e,
            "labelwall_rule_hits",
            "Packets decided by each rule (`default` = the default action), across reloads.",
            hits.iter().map(|(rule, n)| ([("rule", rule.clone())], *n)),
        )?;
        if let Some(flow_log) = &control.flow_log {
            counter(
                e,
                "labelwall_flow_log_records",
                "Flow-log records by outcome: written, dropped (the queue was full), rate_limited \
                 (beyond flow_log.max_rate), write_error.",
                [
                    ([("result", "written")], flow_log.written.load(Ordering::Relaxed)),
                    ([("result", "dropped")], flow_log.dropped.load(Ordering::Relaxed)),
                    ([("result", "rate_limited")], flow_log.rate_limited.load(Ordering::Relaxed)),
                    ([("result", "write_error")], flow_log.write_errors.load(Ordering::Relaxed)),
                ],
            )?;
            counter(
                e,
                "labelwall_flow_log_dropped",
                "Flow-log records not written: the queue was full (the writer fell behind), or \
                 beyond flow_log.max_rate.",
                [
                    ([("reason", "queue_full")], flow_log.dropped.load(Ordering::Relaxed)),
                    ([("reason", "rate_limited")], flow_log.rate_limited.load(Ordering::Relaxed)),
                ],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_described_under_the_names_of_their_samples() {
        let openmetrics = "# HELP labelwall_drops Datagrams dropped.\n\
                           # TYPE labelwall_drops counter\n\
                           labelwall_drops_total{reason=\"oversize\"} 3\n\
                           # HELP labelwall_flows_active Flows tracked now.\n\
                           # TYPE labelwall_flows_active gauge\n\
                           labelwall_flows_active 2\n\
                           # EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(openmetrics),
            "# HELP labelwall_drops_total Datagrams dropped.\n\
             # TYPE labelwall_drops_total counter\n\
             labelwall_drops_total{reason=\"oversize\"} 3\n\
             # HELP labelwall_flows_active Flows tracked now.\n\
             # TYPE labelwall_flows_active gauge\n\
             labelwall_flows_active 2\n"
        );
    }

    #[test]
    fn server_name_metrics_show_every_result_from_zero_and_the_pending_gauge() {
        let status = Arc::new(WorkerStatus::default());
        let mut registry = Registry::default();
        let workers: Arc<[Arc<WorkerStatus>]> = Arc::from(vec![Arc::clone(&status)]);
        let receive_path = ReceivePath {
            configured: crate::config::IoMode::Auto,
            taken: crate::config::IoMode::Sockets,
            interface: None,
        };
        let collector =
            DataplaneCollector { workers, next_hops: None, receive_path, started: Instant::now() };
        registry.register_collector(Box::new(collector));
        let text = render(&registry);
        let info = r#"labelwall_dataplane_io_info{configured="auto",io="sockets",interface=""} 1"#;
        assert!(text.contains(info), "{text}");
        for result in NameResult::ALL {
            let line = format!("labelwall_server_names_total{{result=\"{}\"}} 0\n", result.label());
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains("labelwall_flows_pending 0\n"), "{text}");
        let mut counters = dataplane::Counters::default();
        let mut flows = crate::pipeline::FlowCounts { pending: 3, ..Default::default() };
        flows.server_names.0[NameResult::Timeout as usize] = 2;
        counters.set_flows(flows);
        status.publish_for_tests(&counters);
        let text = render(&registry);
        assert!(text.contains("labelwall_flows_pending 3\n"), "{text}");
        assert!(text.contains("labelwall_server_names_total{result=\"timeout\"} 2\n"), "{text}");
    }

    #[test]
    fn the_rendered_registry_has_no_openmetrics_eof() {
        let text = render(&Registry::default());
        assert!(!text.contains("# EOF"), "{text}");
    }
}
