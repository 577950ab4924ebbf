//! Network namespaces and veth pairs for end-to-end tests, made with `ip` (iproute2).
//!
//! Every namespace is named `lw-<pid>-<n>-<role>`, so runs and tests never share one, and is
//! deleted on drop, also when the test panics; processes still running inside it (only ones
//! the test started there) are killed first. Every command is bounded by [`COMMAND_LIMIT`].
//! Needs root; a missing tool panics with the way to get it (tests/run.sh installs them).
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest any one `ip` or `sysctl` command may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(20);

/// Panics unless `tool --version`-style probes succeed for every tool, naming tests/run.sh.
pub fn require_tools(tools: &[(&str, &str)]) {
    for (tool, probe) in tools {
        let found = Command::new(tool)
            .arg(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "this test needs `{tool}`, which is not installed: run tests/run.sh (as root), \
             which installs iproute2, iperf3 and the other test tools, then runs the tests"
        );
    }
}

/// Runs a command to completion within `limit`; panics with its output if it fails.
pub fn run_checked(command: &mut Command, limit: Duration) -> Output {
    let output = run_bounded(command, limit);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command to completion, killing it at `limit`; its output goes through temporary
/// files so that a chatty command cannot block on a full pipe.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
    let status = wait_bounded(&mut child, limit)
        .unwrap_or_else(|| panic!("{command:?} did not finish within {limit:?}"));
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// Waits for `child` to exit; kills it and returns `None` once `limit` has passed.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A network namespace that exists until dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `lw-<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("lw-{}-{n}-{role}", std::process::id());
        let output = run_bounded(Command::new("ip").args(["netns", "add", &name]), COMMAND_LIMIT);
        assert!(
            output.status.success(),
            "cannot create network namespace {name} (the end-to-end tests need root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let output =
            run_checked(Command::new("ip").args(["-n", &self.name]).args(args), COMMAND_LIMIT);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Sets a sysctl inside the namespace.
    /// (Through /proc/sys, so that procps is not needed.)
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        run_checked(self.exec("sh").args(["-c", &format!("echo {value} > {path}")]), COMMAND_LIMIT);
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which execs it,
    /// so the child's pid is the program's).
    pub fn exec(&self, program: impl AsRef<Path>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program.as_ref());
        command
    }

    /// `GET path` on 127.0.0.1:`port` inside the namespace (bash's /dev/tcp): the whole
    /// response, empty when nothing answers.
    pub fn http_get(&self, port: u16, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1; \
             printf 'GET {path} HTTP/1.1\\r\\nHost: labelwall\\r\\nConnection: close\\r\\n\\r\\n' >&3; \
             timeout 5 cat <&3"
        );
        let output = run_bounded(self.exec("bash").args(["-c", &script]), COMMAND_LIMIT);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Adds address `cidr` to `dev` and brings `dev` up.
    pub fn address(&self, dev: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", dev]);
        self.ip(&["link", "set", dev, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs in here was started by this test: stop it, then the namespace.
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A veth pair from `a` (named `a_dev`) to `b` (named `b_dev`), both up with `mtu`.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str, mtu: u32) {
    let mtu = mtu.to_string();
    a.ip(&[
        "link",
        "add",
        "name",
        a_dev,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "mtu",
        &mtu,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", a_dev, "up"]);
    b.ip(&["link", "set", b_dev, "up"]);
}

/// Runs `labelwall loadgen --json` in `netns`, sending GENEVE to `target` and listening on
/// `listen` for `secs` seconds, with `args` (rate, flows, size); its report.
pub fn loadgen(
    netns: &Netns,
    target: &str,
    listen: &str,
    secs: u32,
    args: &[&str],
) -> serde_json::Value {
    let secs_text = secs.to_string();
    let output = run_checked(
        netns
            .exec(env!("CARGO_BIN_EXE_labelwall"))
            .args(["loadgen", "--target", target, "--listen", listen, "--duration", &secs_text])
            .args(args)
            .arg("--json"),
        Duration::from_secs(u64::from(secs) + 20),
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A tcpdump capture in a namespace to a pcap file: `tcpdump ARGS -w PATH FILTER`.
pub struct Capture(Child);

impl Capture {
    /// Starts it and gives it time to start listening.
    pub fn start(netns: &Netns, args: &[&str], path: &Path, filter: &[&str]) -> Capture {
        let child = netns
            .exec("tcpdump")
            .args(args)
            .arg("-w")
            .arg(path)
            .args(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        Capture(child)
    }

    /// Lets the last packets in, then stops it (SIGINT: the file is complete).
    pub fn stop(mut self) {
        std::thread::sleep(Duration::from_millis(200));
        run_bounded(Command::new("kill").args(["-INT", &self.0.id().to_string()]), COMMAND_LIMIT);
        wait_bounded(&mut self.0, Duration::from_secs(5)).expect("tcpdump stops on SIGINT");
    }
}
