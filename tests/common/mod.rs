//! Shared harness of the integration tests: start the real `labelwall` binary on loopback,
//! play a GWLB peer on 127.0.0.2, read the admin endpoints, build GWLB GENEVE datagrams.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labelwall::wire::GwlbOptions;

pub const APPLIANCE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
pub const GWLB_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
pub const ALLOW_ALL: &str = "default_action: allow\n";

pub fn free_udp_port(ip: Ipv4Addr) -> u16 {
    UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

pub fn free_tcp_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// A running `labelwall run` process with its own config and ports; stopped on drop.
pub struct Appliance {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub reply_port: u16,
}

impl Appliance {
    /// Starts the appliance with an allow-everything policy and `extra` appended to a
    /// generated labelwall.yaml, and waits for `/readyz`. Lines of `extra` written
    /// `dataplane.KEY: VALUE` go into the generated `dataplane:` section as `KEY: VALUE`.
    pub fn start(reply_port: u16, workers: usize, extra: &str, args: &[&str]) -> Appliance {
        Appliance::start_with(reply_port, workers, ALLOW_ALL, None, extra, args)
    }

    /// Starts the appliance with the given policy.yaml and inventory.yaml texts.
    pub fn start_with(
        reply_port: u16,
        workers: usize,
        policy: &str,
        inventory: Option<&str>,
        extra: &str,
        args: &[&str],
    ) -> Appliance {
        let ip = APPLIANCE_IP;
        Appliance::start_wrapped(ip, reply_port, workers, policy, inventory, extra, args, &[], &[])
    }

    /// As [`Appliance::start`], listening on `ip` (0.0.0.0: every local address) instead of
    /// 127.0.0.1; `listen` is then the port on 127.0.0.1.
    pub fn start_listening_on(ip: Ipv4Addr, reply_port: u16) -> Appliance {
        Appliance::start_wrapped(ip, reply_port, 1, ALLOW_ALL, None, "", &[], &[], &[])
    }

    /// As [`Appliance::start_with`], listening on `listen_ip`, the binary started as the last
    /// arguments of `wrapper` (a program and its first arguments, e.g. `unshare ...`), with
    /// `env` added.
    #[allow(clippy::too_many_arguments)]
    pub fn start_wrapped(
        listen_ip: Ipv4Addr,
        reply_port: u16,
        workers: usize,
        policy: &str,
        inventory: Option<&str>,
        extra: &str,
        args: &[&str],
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        let mut extra = format!("policy: policy.yaml\n{extra}");
        if let Some(inventory) = inventory {
            std::fs::write(dir.path().join("inventory.yaml"), inventory).unwrap();
            extra.push_str("labels:\n  inventory: [inventory.yaml]\n");
        }
        let listen = SocketAddr::from((APPLIANCE_IP, free_udp_port(listen_ip)));
        let admin = SocketAddr::from((APPLIANCE_IP, free_tcp_port(APPLIANCE_IP)));
        let listen_at = SocketAddr::from((listen_ip, listen.port()));
        let (dataplane_keys, extra): (Vec<&str>, Vec<&str>) =
            extra.lines().partition(|line| line.starts_with("dataplane."));
        let dataplane_keys: String = dataplane_keys
            .iter()
            .map(|line| format!("  {}\n", &line["dataplane.".len()..]))
            .collect();
        let extra: String = extra.iter().map(|line| format!("{line}\n")).collect();
        let config = format!(
            "dataplane:\n  listen: {listen_at}\n  workers: {workers}\n  reply_port: {reply_port}\n\
             {dataplane_keys}admin:\n  listen: {admin}\n{extra}"
        );
        let config_path = dir.path().join("labelwall.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("labelwall.log")).unwrap();
        let binary = env!("CARGO_BIN_EXE_labelwall");
        let mut command = match wrapper.split_first() {
            Some((program, first)) => {
                let mut command = Command::new(program);
                command.args(first).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut appliance = Appliance { child: Some(child), dir, listen, admin, reply_port };
        appliance.wait_ready(Duration::from_secs(15));
        appliance
    }

    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("labelwall exited early with {status}:\n{}", self.log());
            }
            if http_get(self.admin, "/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("labelwall not ready within {limit:?}:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("labelwall.log")).unwrap_or_default()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("labelwall.yaml")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    /// The running appliance's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`HUP`, `TERM`) to the running appliance.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill").arg(format!("-{name}")).arg(pid).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    pub fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics").expect("metrics endpoint answers");
        assert_eq!(status, 200);
        body
    }

    /// Waits up to `limit` for the appliance to exit by itself; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().expect("started").try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("still running");
        let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("labelwall did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET; `None` when the server does not answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: labelwall\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The value of one sample in Prometheus text, 0 when absent.
pub fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// A socket on GWLB_IP whose port is free on APPLIANCE_IP too: the appliance binds its
/// per-port send socket to (APPLIANCE_IP, GWLB's source port), and a port another test's
/// appliance listens on there would send that test's trains down the raw path instead.
fn sender_socket() -> UdpSocket {
    for _ in 0..64 {
        let socket = UdpSocket::bind((GWLB_IP, 0)).unwrap();
        let port = socket.local_addr().unwrap().port();
        if UdpSocket::bind((APPLIANCE_IP, port)).is_ok() {
            return socket;
        }
    }
    panic!("no source port free on both loopback addresses in 64 tries")
}

/// A GWLB node on 127.0.0.2: sends from several source ports (one per flow, as GWLB does) and
/// receives what the appliance sends back on `reply_port`.
pub struct GwlbPeer {
    pub reply: UdpSocket,
    pub senders: Vec<UdpSocket>,
}

impl GwlbPeer {
    pub fn new(source_ports: usize) -> GwlbPeer {
        let reply = UdpSocket::bind((GWLB_IP, 0)).unwrap();
        reply.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let senders = (0..source_ports).map(|_| sender_socket()).collect();
        GwlbPeer { reply, senders }
    }

    pub fn reply_port(&self) -> u16 {
        self.reply.local_addr().unwrap().port()
    }

    pub fn source_port(&self, sender: usize) -> u16 {
        self.senders[sender].local_addr().unwrap().port()
    }

    pub fn send(&self, sender: usize, to: SocketAddr, datagram: &[u8]) {
        self.senders[sender].send_to(datagram, to).unwrap();
    }

    /// Sends `datagrams` (all of one size but the last, which may be shorter) from one source
    /// port as ONE segmented send (UDP_SEGMENT): on loopback the appliance's GRO socket gets
    /// them as one train, as from a NIC that coalesced a flow's burst.
    pub fn send_train(&self, sender: usize, to: SocketAddr, datagrams: &[Vec<u8>]) {
        let socket = quinn_udp::UdpSockRef::from(&self.senders[sender]);
        let state = quinn_udp::UdpSocketState::new(socket).unwrap();
        assert!(state.max_gso_segments() >= datagrams.len(), "this kernel has UDP GSO");
        let contents = datagrams.concat();
        let transmit = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents: &contents,
            segment_size: Some(datagrams[0].len()),
            src_ip: None,
        };
        state.try_send(quinn_udp::UdpSockRef::from(&self.senders[sender]), &transmit).unwrap();
    }

    /// The next datagram sent back, or `None` after the read timeout.
    pub fn receive(&self) -> Option<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 65536];
        match self.reply.recv_from(&mut buf) {
            Ok((len, from)) => {
                buf.truncate(len);
                Some((from, buf))
            }
            Err(_) => None,
        }
    }

    /// Sends one datagram and waits for the matching reply; checks the outer addressing.
    pub fn round_trip(&self, sender: usize, to: SocketAddr, datagram: &[u8]) -> Vec<u8> {
        self.send(sender, to, datagram);
        let (from, reply) = self.receive().expect("a reply from the appliance");
        assert_eq!(from, SocketAddr::from((APPLIANCE_IP, self.source_port(sender))));
        reply
    }
}

/// GENEVE with GWLB options around an inner IP packet (protocol type from its version).
pub fn gwlb_datagram(cookie: u32, inner: &[u8]) -> Vec<u8> {
    let gwlb = GwlbOptions {
        endpoint_id: Some(0x0a1b_2c3d_4e5f_6071),
        attachment_id: Some(0x1020_3040_5060_7080),
        flow_cookie: cookie,
    };
    labelwall::wire::geneve::encapsulate(inner, &gwlb)
}

/// IPv4 TCP segment with the given flags byte and `payload_len` bytes of payload.
pub fn ipv4_tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
    ack: bool,
    payload_len: usize,
) -> Vec<u8> {
    let mut builder = etherparse::PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, 1000, 65535);
    if syn {
        builder = builder.syn();
    }
    if ack {
        builder = builder.ack(5000);
    }
    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

/// IPv4 TCP data segment with sequence number `seq` and `payload_len` bytes (distinct per seq).
pub fn ipv4_tcp_seq(dport: u16, seq: u32, payload_len: usize) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ipv4([10, 0, 1, 10], [10, 20, 0, 5], 64)
        .tcp(40000, dport, seq, 65535)
        .ack(5000);
    let payload: Vec<u8> = (0..payload_len).map(|i| (i as u32 ^ seq) as u8).collect();
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

pub fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ipv4(src, dst, 64).udp(sport, dport);
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7) as u8).collect();
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

/// IPv6 fd00::a -> fd00::b with a destination-options extension header, then TCP SYN.
pub fn ipv6_ext_tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut tcp = etherparse::TcpHeader::new(sport, dport, 77, 65535);
    tcp.syn = true;
    let tcp_bytes = tcp.to_bytes();
    let dest_opts = [6u8, 0, 1, 4, 0, 0, 0, 0]; // next: TCP, 8 bytes, PadN
    let payload_len = (dest_opts.len() + tcp_bytes.len()) as u16;
    let mut out = vec![0x60, 0, 0, 0];
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&[60, 64]); // next: destination options, hop limit
    out.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a]);
    out.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b]);
    out.extend_from_slice(&dest_opts);
    out.extend_from_slice(&tcp_bytes);
    out
}

/// The two fragments of a UDP datagram with 64 payload bytes, cut after 24 bytes of UDP.
pub fn ipv4_udp_fragments(src: [u8; 4], dst: [u8; 4]) -> (Vec<u8>, Vec<u8>) {
    let whole = ipv4_udp(src, dst, 4000, 53, 64);
    let l4 = &whole[20..];
    let fragment = |offset_units: u16, more: bool, data: &[u8]| {
        let mut header =
            etherparse::Ipv4Header::new(data.len() as u16, 64, etherparse::IpNumber::UDP, src, dst)
                .unwrap();
        header.identification = 0x4242;
        header.more_fragments = more;
        header.fragment_offset = etherparse::IpFragOffset::try_new(offset_units).unwrap();
        header.header_checksum = header.calc_header_checksum();
        [&header.to_bytes()[..], data].concat()
    };
    (fragment(0, true, &l4[..24]), fragment(3, false, &l4[24..]))
}
