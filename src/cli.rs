//! Command line: argument parsing and the wiring of each command. The only module that
//! knows about processes, signals and exit codes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::admin::{self, AdminState};
use crate::config::{Config, LogConfig, LogFormat};
use crate::dataplane::{Dataplane, DataplaneSettings};
use crate::metrics;
use crate::pipeline::Mode;

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
    /// Validate the configuration without starting anything; exit 1 listing every error.
    Check {
        /// Path of labelwall.yaml.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Runs a parsed command line; the error is printed by `main`.
pub fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, reflect } => run(&config, reflect),
        Command::Check { config } => check(&config),
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!("{}: ok", path.display());
    for warning in unimplemented_settings(&config) {
        println!("warning: {warning}");
    }
    Ok(())
}

/// Settings the file may carry that this version parses but does not act on yet.
fn unimplemented_settings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.policy.is_some() {
        warnings.push("`policy` is not enforced yet: every valid packet is allowed".to_string());
    }
    if !config.labels.inventory.is_empty() || !config.labels.kubernetes.is_empty() {
        warnings.push("`labels` sources are not read yet".to_string());
    }
    if config.flow_log.is_some() {
        warnings.push("`flow_log` is not written yet".to_string());
    }
    warnings
}

fn run(path: &Path, reflect: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    init_tracing(&config.log);
    for warning in unimplemented_settings(&config) {
        tracing::warn!("{warning}");
    }
    let settings = DataplaneSettings {
        listen: config.dataplane.listen,
        workers: config.dataplane.worker_count(),
        reply_port: config.dataplane.reply_port,
        mode: if reflect { Mode::Reflect } else { Mode::Inspect },
        receive_buffer: config.dataplane.receive_buffer,
        send_buffer: config.dataplane.send_buffer,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control-plane runtime")?;
    runtime.block_on(serve(&config, settings))
}

async fn serve(config: &Config, settings: DataplaneSettings) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen for admin HTTP on {}", config.admin.listen))?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let dataplane = Dataplane::start(&settings)?;
    let workers = dataplane.status();
    let state = Arc::new(AdminState { registry: metrics::registry(Arc::clone(&workers)), workers });
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(admin::serve(admin_listener, state, async {
        let _ = admin_stopped.await;
    }));
    tracing::info!(
        listen = %settings.listen,
        workers = settings.workers,
        reply_port = settings.reply_port,
        admin = %config.admin.listen,
        mode = ?settings.mode,
        "labelwall running"
    );

    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => tracing::info!("SIGHUP: nothing to reload in this version"),
        }
    }
    tracing::info!("stopping: no longer receiving, sending what is in flight");
    let totals = tokio::task::spawn_blocking(move || dataplane.shutdown())
        .await
        .context("data-plane shutdown panicked")?;
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

fn init_tracing(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(log.level.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second initialisation (tests calling twice) is harmless: keep the first subscriber.
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
