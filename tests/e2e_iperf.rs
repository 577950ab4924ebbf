//! End to end with real kernel TCP: iperf3 between network namespaces crosses the appliance
//! (`labelwall run` with the demo's bookinfo inventory and policy) through a simulated GWLB
//! (`labelwall gwlb-sim`, which owns a TUN device).
//!
//! ```text
//!  rat  10.0.1.15/24 --veth-- gw (router) --veth-- db 10.20.0.5/24 (iperf3 -s -p 3306)
//!  oth  10.0.1.20/24 --veth--  |  policy routing: what enters from a pod or the db veth
//!                              |  goes into TUN lw-gwlb0, owned by gwlb-sim; what it writes
//!                              |  back is routed on by the main table
//!                     gwlb-sim 10.99.0.1 --veth, MTU 9000-- app 10.99.0.2:6081 labelwall run
//! ```
//!
//! Needs root, `ip` (iproute2) and iperf3: tests/run.sh installs them. The namespaces get
//! unique names per run and are removed on drop, also when a test fails; every wait is bounded.
//! The tests run one at a time (they share the CPU with the throughput they measure).

mod common;
#[path = "common/netns.rs"]
mod netns;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::metric;
use netns::{Netns, run_bounded, veth, wait_bounded};

const RATINGS_IP: &str = "10.0.1.15";
const OTHER_IP: &str = "10.0.1.20";
const DB_IP: &str = "10.20.0.5";
const SIM_IP: &str = "10.99.0.1";
const APPLIANCE_IP: &str = "10.99.0.2";
const GENEVE_PORT: u16 = 6081;
const ADMIN_PORT: u16 = 8080;
const MYSQL_PORT: &str = "3306";
const TUN: &str = "lw-gwlb0";
const POD_MTU: u32 = 1500;
/// Between the simulator and the appliance: room for 1,500-byte inner packets plus 68 bytes.
const GENEVE_MTU: u32 = 9000;
/// Routing table in the gw namespace that sends pod <-> db traffic into the TUN device.
const TO_GWLB_TABLE: &str = "100";
const CONNECT_TIMEOUT_MS: u64 = 2000;

/// The tests share the machine's two cores with what they measure: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A background process whose stdout and stderr go to a log file; killed on drop.
struct Daemon {
    what: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(what: &'static str, mut command: Command, log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {what}: {error}"));
        Daemon { what, child: Some(child), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ready()` holds, failing if the process exits first or `limit` passes.
    fn wait_until(&mut self, limit: Duration, mut ready: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if ready(self) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited early with {status}:\n{}", self.what, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {limit:?}:\n{}",
                self.what,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the status and the log.
    fn terminate(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("still running");
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {} failed", self.what);
        let status = wait_bounded(&mut child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{} did not stop within 10 s of SIGTERM", self.what));
        (status, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The five namespaces and the two labelwall processes. Fields drop in order: the processes
/// first, then the namespaces, then the files.
struct Bench {
    sim: Daemon,
    appliance: Daemon,
    rat: Netns,
    oth: Netns,
    db: Netns,
    #[allow(dead_code)] // held for its drop: the router namespace
    gw: Netns,
    app: Netns,
    dir: tempfile::TempDir,
}

impl Bench {
    /// Builds the topology, starts the appliance with `policy` (and the demo's inventory) and
    /// the simulator, and routes pod <-> db traffic through them; GENEVE received on UDP
    /// sockets (the `..._through_packet_rings` tests take the rings, the default here).
    fn start(policy: &str) -> Bench {
        Bench::start_with(policy, "  packet_socket: true\n  io: sockets\n")
    }

    /// As [`Bench::start`], with `dataplane` (lines of the `dataplane:` section) added.
    fn start_with(policy: &str, dataplane: &str) -> Bench {
        netns::require_tools(&[("ip", "-V"), ("iperf3", "--version")]);
        let dir = tempfile::tempdir().unwrap();
        let (rat, oth, db) = (Netns::new("rat"), Netns::new("oth"), Netns::new("db"));
        let (gw, app) = (Netns::new("gw"), Netns::new("app"));

        veth(&gw, "rat0", &rat, "eth0", POD_MTU);
        veth(&gw, "oth0", &oth, "eth0", POD_MTU);
        veth(&gw, "db0", &db, "eth0", POD_MTU);
        veth(&gw, "app0", &app, "eth0", GENEVE_MTU);
        for (pod, ip) in [(&rat, RATINGS_IP), (&oth, OTHER_IP)] {
            pod.address("eth0", &format!("{ip}/24"));
            pod.ip(&["route", "add", "default", "via", "10.0.1.1"]);
        }
        db.address("eth0", &format!("{DB_IP}/24"));
        db.ip(&["route", "add", "default", "via", "10.20.0.1"]);
        app.address("eth0", &format!("{APPLIANCE_IP}/24"));

        // gw: the pods' gateway 10.0.1.1 on both pod veths, a host route to each pod.
        gw.address("rat0", "10.0.1.1/32");
        gw.address("oth0", "10.0.1.1/32");
        gw.ip(&["route", "add", &format!("{RATINGS_IP}/32"), "dev", "rat0"]);
        gw.ip(&["route", "add", &format!("{OTHER_IP}/32"), "dev", "oth0"]);
        gw.address("db0", "10.20.0.1/24");
        gw.address("app0", &format!("{SIM_IP}/24"));
        gw.sysctl("net.ipv4.ip_forward", "1");
        // Replies come back in on the TUN device, not the veth the route points to.
        gw.sysctl("net.ipv4.conf.all.rp_filter", "0");
        gw.sysctl("net.ipv4.conf.default.rp_filter", "0");
        for (dev, to) in
            [("rat0", "10.20.0.0/24"), ("oth0", "10.20.0.0/24"), ("db0", "10.0.1.0/24")]
        {
            gw.ip(&["rule", "add", "iif", dev, "to", to, "lookup", TO_GWLB_TABLE]);
        }

        let appliance = start_appliance(&app, &dir, policy, dataplane);
        let mut sim = Daemon::start(
            "labelwall gwlb-sim",
            {
                let mut command = gw.exec(env!("CARGO_BIN_EXE_labelwall"));
                command.args([
                    "gwlb-sim",
                    "--tun",
                    TUN,
                    "--appliance",
                    &format!("{APPLIANCE_IP}:{GENEVE_PORT}"),
                    "--local",
                    SIM_IP,
                    "--reply-port",
                    &GENEVE_PORT.to_string(),
                    "--mtu",
                    &POD_MTU.to_string(),
                    "--stats-every",
                    "0",
                ]);
                command
            },
            dir.path().join("gwlb-sim.log"),
        );
        sim.wait_until(Duration::from_secs(10), |d| d.log().contains("gwlb-sim: ready"));
        gw.sysctl(&format!("net.ipv4.conf.{TUN}.rp_filter"), "0");
        gw.ip(&["route", "add", "default", "dev", TUN, "table", TO_GWLB_TABLE]);
        Bench { sim, appliance, rat, oth, db, gw, app, dir }
    }

    /// Starts a one-off iperf3 server on the database and waits until it listens.
    fn iperf_server(&self) -> Daemon {
        let mut server = Daemon::start(
            "iperf3 server",
            {
                let mut command = self.db.exec("iperf3");
                command.args(["-s", "-p", MYSQL_PORT, "-1"]);
                command
            },
            self.dir.path().join("iperf3-server.log"),
        );
        let filter = format!("sport = :{MYSQL_PORT}");
        let db = &self.db;
        server.wait_until(Duration::from_secs(10), |_| {
            let output = run_bounded(db.exec("ss").args(["-Hltn", &filter]), netns::COMMAND_LIMIT);
            !output.stdout.is_empty()
        });
        server
    }

    /// Runs an iperf3 client in `pod` against the database for `seconds`.
    fn iperf_client(&self, pod: &Netns, seconds: u32) -> ClientRun {
        self.iperf_client_with(pod, seconds, &[])
    }

    /// Like [`Bench::iperf_client`], with more iperf3 flags.
    fn iperf_client_with(&self, pod: &Netns, seconds: u32, extra: &[&str]) -> ClientRun {
        let started = Instant::now();
        let output = run_bounded(
            pod.exec("iperf3")
                .args([
                    "-c",
                    DB_IP,
                    "-p",
                    MYSQL_PORT,
                    "-t",
                    &seconds.to_string(),
                    "-J",
                    "--connect-timeout",
                    &CONNECT_TIMEOUT_MS.to_string(),
                ])
                .args(extra),
            Duration::from_secs(u64::from(seconds) + 30),
        );
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|error| {
            panic!(
                "iperf3 -J printed no JSON ({error}):\n{text}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        ClientRun { success: output.status.success(), json, elapsed }
    }

    /// `GET path` on the appliance's admin port, from inside its namespace (bash's /dev/tcp).
    fn admin_get(&self, path: &str) -> String {
        admin_get(&self.app, path)
    }

    /// Stops the simulator and returns its final counters.
    fn stop_sim(&mut self) -> SimCounters {
        let (status, log) = self.sim.terminate();
        assert!(status.success(), "gwlb-sim exited with {status} on SIGTERM:\n{log}");
        let line = log
            .lines()
            .find_map(|l| l.strip_prefix("gwlb-sim: stopped: "))
            .unwrap_or_else(|| panic!("gwlb-sim printed no final counters:\n{log}"));
        SimCounters { line: line.to_string() }
    }

    /// What the appliance and the simulator said, for failure messages.
    fn logs(&self) -> String {
        format!(
            "--- appliance log:\n{}\n--- gwlb-sim log:\n{}",
            self.appliance.log(),
            self.sim.log()
        )
    }
}

fn start_appliance(app: &Netns, dir: &tempfile::TempDir, policy: &str, dataplane: &str) -> Daemon {
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("policy.yaml"), policy).unwrap();
    std::fs::write(path("inventory.yaml"), labelwall::tools::demo::INVENTORY).unwrap();
    let config = format!(
        "dataplane:\n  listen: {APPLIANCE_IP}:{GENEVE_PORT}\n  workers: 1\n  reply_port: \
         {GENEVE_PORT}\n{dataplane}admin:\n  listen: 127.0.0.1:{ADMIN_PORT}\npolicy: {}\nlabels:\n  \
         inventory: [{}]\n",
        path("policy.yaml").display(),
        path("inventory.yaml").display()
    );
    std::fs::write(path("labelwall.yaml"), config).unwrap();
    let mut command = app.exec(env!("CARGO_BIN_EXE_labelwall"));
    command.arg("run").arg("-c").arg(path("labelwall.yaml"));
    let mut appliance = Daemon::start("labelwall run", command, path("labelwall.log"));
    appliance.wait_until(Duration::from_secs(15), |_| {
        admin_get(app, "/readyz").starts_with("HTTP/1.1 200")
    });
    appliance
}

fn admin_get(app: &Netns, path: &str) -> String {
    app.http_get(ADMIN_PORT, path)
}

/// One iperf3 client run.
struct ClientRun {
    success: bool,
    json: serde_json::Value,
    elapsed: Duration,
}

impl ClientRun {
    fn error(&self) -> Option<&str> {
        self.json.get("error").and_then(|e| e.as_str())
    }

    /// Received bits per second over the whole test.
    fn bits_per_second(&self) -> f64 {
        self.json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0)
    }
}

/// The simulator's final `key=value` counters.
struct SimCounters {
    line: String,
}

impl SimCounters {
    fn get(&self, key: &str) -> u64 {
        self.line
            .split_whitespace()
            .find_map(|pair| pair.trim_start_matches('(').strip_prefix(key)?.strip_prefix('='))
            .and_then(|value| value.trim_end_matches(')').parse().ok())
            .unwrap_or_else(|| panic!("no {key} in gwlb-sim's counters: {}", self.line))
    }
}

/// Prints to the real stderr (not captured by the test harness), so the figure shows in CI.
fn report(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn ratings_reaches_the_database_through_the_appliance_and_other_is_refused_at_once() {
    let _serial = serial();
    ratings_passes_and_other_is_refused(Bench::start(labelwall::tools::demo::POLICY));
}

#[test]
fn ratings_reaches_the_database_and_other_is_refused_through_packet_rings() {
    let _serial = serial();
    let bench = Bench::start_with(labelwall::tools::demo::POLICY, "  io: packet_ring\n");
    assert!(bench.logs().contains("receiving on packet rings"), "{}", bench.logs());
    ratings_passes_and_other_is_refused(bench);
}

/// iperf3 from ratings gets through, other is refused at once by the appliance's RST, and
/// gwlb-sim found every returned datagram as it sent it.
fn ratings_passes_and_other_is_refused(mut bench: Bench) {
    let _server = bench.iperf_server();
    let ratings = bench.iperf_client(&bench.rat, 3);
    assert!(
        ratings.success && ratings.error().is_none(),
        "iperf3 from ratings failed: {:?}\n{}",
        ratings.error(),
        bench.logs()
    );
    let bps = ratings.bits_per_second();
    assert!(bps > 0.0, "iperf3 from ratings reported no throughput: {}", ratings.json["end"]);
    report(&format!(
        "e2e_iperf: iperf3 ratings -> rating-database through gwlb-sim and labelwall: \
         {:.3} Gbit/s received ({:.1} Mbit/s) over 3 s",
        bps / 1e9,
        bps / 1e6
    ));

    let other = bench.iperf_client(&bench.oth, 1);
    let error = other.error().unwrap_or_default().to_lowercase();
    assert!(
        error.contains("refused"),
        "iperf3 from other should be refused, got success={} error={error:?}\n{}",
        other.success,
        bench.logs()
    );
    assert!(
        other.elapsed < Duration::from_millis(1500),
        "the refusal took {:?}: the appliance should answer the SYN with a RST at once",
        other.elapsed
    );

    let metrics = bench.admin_get("/metrics");
    assert!(metric(&metrics, "labelwall_packets_total{verdict=\"reject\"}") >= 1, "{metrics}");
    assert!(metric(&metrics, "labelwall_packets_total{verdict=\"allow\"}") > 0, "{metrics}");
    // The simulator's neighbour was known after the first replies: single packets went out as
    // Ethernet frames through the packet socket from then on (the raw socket took the first
    // ones, and the kernel learned the neighbour from them).
    let packet = metric(&metrics, "labelwall_send_packets_total{path=\"packet\"}");
    let raw = metric(&metrics, "labelwall_send_packets_total{path=\"raw\"}");
    report(&format!("e2e_iperf: single packets sent back: {packet} packet socket, {raw} raw"));
    assert!(packet > 1000 && packet > 10 * raw, "{metrics}");
    let counters = bench.stop_sim();
    report(&format!("e2e_iperf: gwlb-sim counters: {}", counters.line));
    assert_eq!(counters.get("mismatches"), 0, "{}", counters.line);
    assert!(counters.get("rejects") >= 1, "{}", counters.line);
    assert!(counters.get("back") > 1000, "{}", counters.line);
    assert!(counters.get("out_frames") * 10 > counters.get("out") * 9, "{}", counters.line);
}

#[test]
fn with_a_deny_rule_other_times_out_while_ratings_still_passes() {
    let _serial = serial();
    let others =
        "  - name: others-to-db\n    from: [any]\n    to: [rating-database]\n    action: reject\n";
    assert!(labelwall::tools::demo::POLICY.contains(others));
    let policy = labelwall::tools::demo::POLICY
        .replace(others, &others.replace("action: reject", "action: deny"));
    // Also the raw socket's turn to carry single packets across a real link.
    let mut bench = Bench::start_with(&policy, "  packet_socket: false\n  io: sockets\n");

    let _server = bench.iperf_server();
    let other = bench.iperf_client(&bench.oth, 1);
    let error = other.error().unwrap_or_default().to_lowercase();
    assert!(
        !error.is_empty() && !error.contains("refused"),
        "iperf3 from other should time out, got success={} error={error:?}\n{}",
        other.success,
        bench.logs()
    );
    let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    assert!(
        other.elapsed >= timeout - Duration::from_millis(100),
        "other gave up after {:?}, before its {timeout:?} connect timeout: not a silent drop",
        other.elapsed
    );

    let ratings = bench.iperf_client(&bench.rat, 1);
    assert!(
        ratings.success && ratings.error().is_none() && ratings.bits_per_second() > 0.0,
        "iperf3 from ratings failed under the deny policy: {:?}\n{}",
        ratings.error(),
        bench.logs()
    );
    let metrics = bench.admin_get("/metrics");
    assert!(metric(&metrics, "labelwall_packets_total{verdict=\"deny\"}") >= 1, "{metrics}");
    assert_eq!(metric(&metrics, "labelwall_send_packets_total{path=\"packet\"}"), 0);
    assert!(metric(&metrics, "labelwall_send_packets_total{path=\"raw\"}") > 100, "{metrics}");
    let counters = bench.stop_sim();
    assert_eq!(counters.get("mismatches"), 0, "{}", counters.line);
    assert_eq!(counters.get("rejects"), 0, "{}", counters.line);
}

#[test]
fn a_reused_5_tuple_gets_a_new_cookie_and_still_passes() {
    let _serial = serial();
    let mut bench = Bench::start(labelwall::tools::demo::POLICY);
    // The client may hold the old connection in TIME_WAIT; let it reuse the 5-tuple.
    bench.rat.sysctl("net.ipv4.tcp_tw_reuse", "1");
    for run in 1..=2 {
        let _server = bench.iperf_server();
        let ratings = bench.iperf_client_with(&bench.rat, 1, &["--cport", "45000"]);
        assert!(
            ratings.error().is_none() && ratings.bits_per_second() > 0.0,
            "run {run} from ratings:45000 failed: {:?}\n{}",
            ratings.error(),
            bench.logs()
        );
    }
    let counters = bench.stop_sim();
    assert_eq!(counters.get("mismatches"), 0, "{}", counters.line);
    assert!(counters.get("flows_renewed") >= 1, "{}", counters.line);
}

/// The demo's policy with named egress first: ratings may reach the database's TLS and HTTP
/// ports only under the name api.allowed.example; any other name there is rejected.
fn names_policy() -> String {
    labelwall::tools::demo::POLICY
        .replace(
            "  internet:\n",
            "  allowed-api:\n    domains: [api.allowed.example]\n  internet:\n",
        )
        .replace(
            "rules:\n",
            "rules:\n  - name: ratings-to-allowed-api\n    from: [ratings]\n    to: [allowed-api]\n    \
             ports: [tcp/443, tcp/80]\n    action: allow\n  - name: ratings-other-names\n    \
             from: [ratings]\n    to: [rating-database]\n    ports: [tcp/443, tcp/80]\n    \
             action: reject\n",
        )
}

/// Real clients name the server they ask for: openssl s_client's SNI and curl's Host decide,
/// through the appliance, whether the connection to the same address and port goes through.
#[test]
fn server_names_of_real_clients_decide_tls_and_http_connections() {
    let _serial = serial();
    server_names_decide(Bench::start(&names_policy()));
}

/// The same through packet rings: released datagrams go out of the ring worker's own buffer.
#[test]
fn server_names_of_real_clients_decide_connections_through_packet_rings() {
    let _serial = serial();
    let bench = Bench::start_with(&names_policy(), "  io: packet_ring\n");
    assert!(bench.logs().contains("receiving on packet rings"), "{}", bench.logs());
    server_names_decide(bench);
}

/// A self-signed certificate and key for `api.allowed.example` in `dir` (the TLS and QUIC
/// servers of the server-name tests).
fn self_signed_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    netns::run_checked(
        std::process::Command::new("openssl").args(["req", "-x509", "-newkey", "ec"]).args([
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=api.allowed.example",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]),
        netns::COMMAND_LIMIT,
    );
    (cert, key)
}

fn server_names_decide(bench: Bench) {
    netns::require_tools(&[("openssl", "version"), ("curl", "--version"), ("python3", "-V")]);
    let dir = bench.dir.path();
    let (cert, key) = self_signed_certificate(dir);
    let mut tls_server = Daemon::start(
        "openssl s_server",
        {
            let mut command = bench.db.exec("openssl");
            command.args(["s_server", "-accept", "443", "-www", "-cert"]);
            command.args([cert.to_str().unwrap(), "-key", key.to_str().unwrap()]);
            command
        },
        dir.join("s_server.log"),
    );
    let mut http_server = Daemon::start(
        "python3 http.server",
        {
            let mut command = bench.db.exec("python3");
            command.args(["-m", "http.server", "80", "--bind", DB_IP, "--directory"]);
            command.arg(dir);
            command
        },
        dir.join("http.log"),
    );
    let db = &bench.db;
    for (server, port) in [(&mut tls_server, "443"), (&mut http_server, "80")] {
        let filter = format!("sport = :{port}");
        server.wait_until(Duration::from_secs(10), |_| {
            let output = run_bounded(db.exec("ss").args(["-Hltn", &filter]), netns::COMMAND_LIMIT);
            !output.stdout.is_empty()
        });
    }

    let s_client = |name: &str| {
        let started = Instant::now();
        let script = format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -connect {DB_IP}:443 \
             -servername {name} -quiet 2>&1"
        );
        let output =
            run_bounded(bench.rat.exec("sh").args(["-c", &script]), Duration::from_secs(15));
        (String::from_utf8_lossy(&output.stdout).into_owned(), started.elapsed())
    };
    let (allowed, _) = s_client("api.allowed.example");
    assert!(
        allowed.contains("200 ok"),
        "the allowed name's handshake and request:\n{allowed}\n{}",
        bench.logs()
    );
    let (other, elapsed) = s_client("other.example");
    assert!(!other.contains("200 ok"), "another name got through:\n{other}");
    assert!(
        other.to_lowercase().contains("reset") || other.contains("errno=104"),
        "the client should see a reset: {other}"
    );
    assert!(elapsed < Duration::from_secs(5), "the reset took {elapsed:?}");

    // curl from ratings: the status code it printed and its exit status.
    let curl = |args: &[&str]| {
        let output = run_bounded(
            bench
                .rat
                .exec("curl")
                .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(args),
            Duration::from_secs(15),
        );
        (String::from_utf8_lossy(&output.stdout).into_owned(), output.status.code())
    };
    // Over TLS: its SNI from the URL's host, resolved to the database.
    let curl_tls = |name: &str| {
        curl(&["-k", "--resolve", &format!("{name}:443:{DB_IP}"), &format!("https://{name}/")])
    };
    assert_eq!(curl_tls("api.allowed.example").0, "200", "{}", bench.logs());
    let (code, status) = curl_tls("other.example");
    assert_eq!((code.as_str(), status), ("000", Some(35)), "curl: reset in the TLS handshake");

    // Plain HTTP: the name from the Host header.
    let curl_http =
        |host: &str| curl(&["-H", &format!("Host: {host}"), &format!("http://{DB_IP}/")]);
    assert_eq!(curl_http("api.allowed.example").0, "200", "{}", bench.logs());
    let (code, status) = curl_http("other.example");
    assert_eq!(code, "000", "another Host got an answer");
    assert_eq!(status, Some(56), "curl: connection reset (exit 56)");

    let metrics = bench.admin_get("/metrics");
    assert!(metric(&metrics, "labelwall_server_names_total{result=\"found\"}") >= 6, "{metrics}");
    assert_eq!(metric(&metrics, "labelwall_flows_pending"), 0, "{metrics}");
    let http_log = http_server.log();
    assert_eq!(http_log.matches("\"GET / ").count(), 1, "only the allowed request: {http_log}");
}

/// The Python with aioquic that tests/run.sh installs (LABELWALL_AIOQUIC_PYTHON, else its
/// cache path).
fn aioquic_python() -> String {
    std::env::var("LABELWALL_AIOQUIC_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        let cache = std::env::var("LABELWALL_CI_CACHE")
            .unwrap_or_else(|_| format!("{home}/.cache/labelwall-ci"));
        format!("{cache}/aioquic-1.7.2/bin/python")
    })
}

const QUIC_SERVER: &str = r#"
import asyncio, sys
from aioquic.asyncio import serve
from aioquic.quic.configuration import QuicConfiguration
cert, key, host = sys.argv[1:4]
config = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
config.load_cert_chain(cert, key)
async def main():
    await serve(host, 443, configuration=config)
    print("listening", flush=True)
    await asyncio.sleep(120)
asyncio.run(main())
"#;

/// Connects with `name` (and a ClientHello over two Initials when `big`); prints `connected`
/// once the handshake completed and a PING was answered, else `failed`.
const QUIC_CLIENT: &str = r#"
import asyncio, ssl, sys
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
host, name, big = sys.argv[1], sys.argv[2], sys.argv[3] == "big"
config = QuicConfiguration(is_client=True, server_name=name, alpn_protocols=["hq-interop"],
                           verify_mode=ssl.CERT_NONE, quantum_readiness_test=big)
async def main():
    async with connect(host, 443, configuration=config) as client:
        await client.ping()
        print("connected", flush=True)
try:
    asyncio.run(asyncio.wait_for(main(), 4))
except BaseException as error:
    print("failed", type(error).__name__, flush=True)
"#;

/// A real QUIC client's Initials name the server: the allowed name's handshake completes
/// (also with a ClientHello over two Initials), another name's never reaches the server.
#[test]
fn quic_clients_are_judged_by_the_name_in_their_initials() {
    let _serial = serial();
    let python = aioquic_python();
    if !std::path::Path::new(&python).exists() {
        panic!("{python} is missing: tests/run.sh installs aioquic");
    }
    let policy =
        names_policy().replace("ports: [tcp/443, tcp/80]", "ports: [tcp/443, tcp/80, udp/443]");
    let bench = Bench::start(&policy);
    let dir = bench.dir.path();
    let (cert, key) = self_signed_certificate(dir);
    let mut server = Daemon::start(
        "aioquic server",
        {
            let mut command = bench.db.exec(&python);
            command.args(["-c", QUIC_SERVER]).arg(&cert).arg(&key).arg(DB_IP);
            command
        },
        dir.join("quic-server.log"),
    );
    server.wait_until(Duration::from_secs(10), |d| d.log().contains("listening"));
    let client = |name: &str, big: bool| {
        let mut command = bench.rat.exec(&python);
        command.args(["-c", QUIC_CLIENT, DB_IP, name, if big { "big" } else { "small" }]);
        let output = run_bounded(&mut command, Duration::from_secs(15));
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    };
    let allowed = client("api.allowed.example", false);
    assert!(allowed.contains("connected"), "allowed name: {allowed}\n{}", bench.logs());
    let two_initials = client("api.allowed.example", true);
    assert!(two_initials.contains("connected"), "two Initials: {two_initials}\n{}", bench.logs());
    let other = client("other.example", false);
    assert!(other.contains("failed"), "another name: {other}");
    let metrics = bench.admin_get("/metrics");
    assert!(metric(&metrics, "labelwall_server_names_total{result=\"found\"}") >= 3, "{metrics}");
}
