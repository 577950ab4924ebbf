//! `labelwall.yaml`: the appliance's settings, parsed and validated once at startup.
//! Must not depend on: sockets, async, the data plane's workers, the control plane.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), every error
//! names the file and, where the YAML parser knows it, the line and column. Relative paths
//! inside the file are resolved against the file's own directory, so a config and its policy
//! can be moved together.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::diagnostics::{Diagnostic, Diagnostics, read_file};
use crate::yaml_lines::LineIndex;

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Path of policy.yaml.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    #[serde(default)]
    pub labels: LabelsConfig,
    #[serde(default)]
    pub flow_log: Option<FlowLogConfig>,
    #[serde(default)]
    pub flows: FlowsConfig,
    /// Reading server names for policy `domains` groups.
    #[serde(default)]
    pub names: NamesConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// Default of `dataplane.reject_limit`.
pub const DEFAULT_REJECT_LIMIT: u32 = 1000;
/// Default of `dataplane.send_sockets`.
pub const DEFAULT_SEND_SOCKETS: usize = 256;
/// Most `dataplane.send_sockets` (file descriptors per worker).
pub const MAX_SEND_SOCKETS: usize = 65536;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Where GENEVE from GWLB arrives; the outer header is always IPv4.
    pub listen: SocketAddrV4,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Destination UDP port of packets sent back to GWLB.
    pub reply_port: u16,
    /// SO_RCVBUF per worker socket, bytes.
    pub receive_buffer: usize,
    /// SO_SNDBUF per worker raw socket, bytes.
    pub send_buffer: usize,
    /// Per-port UDP send sockets each worker keeps for segmentation offload of GRO trains
    /// (least recently used evicted); 0 sends everything through the raw socket.
    pub send_sockets: usize,
    /// Single packets to a GWLB node whose next hop the kernel's neighbour table knows go out
    /// as Ethernet frames through a packet socket (past the kernel's IP output path); false
    /// sends everything through the raw socket.
    pub packet_socket: bool,
    /// GWLB node addresses that may send GENEVE (the GWLB subnets); `None` = any. GENEVE
    /// from elsewhere is dropped (`peer_not_allowed`).
    pub allowed_peers: Option<Vec<ipnet::Ipv4Net>>,
    /// TCP RSTs and ICMP errors one worker generates per second at most; the rest are
    /// withheld and counted (`labelwall_rejects_suppressed_total`).
    pub reject_limit: u32,
    /// How GENEVE is received and sent: UDP sockets, AF_PACKET rings, or the rings when they
    /// can be set up here.
    pub io: IoMode,
    /// Microseconds a worker keeps polling for packets before it sleeps (0 = off).
    pub busy_poll: u32,
}

/// `dataplane.io`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    /// `recvmmsg` on SO_REUSEPORT UDP sockets (with GRO), raw/packet/GSO sockets to send.
    Sockets,
    /// A TPACKET ring per worker on the listen interface, the kernel's IP/UDP receive skipped
    /// by a tc ingress rule; refuses to start when that cannot be set up.
    PacketRing,
    /// `packet_ring` when it can be set up, else `sockets` (the log says which and why).
    /// The default (SPEC.md): measured no worse than `sockets` on every paced row of
    /// docs/performance.md's table, and it falls back where rings cannot work (loopback, no
    /// CAP_NET_RAW, no tc rule).
    #[default]
    Auto,
}

impl IoMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IoMode::Sockets => "sockets",
            IoMode::PacketRing => "packet_ring",
            IoMode::Auto => "auto",
        }
    }
}

/// Most `dataplane.busy_poll`: a worker that spins longer than this per wake-up only burns
/// its core.
pub const MAX_BUSY_POLL_US: u32 = 10_000;

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            listen: SocketAddrV4::new([0, 0, 0, 0].into(), 6081),
            workers: 0,
            reply_port: 6081,
            receive_buffer: 8 << 20,
            send_buffer: 8 << 20,
            send_sockets: DEFAULT_SEND_SOCKETS,
            packet_socket: true,
            allowed_peers: None,
            reject_limit: DEFAULT_REJECT_LIMIT,
            io: IoMode::default(),
            busy_poll: 0,
        }
    }
}

impl DataplaneConfig {
    /// The number of workers to start: `workers`, or one per core when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// /healthz, /readyz, /metrics.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: SocketAddr::from(([0, 0, 0, 0], 8080)) }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LabelsConfig {
    /// Static inventory files.
    pub inventory: Vec<PathBuf>,
    /// Kubernetes clusters to watch.
    pub kubernetes: Vec<KubernetesSource>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSource {
    /// Name used in identities and selectors.
    pub cluster: String,
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub in_cluster: bool,
    /// Lost longer than this (a duration, `5m`): the cluster's entries are withdrawn (fail
    /// closed) until it syncs again; absent keeps them. Read with [`KubernetesSource::max_stale`].
    #[serde(default, rename = "max_stale")]
    pub max_stale_text: Option<String>,
    /// No answer from the API server for this long (a duration; default
    /// [`KubernetesSource::DEFAULT_TIMEOUT`]) = the source is lost. Read with
    /// [`KubernetesSource::timeout`].
    #[serde(default, rename = "timeout")]
    pub timeout_text: Option<String>,
}

impl KubernetesSource {
    /// `timeout` when the file does not set it.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// The bounds of `timeout`: a probe every third of it must stay a second or more apart,
    /// and a watch must end (at half of it) well before the API server's own limits.
    const TIMEOUT_MIN: Duration = Duration::from_secs(3);
    const TIMEOUT_MAX: Duration = Duration::from_secs(600);

    /// `timeout` (validated when the file was loaded).
    pub fn timeout(&self) -> Duration {
        self.timeout_text
            .as_deref()
            .and_then(|text| parse_duration(text).ok())
            .unwrap_or(Self::DEFAULT_TIMEOUT)
    }

    /// `max_stale` (validated when the file was loaded).
    pub fn max_stale(&self) -> Option<Duration> {
        self.max_stale_text.as_deref().and_then(|text| parse_duration(text).ok())
    }
}

/// A duration as labelwall.yaml writes it: a whole number and a unit, `500ms`, `30s`, `5m`,
/// `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shape = || {
        format!("`{text}` is not a duration: write a whole number and ms, s, m or h (`30s`, `5m`)")
    };
    let number: u64 = number.parse().map_err(|_| shape())?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(shape()),
    };
    millis.map(Duration::from_millis).ok_or_else(|| format!("`{text}` is too long"))
}

/// A duration as [`parse_duration`] reads it: `5s`, `750ms`, `5m`, `1h`.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

/// The flow table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    /// Flows tracked at most, over all workers.
    pub max: usize,
    /// Idle timeout of TCP flows in seconds; match the GWLB target group's (350 by default,
    /// 60-6000). Other protocols use GWLB's fixed 120 s.
    pub tcp_idle_timeout: u64,
}

impl FlowsConfig {
    /// The settings of one of `pipelines` pipelines: the flow budget is split evenly.
    pub fn per_pipeline(&self, pipelines: usize) -> crate::pipeline::FlowSettings {
        crate::pipeline::FlowSettings {
            max_flows: self.max / pipelines.max(1),
            timeouts: crate::conntrack::Timeouts {
                tcp_ms: self.tcp_idle_timeout * 1000,
                ..crate::conntrack::Timeouts::default()
            },
            ..crate::pipeline::FlowSettings::default()
        }
    }
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig { max: 1 << 20, tcp_idle_timeout: 350 }
    }
}

/// How long, and with how much held, a flow may wait for its server name (policy `domains`
/// groups). Past any limit the flow is judged with no name.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NamesConfig {
    /// Client bytes held per flow while its name is read.
    pub max_bytes: usize,
    /// Longest a flow waits for its name (a duration; read with [`NamesConfig::timeout`]).
    #[serde(rename = "timeout")]
    pub timeout_text: String,
    /// Flows per worker waiting for a name.
    pub max_pending: usize,
}

impl NamesConfig {
    pub const DEFAULT_MAX_BYTES: usize = 16 * 1024;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_MAX_PENDING: usize = 16 * 1024;
    /// A ClientHello with a post-quantum key share is about 1.8 KB; below this most real
    /// ones would not fit. Above the top, one flow would hold more than a 64 KiB TLS
    /// handshake message.
    pub const MAX_BYTES: std::ops::RangeInclusive<usize> = 1024..=65536;
    /// Long enough for a client's first bytes after a slow handshake; short enough that a
    /// client that never speaks first (SSH, SMTP and other server-first protocols) is
    /// judged with no name before it gives up.
    pub const TIMEOUT: std::ops::RangeInclusive<Duration> =
        Duration::from_millis(100)..=Duration::from_secs(60);
    /// A million pending flows per worker at 64 KiB each would already be 64 GiB.
    pub const MAX_PENDING: std::ops::RangeInclusive<usize> = 1..=1 << 20;

    /// `timeout` (validated when the file was loaded).
    pub fn timeout(&self) -> Duration {
        parse_duration(&self.timeout_text).unwrap_or(Self::DEFAULT_TIMEOUT)
    }

    fn validate(&self, error: &mut impl FnMut(&str, String)) {
        if !Self::MAX_BYTES.contains(&self.max_bytes) {
            error(
                "names.max_bytes",
                format!(
                    "{} is outside {} to {} bytes",
                    self.max_bytes,
                    Self::MAX_BYTES.start(),
                    Self::MAX_BYTES.end()
                ),
            );
        }
        match parse_duration(&self.timeout_text) {
            Err(message) => error("names.timeout", message),
            Ok(timeout) if !Self::TIMEOUT.contains(&timeout) => {
                error("names.timeout", "must be between 100ms and 60s".into())
            }
            Ok(_) => {}
        }
        if !Self::MAX_PENDING.contains(&self.max_pending) {
            error(
                "names.max_pending",
                format!(
                    "{} is outside {} to {} flows per worker",
                    self.max_pending,
                    Self::MAX_PENDING.start(),
                    Self::MAX_PENDING.end()
                ),
            );
        }
    }
}

impl Default for NamesConfig {
    fn default() -> Self {
        NamesConfig {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            timeout_text: "5s".into(),
            max_pending: Self::DEFAULT_MAX_PENDING,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FlowLogConfig {
    /// A file path, or "-" for stdout.
    pub path: PathBuf,
    /// Records written per second at most; the rest are dropped and counted.
    #[serde(default = "default_flow_log_max_rate")]
    pub max_rate: u32,
}

/// Default of `flow_log.max_rate`: about 6 MB/s of JSON lines, which the logrotate settings
/// shipped in appliance/ keep within the root volume.
pub const DEFAULT_FLOW_LOG_MAX_RATE: u32 = 10_000;

fn default_flow_log_max_rate() -> u32 {
    DEFAULT_FLOW_LOG_MAX_RATE
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `labelwall=debug`; RUST_LOG overrides it.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Config {
    /// The settings of one of `pipelines` pipelines (workers): the flow budget split evenly,
    /// the reject limit per worker.
    pub fn pipeline_settings(&self, pipelines: usize) -> crate::pipeline::FlowSettings {
        crate::pipeline::FlowSettings {
            reject_limit: self.dataplane.reject_limit,
            names: crate::pipeline::NameLimits {
                max_bytes: self.names.max_bytes,
                timeout_ms: self.names.timeout().as_millis() as u64,
                max_pending: self.names.max_pending,
            },
            ..self.flows.per_pipeline(pipelines)
        }
    }

    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let text = read_file(path)?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Diagnostics> {
        let mut config: Config =
            serde_yaml_ng::from_str(text).map_err(|e| Diagnostic::from_yaml(path, &e))?;
        let errors = config.validate(path, text);
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    fn validate(&self, path: &Path, text: &str) -> Vec<Diagnostic> {
        let lines = LineIndex::build(text);
        let mut errors = crate::diagnostics::duplicate_keys(path, &lines);
        let mut error = |field: &str, message: String| {
            errors.push(Diagnostic {
                line: lines.line(field),
                field: Some(field.to_string()),
                ..Diagnostic::file(path, message)
            })
        };
        if self.dataplane.listen.port() == 0 {
            error("dataplane.listen", "the port must not be 0 (GWLB sends to 6081)".into());
        }
        if self.dataplane.reply_port == 0 {
            error("dataplane.reply_port", "must be a port number from 1 to 65535".into());
        }
        if self.dataplane.workers > 1024 {
            error("dataplane.workers", format!("{} is more than 1024", self.dataplane.workers));
        }
        if self.dataplane.receive_buffer < 64 * 1024 {
            error("dataplane.receive_buffer", "must be at least 65536 bytes".into());
        }
        if self.dataplane.send_buffer < 64 * 1024 {
            error("dataplane.send_buffer", "must be at least 65536 bytes".into());
        }
        for (i, net) in self.dataplane.allowed_peers.iter().flatten().enumerate() {
            if net.trunc() != *net {
                error(
                    &format!("dataplane.allowed_peers[{i}]"),
                    format!("`{net}` has host bits set; did you mean {}?", net.trunc()),
                );
            }
        }
        if self.dataplane.allowed_peers.as_ref().is_some_and(Vec::is_empty) {
            error(
                "dataplane.allowed_peers",
                "an empty list would refuse every GWLB node; leave the key out to allow any".into(),
            );
        }
        if self.flow_log.as_ref().is_some_and(|log| log.max_rate == 0) {
            error("flow_log.max_rate", "must be at least 1 record per second".into());
        }
        if self.dataplane.send_sockets > MAX_SEND_SOCKETS {
            error("dataplane.send_sockets", format!("must be at most {MAX_SEND_SOCKETS}"));
        }
        if self.dataplane.busy_poll > MAX_BUSY_POLL_US {
            error(
                "dataplane.busy_poll",
                format!(
                    "{} microseconds is more than {MAX_BUSY_POLL_US}; 50 is a typical value, 0 \
                     turns busy polling off",
                    self.dataplane.busy_poll
                ),
            );
        }
        if self.policy.is_none() {
            error("policy", "is required: the path of policy.yaml".into());
        }
        if !(60..=6000).contains(&self.flows.tcp_idle_timeout) {
            error(
                "flows.tcp_idle_timeout",
                format!(
                    "{} s is outside GWLB's range of 60 to 6000 s",
                    self.flows.tcp_idle_timeout
                ),
            );
        }
        if self.flows.max < 1024 {
            error("flows.max", "must be at least 1024".into());
        }
        for (i, source) in self.labels.kubernetes.iter().enumerate() {
            let field = format!("labels.kubernetes[{i}]");
            if source.cluster.is_empty() {
                error(&format!("{field}.cluster"), "must not be empty".into());
            } else if self.labels.kubernetes[..i].iter().any(|s| s.cluster == source.cluster) {
                error(
                    &format!("{field}.cluster"),
                    format!(
                        "`{}` is used by another entry: cluster names must be unique",
                        source.cluster
                    ),
                );
            }
            if source.kubeconfig.is_some() == source.in_cluster {
                error(&field, "set exactly one of `kubeconfig` and `in_cluster: true`".into());
            }
            match source.max_stale_text.as_deref().map(parse_duration) {
                Some(Err(message)) => error(&format!("{field}.max_stale"), message),
                Some(Ok(stale)) if stale < Duration::from_secs(1) => {
                    error(&format!("{field}.max_stale"), "must be at least 1s".into());
                }
                _ => {}
            }
            match source.timeout_text.as_deref().map(parse_duration) {
                Some(Err(message)) => error(&format!("{field}.timeout"), message),
                Some(Ok(timeout))
                    if !(KubernetesSource::TIMEOUT_MIN..=KubernetesSource::TIMEOUT_MAX)
                        .contains(&timeout) =>
                {
                    error(&format!("{field}.timeout"), "must be between 3s and 10m".into());
                }
                _ => {}
            }
        }
        if let Some(level) = &self.log.level
            && tracing_subscriber::EnvFilter::try_new(level).is_err()
        {
            error("log.level", format!("`{level}` is not a valid log filter"));
        }
        self.names.validate(&mut error);
        errors
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != "-" {
                *p = base.join(&*p);
            }
        };
        if let Some(policy) = &mut self.policy {
            resolve(policy);
        }
        self.labels.inventory.iter_mut().for_each(resolve);
        for source in &mut self.labels.kubernetes {
            if let Some(kubeconfig) = &mut source.kubeconfig {
                resolve(kubeconfig);
            }
        }
        if let Some(flow_log) = &mut self.flow_log {
            resolve(&mut flow_log.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Diagnostics> {
        Config::parse(Path::new("/etc/labelwall/labelwall.yaml"), text)
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let config = parse("policy: p.yaml").unwrap();
        assert_eq!(config.dataplane.listen.to_string(), "0.0.0.0:6081");
        assert_eq!(config.dataplane.reply_port, 6081);
        assert_eq!(config.admin.listen.to_string(), "0.0.0.0:8080");
        assert!(config.dataplane.worker_count() >= 1);
        assert_eq!(config.log.format, LogFormat::Text);
    }

    #[test]
    fn spec_example_parses_and_resolves_relative_paths() {
        let config = parse(
            "dataplane:\n  listen: 0.0.0.0:6081\n  workers: 2\n  reply_port: 6081\n\
             admin:\n  listen: 127.0.0.1:9090\npolicy: policy.yaml\n\
             labels:\n  inventory: [/etc/labelwall/inventory.yaml, more.yaml]\n  kubernetes:\n\
             \x20   - cluster: eks-prod\n      kubeconfig: eks-prod.kubeconfig\n\
             flow_log:\n  path: \"-\"\n",
        )
        .unwrap();
        assert_eq!(config.dataplane.workers, 2);
        assert_eq!(config.policy.unwrap(), PathBuf::from("/etc/labelwall/policy.yaml"));
        assert_eq!(config.labels.inventory[1], PathBuf::from("/etc/labelwall/more.yaml"));
        assert_eq!(
            config.labels.kubernetes[0].kubeconfig.as_deref(),
            Some(Path::new("/etc/labelwall/eks-prod.kubeconfig"))
        );
        assert_eq!(config.flow_log.unwrap().path, PathBuf::from("-"));
    }

    #[test]
    fn unknown_key_is_rejected_with_file_line_and_name() {
        let errors =
            parse("policy: p.yaml\ndataplane:\n  listen: 0.0.0.0:6081\n  listn: 1.2.3.4:5\n")
                .unwrap_err();
        let text = errors.to_string();
        assert!(text.starts_with("/etc/labelwall/labelwall.yaml:4:"), "{text}");
        assert!(text.contains("unknown field `listn`"), "{text}");
    }

    #[test]
    fn wrong_type_names_the_line() {
        let errors =
            parse("admin:\n  listen: 127.0.0.1:8080\ndataplane:\n  workers: many\n").unwrap_err();
        assert_eq!(errors.0[0].line, Some(4), "{errors}");
    }

    #[test]
    fn outer_ipv6_listen_is_rejected() {
        assert!(parse("policy: p.yaml\ndataplane:\n  listen: \"[::]:6081\"\n").is_err());
    }

    #[test]
    fn every_validation_error_is_reported_with_its_field_and_line() {
        let errors = parse(
            "policy: p.yaml\ndataplane:\n  listen: 0.0.0.0:0\n  reply_port: 0\nlabels:\n  kubernetes:\n\
             \x20   - cluster: \"\"\n",
        )
        .unwrap_err();
        let fields: Vec<_> = errors.0.iter().map(|e| e.field.clone().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "dataplane.listen",
                "dataplane.reply_port",
                "labels.kubernetes[0].cluster",
                "labels.kubernetes[0]"
            ]
        );
        assert_eq!(errors.0[0].line, Some(3));
        assert_eq!(errors.0[1].line, Some(4));
        assert_eq!(errors.0[2].line, Some(7));
    }

    #[test]
    fn a_clusters_timeout_defaults_to_30s_and_is_bounded() {
        let yaml = |timeout: &str| {
            format!(
                "policy: p.yaml\nlabels:\n  kubernetes:\n    - cluster: a\n      in_cluster: true\n{timeout}"
            )
        };
        let config = parse(&yaml("")).unwrap();
        assert_eq!(config.labels.kubernetes[0].timeout(), Duration::from_secs(30));
        let config = parse(&yaml("      timeout: 9s\n")).unwrap();
        assert_eq!(config.labels.kubernetes[0].timeout(), Duration::from_secs(9));
        for bad in ["      timeout: 1s\n", "      timeout: 1h\n", "      timeout: soon\n"] {
            let errors = parse(&yaml(bad)).unwrap_err();
            assert_eq!(errors.0.len(), 1, "{bad}: {errors}");
            assert_eq!(errors.0[0].field.as_deref(), Some("labels.kubernetes[0].timeout"), "{bad}");
            assert_eq!(errors.0[0].line, Some(6), "{bad}");
        }
    }

    #[test]
    fn cluster_names_must_be_unique() {
        let errors = parse(
            "policy: p.yaml\nlabels:\n  kubernetes:\n    - {cluster: a, in_cluster: true}\n\
             \x20   - {cluster: a, kubeconfig: k}\n",
        )
        .unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].field.as_deref(), Some("labels.kubernetes[1].cluster"));
        assert_eq!(errors.0[0].line, Some(5));
    }

    #[test]
    fn io_and_busy_poll_default_to_auto_and_off_and_are_checked_with_their_line() {
        let config = parse("policy: p.yaml").unwrap();
        assert_eq!((config.dataplane.io, config.dataplane.busy_poll), (IoMode::Auto, 0));
        for (text, io) in [
            ("sockets", IoMode::Sockets),
            ("packet_ring", IoMode::PacketRing),
            ("auto", IoMode::Auto),
        ] {
            let config =
                parse(&format!("policy: p.yaml\ndataplane:\n  io: {text}\n  busy_poll: 50\n"))
                    .unwrap();
            assert_eq!((config.dataplane.io, config.dataplane.busy_poll), (io, 50));
            assert_eq!(io.as_str(), text);
        }
        let errors = parse("policy: p.yaml\ndataplane:\n  workers: 1\n  io: rings\n").unwrap_err();
        let text = errors.to_string();
        assert!(text.starts_with("/etc/labelwall/labelwall.yaml:4:"), "{text}");
        assert!(text.contains("packet_ring"), "the choices are named: {text}");
        let errors = parse("policy: p.yaml\ndataplane:\n  busy_poll: 20000\n").unwrap_err();
        assert_eq!(errors.0[0].field.as_deref(), Some("dataplane.busy_poll"), "{errors}");
        assert_eq!(errors.0[0].line, Some(3), "{errors}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let errors = Config::load(Path::new("/nonexistent/labelwall.yaml")).unwrap_err();
        assert!(errors.to_string().contains("cannot read the file"), "{errors}");
    }

    #[test]
    fn durations_are_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "m", "1.5s", "-1s", "5 m", "5min", "1d", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn max_stale_is_read_and_checked_with_its_line() {
        let config = parse(
            "policy: p.yaml\nlabels:\n  kubernetes:\n    - cluster: a\n      in_cluster: true\n      max_stale: 5m\n",
        )
        .unwrap();
        assert_eq!(config.labels.kubernetes[0].max_stale(), Some(Duration::from_secs(300)));
        let errors = parse(
            "policy: p.yaml\nlabels:\n  kubernetes:\n    - cluster: a\n      in_cluster: true\n      max_stale: 5 minutes\n",
        )
        .unwrap_err();
        assert!(errors.0[0].message.contains("not a duration"), "{errors:?}");
        assert_eq!(errors.0[0].line, Some(6), "{errors:?}");
        assert_eq!(errors.0[0].field.as_deref(), Some("labels.kubernetes[0].max_stale"));
        let errors = parse(
            "policy: p.yaml\nlabels:\n  kubernetes:\n    - cluster: a\n      in_cluster: true\n      max_stale: 10ms\n",
        )
        .unwrap_err();
        assert_eq!(errors.0[0].field.as_deref(), Some("labels.kubernetes[0].max_stale"));
    }

    #[test]
    fn durations_print_as_they_are_written() {
        for text in ["5s", "750ms", "5m", "1h", "90s", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn names_limits_default_to_the_documented_values() {
        let names = parse("policy: p.yaml").unwrap().names;
        assert_eq!(names.max_bytes, 16384);
        assert_eq!(names.timeout(), Duration::from_secs(5));
        assert_eq!(names.max_pending, 16384);
        let names = parse(
            "policy: p.yaml\nnames:\n  max_bytes: 4096\n  timeout: 750ms\n  max_pending: 10\n",
        )
        .unwrap()
        .names;
        assert_eq!(names.max_bytes, 4096);
        assert_eq!(names.timeout(), Duration::from_millis(750));
        assert_eq!(names.max_pending, 10);
        // The bounds themselves are accepted.
        parse("policy: p.yaml\nnames: {max_bytes: 1024, timeout: 100ms, max_pending: 1}\n")
            .unwrap();
        parse("policy: p.yaml\nnames: {max_bytes: 65536, timeout: 60s, max_pending: 1048576}\n")
            .unwrap();
    }

    #[test]
    fn names_limits_out_of_bounds_are_errors_with_field_and_line() {
        let cases = [
            ("max_bytes: 1023", "names.max_bytes", "outside 1024 to 65536"),
            ("max_bytes: 65537", "names.max_bytes", "outside 1024 to 65536"),
            ("timeout: 99ms", "names.timeout", "between 100ms and 60s"),
            ("timeout: 61s", "names.timeout", "between 100ms and 60s"),
            ("timeout: 5", "names.timeout", "not a duration"),
            ("max_pending: 0", "names.max_pending", "outside 1 to 1048576"),
            ("max_pending: 1048577", "names.max_pending", "outside 1 to 1048576"),
        ];
        for (line, field, message) in cases {
            let errors =
                parse(&format!("policy: p.yaml\nlog: {{}}\nnames:\n  {line}\n")).unwrap_err();
            assert_eq!(errors.0.len(), 1, "{line}: {errors}");
            assert_eq!(errors.0[0].field.as_deref(), Some(field), "{line}");
            assert_eq!(errors.0[0].line, Some(4), "{line}");
            assert!(errors.0[0].message.contains(message), "{line}: {errors}");
            let text = errors.to_string();
            assert!(
                text.starts_with(&format!("/etc/labelwall/labelwall.yaml:4: {field}: ")),
                "{text}"
            );
        }
        let errors = parse("policy: p.yaml\nnames:\n  max_byte: 4096\n").unwrap_err();
        assert!(errors.to_string().contains("unknown field `max_byte`"), "{errors}");
        let errors = parse("policy: p.yaml\nnames:\n  max_bytes: -1\n").unwrap_err();
        assert_eq!(errors.0[0].line, Some(3), "{errors}");
    }
}
