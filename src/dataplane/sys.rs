//! The only place with `unsafe`: the raw-socket `sendmmsg(2)` of the send-back path, a
//! `poll(2)` wait, and the interface ioctls `labelwall gwlb-sim` needs for its TUN device.
//!
//! Why unsafe: GWLB wants replies from its own source port to `reply_port`, which a UDP socket
//! bound to 6081 cannot send, so replies go through an `IPPROTO_RAW` socket with a header we
//! write. No maintained crate batches sends on a raw socket (quinn-udp only does UDP sockets),
//! and one system call per packet would cost more than everything else on the path. Each
//! message is two iovecs (our 28-byte header, the unchanged datagram in the receive buffer),
//! so nothing is copied.

#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::wire::outer::OUTER_HEADER_LEN;

/// Messages per `sendmmsg` call.
pub const SEND_BATCH: usize = 64;

/// One packet to send: our outer header, then `len` bytes at `offset` in the payload buffer.
#[derive(Debug, Clone, Copy)]
pub struct TxItem {
    pub header: [u8; OUTER_HEADER_LEN],
    pub offset: usize,
    pub len: usize,
    pub dst: Ipv4Addr,
}

/// What one [`RawSender::send`] achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub sent: u64,
    pub sent_bytes: u64,
    pub failed: u64,
    /// The errno of the last failure, for a rate-limited log line.
    pub last_error: Option<i32>,
}

/// An `IPPROTO_RAW` socket (implies `IP_HDRINCL`): we write the whole IPv4 header.
#[derive(Debug)]
pub struct RawSender {
    socket: Socket,
}

impl RawSender {
    /// Opens the raw socket; needs CAP_NET_RAW.
    pub fn open(send_buffer: usize) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
        set_buffer_size(&socket, libc::SO_SNDBUFFORCE, send_buffer, |s, n| {
            s.set_send_buffer_size(n)
        });
        Ok(RawSender { socket })
    }

    /// Sends every item, batching system calls; a message the kernel refuses is counted as
    /// failed and skipped, the rest still go out.
    pub fn send(&mut self, items: &[TxItem], payloads: &[u8]) -> SendReport {
        let mut report = SendReport::default();
        for chunk in items.chunks(SEND_BATCH) {
            self.send_chunk(chunk, payloads, &mut report);
        }
        report
    }

    fn send_chunk(&mut self, chunk: &[TxItem], payloads: &[u8], report: &mut SendReport) {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut iovecs: [[libc::iovec; 2]; SEND_BATCH] = unsafe { zeroed() };
        let mut addrs: [libc::sockaddr_in; SEND_BATCH] = unsafe { zeroed() };
        let mut messages: [libc::mmsghdr; SEND_BATCH] = unsafe { zeroed() };
        for (i, item) in chunk.iter().enumerate() {
            let payload = &payloads[item.offset..item.offset + item.len];
            iovecs[i] = [
                libc::iovec { iov_base: item.header.as_ptr() as *mut _, iov_len: OUTER_HEADER_LEN },
                libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() },
            ];
            addrs[i].sin_family = libc::AF_INET as libc::sa_family_t;
            addrs[i].sin_addr.s_addr = u32::from_ne_bytes(item.dst.octets());
            let header = &mut messages[i].msg_hdr;
            header.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            header.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_iov = iovecs[i].as_mut_ptr();
            header.msg_iovlen = 2;
        }
        let fd = self.socket.as_raw_fd();
        let mut done = 0;
        while done < chunk.len() {
            // SAFETY: `messages[done..chunk.len()]` are initialised above and point into
            // `iovecs`, `addrs`, `chunk` and `payloads`, all of which outlive this call; the
            // kernel only reads them.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    messages.as_mut_ptr().add(done),
                    (chunk.len() - done) as libc::c_uint,
                    0,
                )
            };
            if rc < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // sendmmsg reports the error of the first message it could not send.
                report.failed += 1;
                report.last_error = error.raw_os_error();
                done += 1;
                continue;
            }
            for item in &chunk[done..done + rc as usize] {
                report.sent += 1;
                report.sent_bytes += (OUTER_HEADER_LEN + item.len) as u64;
            }
            done += rc as usize;
        }
    }
}

/// Sets a socket buffer size, forcing past the sysctl cap when we may (root or CAP_NET_ADMIN),
/// else as far as the cap allows.
pub fn set_buffer_size(
    socket: &Socket,
    force_option: libc::c_int,
    size: usize,
    fallback: impl Fn(&Socket, usize) -> io::Result<()>,
) {
    let value = size.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the right length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            force_option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = fallback(socket, size);
    }
}

/// Waits until `fd` is readable or `timeout` passes; true when readable.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pollfd, 1, millis) };
    match rc {
        rc if rc < 0 => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(error) }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Opens `/dev/net/tun` and attaches it to the TUN interface `name` (created if absent, gone
/// when the file is closed) with `IFF_TUN | IFF_NO_PI`: each read or write is one whole IP
/// packet, no header. The file is non-blocking. Used by `labelwall gwlb-sim`; needs
/// CAP_NET_ADMIN.
pub(crate) fn open_tun(name: &str) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;

    let mut request = interface_request(name)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives for the whole call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Sets the MTU of interface `name` and brings it up (what `ip link set NAME mtu M up` does).
pub(crate) fn set_link_mtu_up(name: &str, mtu: u32) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    let fd = socket.as_raw_fd();
    let mut request = interface_request(name)?;
    request.ifr_ifru.ifru_mtu =
        libc::c_int::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY (all three): each ioctl reads or writes one `ifreq` that outlives the call.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFMTU as _, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled in the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An `ifreq` naming interface `name`, everything else zero.
fn interface_request(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must have 1 to {} bytes", libc::IFNAMSIZ - 1),
        ));
    }
    // SAFETY: all-zero is a valid value for this plain C struct.
    let mut request: libc::ifreq = unsafe { zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(request)
}
