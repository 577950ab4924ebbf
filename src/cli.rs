//! Command line: argument parsing and the wiring of each command. The only module that
//! knows about processes, signals and exit codes.
//! Must not depend on: the tools' internals (each tool is its arguments and its `run`); nothing
//! depends on this module.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::admin::{self, AdminState};
use crate::config::{Config, LogConfig, LogFormat};
use crate::control::{self, ControlPlane};
use crate::dataplane::{ControlLinks, Dataplane, DataplaneSettings};
use crate::explain::{FlowQuestion, explain_with_name};
use crate::flowlog::FlowLogWriter;
use crate::labels::{LabelBuilder, LabelTable};
use crate::metrics;
use crate::packet::ip_proto;
use crate::pipeline::Mode;
use crate::snapshot::{RuleHits, Snapshot};

/// labelwall: a GENEVE inspection appliance for AWS Gateway Load Balancer that decides by
/// Kubernetes labels, not by IP addresses.
#[derive(Debug, Parser)]
#[command(name = "labelwall", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance: data plane on UDP 6081, label sources, policy, admin HTTP.
    Run {
        /// Path of labelwall.yaml.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Benchmark baseline: the same data plane with inspection switched off; every
        /// datagram is sent straight back.
        #[arg(long)]
        reflect: bool,
    },
    /// Validate config, inventory and policy without starting anything; exit 1 listing
    /// every error.
    Check {
        /// Path of labelwall.yaml.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show the verdict for a flow, the rule that decided it and who both ends are.
    Explain {
        /// Path of labelwall.yaml.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Source (initiator) address.
        #[arg(long)]
        src: IpAddr,
        /// Destination address.
        #[arg(long)]
        dst: IpAddr,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: Proto,
        #[arg(long, default_value_t = 40000)]
        sport: u16,
        #[arg(long, default_value_t = 0)]
        dport: u16,
        /// The server name the client asks for (TLS SNI, HTTP Host, QUIC); without it,
        /// explain says whether the verdict waits for one.
        #[arg(long, value_name = "NAME")]
        server_name: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The bookinfo scenario end to end on loopback: an appliance with the embedded inventory
    /// and policy, and a simulated GWLB playing real GENEVE flows through it.
    Demo {
        /// Write the embedded inventory.yaml and policy.yaml to DIR instead.
        #[arg(long, value_name = "DIR")]
        write_config: Option<PathBuf>,
    },
    /// Generate GWLB GENEVE traffic against an appliance and measure what comes back.
    Loadgen(crate::tools::loadgen::LoadgenArgs),
    /// Run a capture of GWLB GENEVE traffic through the pipeline offline.
    Replay(crate::tools::replay::ReplayArgs),
    /// A GWLB simulator: inner packets from a TUN device, wrapped in GENEVE toward an
    /// appliance, checked and delivered back, so real TCP crosses the appliance.
    GwlbSim(crate::tools::gwlbsim::GwlbSimArgs),
    /// Install or remove the tc ingress rule of `dataplane.io: packet_ring` (and `auto`) on
    /// the listen interface: for a privileged step before and after an unprivileged
    /// appliance (the systemd unit's ExecStartPre=+ and ExecStopPost=+). Needs CAP_NET_ADMIN;
    /// with `dataplane.io: sockets`, install removes a rule left behind instead (from every
    /// interface the listen address covers).
    IngressRule {
        #[arg(value_enum)]
        action: RuleAction,
        /// Path of labelwall.yaml.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print an EKS bearer token as a Kubernetes ExecCredential, like `aws eks get-token`,
    /// without the AWS CLI: for a kubeconfig's exec plugin. Credentials from
    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, else the instance role
    /// (IMDSv2).
    EksToken {
        /// The EKS cluster's name (as in `aws eks describe-cluster --name`).
        #[arg(long, value_name = "NAME")]
        cluster_name: String,
        /// The cluster's region; default: AWS_REGION, AWS_DEFAULT_REGION, else the
        /// instance's region from IMDS.
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuleAction {
    Install,
    Remove,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => ip_proto::TCP,
            Proto::Udp => ip_proto::UDP,
            Proto::Icmp => ip_proto::ICMP,
            Proto::Icmpv6 => ip_proto::ICMPV6,
        }
    }
}

/// Runs a parsed command line; the error is printed by `main`.
pub fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, reflect } => run(&config, reflect),
        Command::Check { config } => check(&config),
        Command::Explain { config, src, dst, proto, sport, dport, server_name, json } => {
            let question = FlowQuestion { src, dst, protocol: proto.number(), sport, dport };
            explain_command(&config, &question, server_name.as_deref(), json)
        }
        Command::IngressRule { action, config } => {
            let config = Config::load(&config)?;
            let done = crate::dataplane::ingress_rule(&config, action == RuleAction::Install)
                .map_err(|error| anyhow::anyhow!(error))?;
            println!("{done}");
            Ok(())
        }
        Command::Loadgen(args) => crate::tools::loadgen::run(&args),
        Command::Replay(args) => crate::tools::replay::run(&args),
        Command::GwlbSim(args) => crate::tools::gwlbsim::run(&args),
        Command::EksToken { cluster_name, region } => {
            crate::eks::run(&cluster_name, region.as_deref())
        }
        Command::Demo { write_config: Some(dir) } => {
            for path in crate::tools::demo::write_config(&dir)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Demo { write_config: None } => crate::tools::demo::run(),
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let (policy, sources) = control::load_all(&config)?;
    let labels = LabelTable::build(&sources.into_iter().map(Arc::new).collect::<Vec<_>>());
    println!(
        "{}: ok ({} groups, {} rules, {} endpoints in {} identities, default {})",
        path.display(),
        policy.groups.len() - 1,
        policy.rules.len(),
        labels.endpoint_count(),
        labels.identity_count(),
        policy.default_action.as_str(),
    );
    let names = &config.names;
    let limits = format!(
        "names.max_bytes {}, names.timeout {}, names.max_pending {} per worker",
        names.max_bytes,
        crate::config::format_duration(names.timeout()),
        names.max_pending
    );
    let domains_groups = policy.groups.iter().filter(|g| !g.domains.is_empty()).count();
    if domains_groups > 0 {
        let unused = if policy.uses_names() { "" } else { " (no rule's `to` names one)" };
        println!(
            "server names: {domains_groups} domains groups{unused}, {} patterns; {limits}",
            policy.domains().pattern_count()
        );
    } else if *names != crate::config::NamesConfig::default() {
        println!("server names: unused (no domains groups in the policy); {limits}");
    }
    if labels.conflicts() > 0 {
        println!(
            "warning: {} inventory entries claim an address already claimed",
            labels.conflicts()
        );
    }
    Ok(())
}

fn explain_command(
    path: &Path,
    question: &FlowQuestion,
    server_name: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let (policy, inventories) = control::load_all(&config)?;
    // As the appliance orders them: Kubernetes clusters first (listed once), then inventories.
    let mut sources = kubernetes_views(&config);
    sources.extend(inventories.into_iter().map(Arc::new));
    // The builder, not just its table: it knows the claims that lose.
    let mut builder = LabelBuilder::new(sources.iter().map(|s| s.source.clone()).collect());
    for (index, source) in sources.iter().enumerate() {
        builder.replace_source(index, source);
    }
    let labels = Arc::new(builder.publish().0);
    let hits = Arc::new(RuleHits::new(1, policy.rules.len()));
    let snapshot = Snapshot::new(1, labels, Arc::new(policy), hits);
    let answer = explain_with_name(&snapshot, question, server_name, Some(&builder));
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", answer.to_text());
    }
    Ok(())
}

/// One list of every configured cluster, for `explain`; a cluster that cannot be listed within
/// `EXPLAIN_LIST_TIMEOUT` is left out with a warning (its pods then show as unknown).
fn kubernetes_views(config: &Config) -> Vec<Arc<crate::labels::SourceRecords>> {
    const EXPLAIN_LIST_TIMEOUT: Duration = Duration::from_secs(15);
    if config.labels.kubernetes.is_empty() {
        return Vec::new();
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        eprintln!("warning: cannot start a runtime to list the Kubernetes clusters");
        return Vec::new();
    };
    config
        .labels
        .kubernetes
        .iter()
        .filter_map(|cluster| {
            let listed = runtime.block_on(async {
                tokio::time::timeout(
                    EXPLAIN_LIST_TIMEOUT,
                    crate::sources::kubernetes::list_once(cluster),
                )
                .await
            });
            match listed {
                Ok(Ok(records)) => Some(Arc::new(records)),
                Ok(Err(error)) => {
                    eprintln!("warning: cluster {}: {error}; its pods show as unknown", cluster.cluster);
                    None
                }
                Err(_) => {
                    eprintln!(
                        "warning: cluster {}: not listed within {EXPLAIN_LIST_TIMEOUT:?}; its pods show as unknown",
                        cluster.cluster
                    );
                    None
                }
            }
        })
        .collect()
}

/// The exit status of an appliance one of whose threads panicked (EX_SOFTWARE).
pub const PANIC_EXIT_STATUS: i32 = 70;

fn run(path: &Path, reflect: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    init_tracing(&config.log);
    exit_on_panic();
    let workers = config.dataplane.worker_count();
    let mode = if reflect { Mode::Reflect } else { Mode::Inspect };
    let settings = DataplaneSettings::new(&config, workers, mode);
    ensure_open_files(&settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control-plane runtime")?;
    runtime.block_on(serve(&config, settings))
}

async fn serve(config: &Config, settings: DataplaneSettings) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let (flow_log, flow_log_writer) = match &config.flow_log {
        Some(flow_log) => {
            let (sender, writer) = FlowLogWriter::start(&flow_log.path, Some(flow_log.max_rate))
                .with_context(|| format!("cannot open the flow log {}", flow_log.path.display()))?;
            (Some(sender), Some(writer))
        }
        None => (None, None),
    };
    let mut control = ControlPlane::start(
        config,
        settings.workers,
        flow_log_writer.as_ref().map(|w| Arc::clone(&w.stats)),
    )?;
    let control_state = control.state();

    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen for admin HTTP on {}", config.admin.listen))?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    // Without a handler SIGUSR1 would kill the process (logrotate sends it after rotating).
    let mut user1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;

    let links = ControlLinks {
        snapshots: (settings.mode == Mode::Inspect).then(|| Arc::clone(&control_state.snapshots)),
        flow_log,
    };
    let dataplane = Dataplane::start(&settings, &links)?;
    drop(links); // the workers hold the flow-log senders now
    let workers = dataplane.status();
    let state = Arc::new(AdminState {
        registry: metrics::registry(
            Arc::clone(&workers),
            dataplane.next_hops(),
            dataplane.receive_path(),
            Arc::clone(&control_state),
        ),
        workers,
        control: Arc::clone(&control_state),
    });
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(admin::serve(admin_listener, state, async {
        let _ = admin_stopped.await;
    }));
    tracing::info!(
        listen = %settings.listen,
        workers = settings.workers,
        reply_port = settings.reply_port,
        io = dataplane.receive_path().taken.as_str(),
        admin = %config.admin.listen,
        mode = ?settings.mode,
        "labelwall running"
    );

    // Live label sources (Kubernetes watchers) report here; the sender side is handed to
    // each watcher.
    let (source_events_tx, mut source_events) =
        tokio::sync::mpsc::channel::<crate::sources::SourceEvent>(64);
    for cluster in &config.labels.kubernetes {
        crate::sources::kubernetes::spawn(cluster.clone(), source_events_tx.clone());
    }
    drop(source_events_tx);
    let mut file_check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = user1.recv() => {
                match &flow_log_writer {
                    Some(writer) => writer.reopen(),
                    None => tracing::info!("SIGUSR1: no flow log to reopen"),
                }
            }
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading policy and inventory");
                control.reload_all();
            }
            _ = file_check.tick() => {
                control.poll_files();
                if control.withdraw_stale() {
                    control.publish();
                }
            }
            Some(event) = source_events.recv() => {
                // Take everything queued, then publish once.
                let mut changed = control.apply(event);
                while let Ok(event) = source_events.try_recv() {
                    changed |= control.apply(event);
                }
                if changed {
                    control.publish();
                }
            }
        }
    }
    tracing::info!("stopping: no longer receiving, sending what is in flight");
    let totals = tokio::task::spawn_blocking(move || dataplane.shutdown())
        .await
        .context("data-plane shutdown panicked")?;
    if let Some(writer) = flow_log_writer {
        tokio::task::spawn_blocking(move || writer.join()).await.ok();
    }
    let _ = stop_admin.send(());
    admin.await.context("admin server panicked")?.context("admin server failed")?;
    tracing::info!(
        received = totals.rx_datagrams(),
        sent = totals.tx_packets(),
        dropped = totals.total_drops(),
        "labelwall stopped"
    );
    Ok(())
}

/// A panic in any thread (a data-plane worker, the control plane, the flow-log writer) ends
/// the whole process with [`PANIC_EXIT_STATUS`], after the panic message: the appliance is
/// never half alive behind a green health check, and systemd (`Restart=on-failure`) starts a
/// whole one again.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        tracing::error!(%thread, "{info}; stopping the appliance (exit status {PANIC_EXIT_STATUS})");
        std::process::exit(PANIC_EXIT_STATUS);
    }));
}

/// Checks that the open-file limit covers what the data plane may open (raising the soft
/// limit up to the hard one when it does not), so that a large `send_sockets` fails at start
/// with a clear error instead of sockets failing one by one under load.
fn ensure_open_files(settings: &DataplaneSettings) -> anyhow::Result<()> {
    let needed = crate::dataplane::open_files_needed(settings);
    let (soft, hard) = crate::net::sys::open_file_limit().context("cannot read RLIMIT_NOFILE")?;
    if needed <= soft {
        return Ok(());
    }
    if needed <= hard {
        crate::net::sys::raise_open_file_limit(needed).context("cannot raise RLIMIT_NOFILE")?;
        return Ok(());
    }
    anyhow::bail!(
        "dataplane.workers ({}) with dataplane.send_sockets ({}) may need {needed} open files, \
         but the limit is {hard} (LimitNOFILE= in labelwall.service, ulimit -n): raise it or \
         lower dataplane.send_sockets",
        settings.workers,
        settings.send_sockets
    )
}

fn init_tracing(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(log.level.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: journald and log files would store the escapes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // A second initialisation (tests calling twice) is harmless: keep the first subscriber.
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
