//! The offload settings the agent reads and changes, through the ethtool
//! ioctl as `ethtool -k`/`-K` do it without netlink (the ethtool crates read
//! features but do not set them).
//!
//! - GRO on a container's end of its veth. XDP decap redirects frames into
//!   the host end, whose peer receives them through the veth's NAPI, and that
//!   NAPI's GRO is off unless the feature is on (Linux 5.13+ leaves it off by
//!   default). On, it merges a flow's segments before the container's stack
//!   sees them, as the kernel's VXLAN device merges what it decapsulates in
//!   its GRO cells. TC decap hands its frames to the container with
//!   `bpf_redirect_peer`, past the veth's NAPI: there it changes nothing.
//! - The underlay's GRO, read: TC decap relies on it, through tunnel GRO (see
//!   `tunnel_gro`), to merge the segments a wire carries one by one. Sending
//!   TC decap's single segments through the container's veth instead, to be
//!   merged there, was measured and not kept (README, *Where the time goes*).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, ensure};

/// `ETHTOOL_SGRO` from `linux/ethtool.h`: set the GRO flag.
const ETHTOOL_SGRO: u32 = 0x0000_002c;
/// `ETHTOOL_GGRO`: get the GRO flag.
const ETHTOOL_GGRO: u32 = 0x0000_002b;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns GRO on for `ifname` in the calling thread's network namespace.
pub fn enable_gro(ifname: &str) -> Result<()> {
    ioctl(ifname, ETHTOOL_SGRO, 1)
        .map(drop)
        .with_context(|| format!("turning GRO on for {ifname}"))
}

/// Whether `ifname` merges what it receives (GRO on), in the calling thread's
/// network namespace.
pub fn gro_enabled(ifname: &str) -> Result<bool> {
    let value = ioctl(ifname, ETHTOOL_GGRO, 0)
        .with_context(|| format!("reading the GRO setting of {ifname}"))?;
    Ok(value != 0)
}

/// One `SIOCETHTOOL` request carrying a `struct ethtool_value`; returns the
/// value the kernel leaves in it.
fn ioctl(ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    ensure!(
        ifname.len() < libc::IFNAMSIZ,
        "interface name {ifname:?} is longer than {} bytes",
        libc::IFNAMSIZ - 1
    );
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a socket for the ethtool ioctl");
    }
    // SAFETY: fd is a socket we just opened and own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name and the ethtool_value
    // the request points to, both alive for the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("SIOCETHTOOL");
    }
    Ok(value.data)
}
