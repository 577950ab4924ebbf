//! A TUN device for `labelwall gwlb-sim`: open `/dev/net/tun`, attach it to an interface, set
//! its MTU and bring it up.
//!
//! Why by hand, with `unsafe`: three ioctls on one `ifreq` are all gwlb-sim needs, while the
//! maintained TUN crates (`tun`, `tun-rs`) bring async runtimes, platform layers and builder
//! APIs, several times this file in dependencies, for a tool that is not the product.
//!
//! Must not depend on: anything of labelwall's.

#![allow(unsafe_code)]

use std::io;
use std::mem::zeroed;
use std::os::fd::AsRawFd;

use socket2::{Domain, Socket, Type};

/// Opens `/dev/net/tun` and attaches it to the TUN interface `name` (created if absent, gone
/// when the file is closed) with `IFF_TUN | IFF_NO_PI`: each read or write is one whole IP
/// packet, no header. The file is non-blocking. Used by `labelwall gwlb-sim`; needs
/// CAP_NET_ADMIN.
pub fn open_tun(name: &str) -> io::Result<std::fs::File> {
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
pub fn set_link_mtu_up(name: &str, mtu: u32) -> io::Result<()> {
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
