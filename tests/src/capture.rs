//! Frame capture on one interface, in-process, sending crafted frames out of
//! one, and predicates on the frames.

use std::{
    ffi::{CStr, CString},
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
