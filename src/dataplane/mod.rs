//! The data plane: worker threads that receive GENEVE from GWLB in batches, run each datagram
//! through the [`Pipeline`](crate::pipeline::Pipeline) and send what may pass back to GWLB.
//!
//! Each worker owns one `SO_REUSEPORT` UDP socket on the listen address (the kernel spreads
//! GWLB's flows over them by 4-tuple hash), its sockets for sending back (a packet socket,
//! raw sockets, per-port UDP sockets for trains), its buffers and its counters. Nothing is
//! shared between workers on the per-packet path but the next-hop table, which they only
//! read (one resolver thread writes it); the control plane sees them only through
//! [`WorkerStatus`].
//!
//! Must not depend on: tokio, kube, the admin server.

mod send;
mod stats;
mod worker;

use std::io;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use crate::net::ingress::IngressRule;
use crate::net::nexthop::{self, NextHops, SingleSender};
use crate::net::ring::{self, RxRing};
use crate::net::sys;
pub use stats::{Counters, Fallback, SendPath, SharedCounters, SocketEvent};

use crate::config::{Config, IoMode};
use crate::flowlog::FlowLogSender;
use crate::pipeline::{FlowSettings, Mode};
use crate::snapshot::SnapshotCell;

/// How the data plane is set up (from `dataplane:` in labelwall.yaml).
#[derive(Debug, Clone)]
pub struct DataplaneSettings {
    pub listen: SocketAddrV4,
    pub workers: usize,
    pub reply_port: u16,
    pub mode: Mode,
    /// Requested SO_RCVBUF of each worker's UDP socket.
    pub receive_buffer: usize,
    /// Requested SO_SNDBUF of each worker's raw socket.
    pub send_buffer: usize,
    /// Per-port UDP send sockets (segmentation offload) each worker may keep; 0 = raw only.
    pub send_sockets: usize,
    /// Single packets through the packet socket where the next hop is known.
    pub packet_socket: bool,
    pub flows: FlowSettings,
    /// Networks GENEVE may come from; `None` = any.
    pub allowed_peers: Option<Vec<ipnet::Ipv4Net>>,
    /// How GENEVE is received and sent (`dataplane.io`).
    pub io: IoMode,
    /// Microseconds of busy polling per receive (`dataplane.busy_poll`, 0 = off).
    pub busy_poll: u32,
}

impl DataplaneSettings {
    /// The settings of labelwall.yaml's `dataplane:` and `flows:` for `workers` workers.
    pub fn new(config: &Config, workers: usize, mode: Mode) -> DataplaneSettings {
        let dataplane = &config.dataplane;
        DataplaneSettings {
            listen: dataplane.listen,
            workers,
            reply_port: dataplane.reply_port,
            mode,
            receive_buffer: dataplane.receive_buffer,
            send_buffer: dataplane.send_buffer,
            send_sockets: dataplane.send_sockets,
            packet_socket: dataplane.packet_socket,
            flows: config.pipeline_settings(workers),
            allowed_peers: dataplane.allowed_peers.clone(),
            io: dataplane.io,
            busy_poll: dataplane.busy_poll,
        }
    }
}

/// File descriptors the data plane may hold at most: per worker its receive socket, its
/// per-port send sockets, a raw socket per appliance address and a packet socket; the
/// resolver's netlink socket; and room for the rest of the process (the admin server's
/// connections, the flow log, the Kubernetes clients, the files it reads).
pub fn open_files_needed(settings: &DataplaneSettings) -> u64 {
    let per_worker = 1 + settings.send_sockets + crate::net::sys::MAX_SOURCE_ADDRESSES + 1;
    (settings.workers * per_worker + 1 + 256) as u64
}

/// What the workers judge by and report to, from the control plane.
#[derive(Debug, Clone, Default)]
pub struct ControlLinks {
    /// Where snapshots are published; `None` only in reflect mode.
    pub snapshots: Option<Arc<SnapshotCell>>,
    pub flow_log: Option<FlowLogSender>,
}

/// What the control plane can see of one worker.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    running: AtomicBool,
    counters: SharedCounters,
}

impl WorkerStatus {
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub fn counters(&self) -> Counters {
        self.counters.load()
    }

    /// Publishes `counters` as a worker would (for tests of what reads them).
    #[cfg(test)]
    pub(crate) fn publish_for_tests(&self, counters: &Counters) {
        self.counters.publish(counters);
    }
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind UDP {listen} for data-plane worker {worker}: {source}")]
    Bind { listen: SocketAddrV4, worker: usize, source: io::Error },
    #[error(
        "cannot open the raw IPv4 socket used to send packets back to GWLB: {0} \
         (it needs CAP_NET_RAW: run as root or grant the capability, see docs/operations.md)"
    )]
    RawSocket(io::Error),
    #[error("cannot create the eventfd or timerfds that wake idle data-plane workers: {0}")]
    Wake(io::Error),
    #[error("cannot start data-plane worker {worker}: {source}")]
    Spawn { worker: usize, source: io::Error },
    #[error(
        "dataplane.io is packet_ring, but {0}; set dataplane.io to sockets (or auto, which \
         falls back to sockets)"
    )]
    Ring(String),
    #[error(
        "a tc ingress rule for port {port} is installed on {interface} (for packet rings, which \
         this process does not use) and drops all GENEVE before the UDP sockets see it; this \
         process cannot remove it ({error}): run `labelwall ingress-rule remove -c CONFIG` (or `tc filter del \
         dev {interface} ingress pref {port}`) as root (with dataplane.io: sockets the unit's \
         ExecStartPre does)"
    )]
    StaleRule { interface: String, port: u16, error: String },
}

/// How GENEVE is received, as started: what `dataplane.io` asked for, what was taken (`auto`
/// may fall back), and the link the rings tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivePath {
    pub configured: IoMode,
    /// `sockets` or `packet_ring`.
    pub taken: IoMode,
    /// The rings' interface (`packet_ring` only).
    pub interface: Option<String>,
}

/// The running data plane.
#[derive(Debug)]
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    /// Wakes workers sleeping without a timeout once `stop` is set.
    wake: Arc<sys::Wake>,
    status: Arc<[Arc<WorkerStatus>]>,
    /// The packet socket's next hops; `None` when it is off or could not be opened.
    next_hops: Option<Arc<NextHops>>,
    threads: Vec<JoinHandle<()>>,
    /// The tc rule that keeps GENEVE from the kernel's UDP stack (`packet_ring` only).
    ingress: Option<IngressRule>,
    receive_path: ReceivePath,
}

impl Dataplane {
    /// Opens every socket first (so a bind or permission error stops startup before any
    /// thread runs), then starts one thread per worker.
    pub fn start(
        settings: &DataplaneSettings,
        links: &ControlLinks,
    ) -> Result<Dataplane, StartError> {
        let workers = settings.workers.max(1);
        let wake = Arc::new(sys::Wake::new().map_err(StartError::Wake)?);
        let tickers = (0..workers)
            .map(|_| sys::Ticker::new())
            .collect::<io::Result<Vec<_>>>()
            .map_err(StartError::Wake)?;
        let raw_senders = (0..workers)
            .map(|_| sys::RawSender::open(settings.send_buffer).map_err(StartError::RawSocket))
            .collect::<Result<Vec<_>, _>>()?;
        // Last: the tc rule it may install must be removed on any error after it.
        let (receivers, ingress) = open_receivers(settings, workers)?;
        let receive_path = ReceivePath {
            configured: settings.io,
            taken: if ingress.is_some() { IoMode::PacketRing } else { IoMode::Sockets },
            interface: ingress.as_ref().map(|rule| rule.interface().to_string()),
        };
        let sockets: Vec<_> = receivers.into_iter().zip(raw_senders).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(workers + 1);
        // Rings hand over frames past the IP stack; their replies skip the qdisc layer too.
        let bypass_qdisc = ingress.is_some();
        let opened = settings
            .packet_socket
            .then(|| nexthop::open_links(workers, settings.send_buffer, bypass_qdisc, &stop))
            .flatten();
        let (mut link_senders, next_hops) = match opened {
            Some((senders, resolver, hops)) => {
                threads.push(resolver);
                (senders.into_iter(), Some(hops))
            }
            None => (Vec::new().into_iter(), None),
        };
        let sockets: Vec<worker::WorkerSockets> = sockets
            .into_iter()
            .map(|(receive, raw)| worker::WorkerSockets {
                receive,
                single: SingleSender::new(raw, link_senders.next(), worker::MAX_SINGLES_PER_FLUSH),
            })
            .collect();
        let status: Arc<[Arc<WorkerStatus>]> =
            (0..workers).map(|_| Arc::new(WorkerStatus::default())).collect();
        for ((index, sockets), ticker) in sockets.into_iter().enumerate().zip(tickers) {
            let worker = worker::Worker::new(
                index,
                sockets,
                settings,
                links,
                Arc::clone(&status[index]),
                Arc::clone(&stop),
                worker::Waits { wake: Arc::clone(&wake), ticker },
            );
            let thread = std::thread::Builder::new()
                .name(format!("lw-worker-{index}"))
                .spawn(move || worker.run())
                .map_err(|source| StartError::Spawn { worker: index, source });
            match thread {
                Ok(handle) => threads.push(handle),
                Err(error) => {
                    stop.store(true, Ordering::Release);
                    wake.wake();
                    threads.into_iter().for_each(|t| drop(t.join()));
                    if let Some(rule) = ingress {
                        rule.remove();
                    }
                    return Err(error);
                }
            }
        }
        Ok(Dataplane { stop, wake, status, next_hops, threads, ingress, receive_path })
    }

    /// How GENEVE is received (for metrics and the start-up log).
    pub fn receive_path(&self) -> ReceivePath {
        self.receive_path.clone()
    }

    /// The next hops the workers' packet sockets send to, for metrics.
    pub fn next_hops(&self) -> Option<Arc<NextHops>> {
        self.next_hops.clone()
    }

    /// The workers' status, for readiness and metrics.
    pub fn status(&self) -> Arc<[Arc<WorkerStatus>]> {
        Arc::clone(&self.status)
    }

    /// Stops receiving, lets every worker send what it holds, joins them and returns the
    /// final totals.
    pub fn shutdown(self) -> Counters {
        self.stop.store(true, Ordering::Release);
        self.wake.wake();
        for thread in self.threads {
            let _ = thread.join();
        }
        if let Some(rule) = self.ingress {
            rule.remove();
        }
        total(&self.status)
    }
}

/// Sums the counters of all workers.
pub fn total(status: &[Arc<WorkerStatus>]) -> Counters {
    let mut sum = Counters::default();
    for worker in status {
        sum.accumulate(&worker.counters());
    }
    sum
}

/// Each worker's receiver, by `dataplane.io`, and the tc rule the rings need.
fn open_receivers(
    settings: &DataplaneSettings,
    workers: usize,
) -> Result<(Vec<worker::Receiver>, Option<IngressRule>), StartError> {
    let rings = match settings.io {
        IoMode::Sockets => None,
        IoMode::PacketRing => Some(open_rings(settings, workers).map_err(StartError::Ring)?),
        IoMode::Auto => match open_rings(settings, workers) {
            Ok(rings) => Some(rings),
            Err(reason) => {
                tracing::info!(%reason, "dataplane.io auto: receiving on UDP sockets");
                None
            }
        },
    };
    if let Some((rings, rule)) = rings {
        // Trains pass the rings by (longer than a frame): the UDP sockets take them, spread
        // as the rings' fanout spreads single packets.
        let sockets = bind_worker_sockets(settings, workers)?;
        if let Err(error) =
            sys::attach_reuseport_program(&sockets[0], &ring::spread_program(workers))
        {
            return Err(StartError::Ring(format!(
                "cannot spread the UDP sockets as the rings are spread: {error}"
            )));
        }
        tracing::info!(
            interface = rule.interface(),
            rule_installed_here = rule.owned(),
            "dataplane.io {}: receiving on packet rings (trains on UDP sockets)",
            settings.io.as_str()
        );
        let receivers = rings
            .into_iter()
            .zip(sockets)
            .map(|(ring, socket)| worker::Receiver::Ring(ring, socket.into()))
            .collect();
        return Ok((receivers, Some(rule)));
    }
    clear_stale_rules(settings)?;
    let sockets = bind_worker_sockets(settings, workers)?;
    Ok((sockets.into_iter().map(|socket| worker::Receiver::Socket(socket.into())).collect(), None))
}

/// One `SO_REUSEPORT` UDP socket per worker, bound in worker order (a reuseport program's
/// index is the order of binding).
fn bind_worker_sockets(
    settings: &DataplaneSettings,
    workers: usize,
) -> Result<Vec<Socket>, StartError> {
    (0..workers)
        .map(|worker| {
            bind_worker_socket(settings).map_err(|source| StartError::Bind {
                listen: settings.listen,
                worker,
                source,
            })
        })
        .collect()
}

/// `labelwall ingress-rule install|remove`: puts the rings' tc rule on the listen interface
/// (`install`, when `dataplane.io` may use rings there) or takes it off (`remove`, and
/// `install` with `dataplane.io: sockets`, from every interface the sockets listen on); what
/// was done, as a sentence.
pub fn ingress_rule(config: &Config, install: bool) -> Result<String, String> {
    let listen = config.dataplane.listen;
    let (ip, port) = (*listen.ip(), listen.port());
    if install && config.dataplane.io != IoMode::Sockets {
        let tap = match ring::tap_point(ip) {
            Ok(tap) => tap,
            Err(reason) => return Ok(format!("no packet rings here ({reason}): nothing to do")),
        };
        let rule = IngressRule::install(&tap.name, &tap.addresses, port)?;
        // Left in place for the appliance; `remove` takes it off.
        return Ok(format!("the tc ingress rule for {listen} is on {}", rule.interface()));
    }
    let rules = rules_on(listen);
    if rules.is_empty() {
        return Ok(format!("no tc ingress rule for port {port} on the interfaces of {ip}"));
    }
    for interface in &rules {
        crate::net::ingress::remove(interface, port)?;
    }
    Ok(format!("removed the tc ingress rule for port {port} from {}", rules.join(", ")))
}

/// The interfaces a socket listening on `listen` receives from that have a tc ingress rule
/// for its port (which drops GENEVE before the socket sees it).
fn rules_on(listen: SocketAddrV4) -> Vec<String> {
    let interfaces = ring::interfaces_with(*listen.ip()).unwrap_or_default();
    interfaces
        .into_iter()
        .filter(|(_, name, loopback)| {
            !loopback && crate::net::ingress::present(name, listen.port())
        })
        .map(|(_, name, _)| name)
        .collect()
}

/// Before receiving on UDP sockets: a tc ingress rule for the listen port (left by a crash, or
/// by a run with `dataplane.io: packet_ring`) would silently drop all GENEVE. Removes it when
/// this process may (CAP_NET_ADMIN), else refuses to start, saying how to remove it.
fn clear_stale_rules(settings: &DataplaneSettings) -> Result<(), StartError> {
    let port = settings.listen.port();
    for interface in rules_on(settings.listen) {
        match crate::net::ingress::remove(&interface, port) {
            Ok(()) => tracing::warn!(
                %interface,
                port,
                "removed a tc ingress rule left by dataplane.io packet_ring: it would have \
                 dropped all GENEVE before the UDP sockets"
            ),
            Err(error) => {
                return Err(StartError::StaleRule { interface, port, error });
            }
        }
    }
    Ok(())
}

/// One ring per worker in one fanout group, then the tc rule (only once the rings take the
/// packets it drops); why not, as a sentence, when that cannot be done here.
fn open_rings(
    settings: &DataplaneSettings,
    workers: usize,
) -> Result<(Vec<RxRing>, IngressRule), String> {
    let tap = ring::tap_point(*settings.listen.ip())?;
    let port = settings.listen.port();
    let mut rings: Vec<RxRing> = Vec::with_capacity(workers);
    for worker in 0..workers {
        let group = rings.first().map(RxRing::fanout_group).transpose();
        let ring = group
            .and_then(|group| RxRing::open(&tap, port, settings.receive_buffer, group, workers));
        rings.push(ring.map_err(|error| {
            format!("cannot open the packet ring of worker {worker} on {}: {error}", tap.name)
        })?);
    }
    let rule = IngressRule::install(&tap.name, &tap.addresses, port)?;
    Ok((rings, rule))
}

fn bind_worker_socket(settings: &DataplaneSettings) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    sys::set_buffer_size(&socket, libc::SO_RCVBUFFORCE, settings.receive_buffer, |s, n| {
        s.set_recv_buffer_size(n)
    });
    if settings.busy_poll > 0 {
        // The kernel polls the device queue for this long before the receive call sleeps
        // (SO_PREFER_BUSY_POLL: and keeps the device's interrupts deferred meanwhile, with
        // the host settings in appliance/sysctl). Refused without CAP_NET_ADMIN above
        // net.core.busy_read: the socket then works without it.
        if let Err(error) = sys::set_busy_poll(&socket, settings.busy_poll) {
            tracing::warn!(%error, busy_poll = settings.busy_poll, "busy polling not available");
        }
    }
    socket.bind(&settings.listen.into())?;
    Ok(socket)
}
