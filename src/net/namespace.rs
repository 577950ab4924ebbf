//! A user namespace and a network namespace of the process's own, for tools that need
//! CAP_NET_RAW on loopback only (`labelwall demo` run by a user): the caller is root inside
//! (mapped to itself outside), with a network namespace holding only a loopback, brought up.
//! Nothing outside the process changes, and both namespaces go when it exits.
//! `unsafe`: unshare and the interface-flags ioctl, which libc only offers raw.

#![allow(unsafe_code)]

use std::io;

use anyhow::{Context, bail};
use socket2::{Domain, Protocol, Socket, Type};

/// Whether the process may open the raw socket the data plane sends with.
fn may_open_raw_sockets() -> bool {
    Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).is_ok()
}

/// Gives the process raw sockets: `Ok(false)` when it may open them already, `Ok(true)` when
/// it entered namespaces of its own for them. Must run before the process starts a thread (a
/// process with threads cannot enter a user namespace).
pub fn raw_sockets_or_private_namespaces() -> anyhow::Result<bool> {
    if may_open_raw_sockets() {
        return Ok(false);
    }
    // SAFETY: plain system calls with no pointers.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: unshare takes flags only; it fails (EINVAL) rather than misbehaves when the
    // process has threads.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        let error = io::Error::last_os_error();
        bail!(
            "this needs CAP_NET_RAW (the appliance sends through raw sockets), and it \
             cannot enter a user namespace of its own to get it there: {error}. Run it with \
             sudo, or allow unprivileged user namespaces (sysctl user.max_user_namespaces, \
             kernel.apparmor_restrict_unprivileged_userns on Ubuntu)"
        );
    }
    // Root inside maps to the caller outside, so that files written stay the caller's.
    // `setgroups` must be denied before an unprivileged process may write a gid map.
    let write = |path: &str, text: String| {
        std::fs::write(path, &text).with_context(|| format!("cannot write {text:?} to {path}"))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    loopback_up().context("cannot bring up the private network namespace's loopback")?;
    if !may_open_raw_sockets() {
        bail!("entered a user namespace of its own, but raw sockets are still refused there");
    }
    Ok(true)
}

/// Sets `lo` up (a new network namespace starts with it down).
fn loopback_up() -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: an all-zero ifreq is valid; the name fits with its terminating zero.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed, which outlives them.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) != 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
