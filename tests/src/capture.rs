//! Frame capture on one interface, in-process, sending crafted frames out of
//! one, and predicates on the frames.

use std::{
    collections::BTreeSet,
    ffi::{CStr, CString},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, ensure};

use crate::{
    netns::{in_netns, join},
    scale::scaled,
};

/// Every frame seen on an interface, both directions, read by an AF_PACKET socket
/// opened inside the interface's namespace. Stops on drop if not stopped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<Result<Vec<Vec<u8>>>>>,
}

impl Capture {
    /// Returns once the socket is bound: from then on nothing is missed.
    pub fn start(ns: &str, ifname: &str) -> Result<Capture> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let c_name = CString::new(ifname)?;
        let flag = stop.clone();
        let worker = in_netns(ns, move || {
            let socket = bind_packet_socket(&c_name)?;
            ready_tx.send(()).ok();
            Ok(capture_loop(&socket, &flag))
        });
        match ready_rx.recv_timeout(scaled(Duration::from_secs(5))) {
            Ok(()) => Ok(Capture {
                stop,
                worker: Some(worker),
            }),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                Err(join(worker)
                    .err()
                    .unwrap_or_else(|| anyhow!("the capture did not start")))
            }
        }
        .with_context(|| format!("capturing on {ifname} in {ns}"))
    }

    /// Stops capturing; the frames, in the order they were seen.
    pub fn stop(mut self) -> Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.worker.take().expect("running until stopped"))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Sends each of `frames` as it is, out of `ifname` in namespace `ns`: a
/// container's frame as the container's own stack would not write it.
pub fn inject(ns: &str, ifname: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    let c_name = CString::new(ifname)?;
    join(in_netns(ns, move || {
        let socket = bind_packet_socket(&c_name)?;
        for frame in &frames {
            // SAFETY: the frame is valid for its length; the socket is bound.
            let sent =
                unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            ensure!(
                usize::try_from(sent).ok() == Some(frame.len()),
                "sending a frame: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }))
    .with_context(|| format!("sending frames out of {ifname} in {ns}"))
}

/// An AF_PACKET socket that sees only `ifname`: opened with protocol 0, which
/// receives nothing, and switched to ETH_P_ALL by `bind`, so no frame of another
/// interface slips in between.
fn bind_packet_socket(ifname: &CStr) -> Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before it is owned.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    ensure!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a valid NUL-terminated name; looked up in this thread's namespace.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    ensure!(ifindex != 0, "no interface {ifname:?}");
    // SAFETY: sockaddr_ll is plain data, for which zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = i32::try_from(ifindex)?;
    // The timeout lets the loop notice the stop flag.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: a valid fd, and arguments of the sizes given.
    unsafe {
        ensure!(
            libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32
            ) == 0,
            "binding the capture socket: {}",
            std::io::Error::last_os_error()
        );
        ensure!(
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as u32,
            ) == 0,
            "SO_RCVTIMEO: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(socket)
}

fn capture_loop(socket: &OwnedFd, stop: &AtomicBool) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut recv = |flags| {
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        (n > 0).then(|| buf[..n as usize].to_vec())
    };
    while !stop.load(Ordering::Relaxed) {
        frames.extend(recv(0));
    }
    // What was queued by the time the stop flag was set.
    while let Some(frame) = recv(libc::MSG_DONTWAIT) {
        frames.push(frame);
    }
    frames
}

/// An ARP frame (untagged).
pub fn is_arp(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == [0x08, 0x06]
}

/// The sources of the IPv4 frames to `dst`: who a host saw, after any NAT.
pub fn ipv4_sources_to(frames: &[Vec<u8>], dst: Ipv4Addr) -> BTreeSet<Ipv4Addr> {
    frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00])
        .filter(|f| f[30..34] == dst.octets())
        .map(|f| Ipv4Addr::new(f[26], f[27], f[28], f[29]))
        .collect()
}

/// An IPv4 frame's UDP datagram: source, destination and payload. `None` for
/// anything else, and for a fragment (only a whole datagram has its header).
pub fn ipv4_udp(frame: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, &[u8])> {
    if frame.len() < 34
        || frame[12..14] != [0x08, 0x00]
        || frame[23] != 17
        || is_ipv4_fragment(frame)
    {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = frame.get(14 + ihl..)?;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let udp = udp.get(..total.checked_sub(ihl)?)?;
    let port = |at: usize| u16::from_be_bytes([udp[at], udp[at + 1]]);
    let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    (udp.len() >= 8).then(|| {
        (
            SocketAddrV4::new(ip(26), port(0)),
            SocketAddrV4::new(ip(30), port(2)),
            &udp[8..],
        )
    })
}

/// An IPv4 frame that is a fragment of a larger datagram: more fragments
/// follow, or it is not the first.
pub fn is_ipv4_fragment(frame: &[u8]) -> bool {
    frame.len() >= 34 && frame[12..14] == [0x08, 0x00] && {
        let flags_offset = u16::from_be_bytes([frame[20], frame[21]]);
        flags_offset & 0x3fff != 0
    }
}

/// IPv4 without options, carrying UDP to destination `port`.
pub fn is_vxlan(frame: &[u8], port: u16) -> bool {
    frame.len() >= 50
        && frame[12..14] == [0x08, 0x00]
        && frame[14] == 0x45
        && frame[23] == 17
        && frame[36..38] == port.to_be_bytes()
}

/// The inner Ethernet frame of a VXLAN frame on the default port 4789: what
/// follows the outer Ethernet, IPv4 (no options), UDP and VXLAN headers.
pub fn vxlan_inner(frame: &[u8]) -> Option<&[u8]> {
    is_vxlan(frame, crate::VXLAN_PORT).then(|| &frame[50..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_datagrams_and_fragments_are_told_apart() {
        let mut f = vec![0u8; 14 + 20 + 8 + 3];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&31u16.to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&7946u16.to_be_bytes());
        f[36..38].copy_from_slice(&7947u16.to_be_bytes());
        f[42..45].copy_from_slice(b"abc");
        let (src, dst, payload) = ipv4_udp(&f).unwrap();
        assert_eq!(src, "10.0.0.1:7946".parse().unwrap());
        assert_eq!(dst, "10.0.0.2:7947".parse().unwrap());
        assert_eq!(payload, b"abc");
        assert!(!is_ipv4_fragment(&f));
        // More fragments follow: the first fragment.
        f[20] = 0x20;
        assert!(is_ipv4_fragment(&f) && ipv4_udp(&f).is_none());
        // A later fragment: an offset, no more to come.
        f[20..22].copy_from_slice(&[0x00, 0xb9]);
        assert!(is_ipv4_fragment(&f));
        // Don't Fragment alone is no fragment.
        f[20..22].copy_from_slice(&[0x40, 0x00]);
        assert!(!is_ipv4_fragment(&f));
    }

    #[test]
    fn vxlan_frames_are_recognised() {
        let mut f = vec![0u8; 64];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[36..38].copy_from_slice(&4789u16.to_be_bytes());
        f[62..64].copy_from_slice(&[0x08, 0x06]);
        assert!(is_vxlan(&f, 4789));
        assert!(!is_vxlan(&f, 4790));
        assert!(is_arp(vxlan_inner(&f).unwrap()));
        assert!(!is_arp(&f));
    }
}
