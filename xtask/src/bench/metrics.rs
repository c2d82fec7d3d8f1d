//! One measurement each: iperf3 TCP and UDP, a 1-byte TCP request/response loop,
//! and the CPU time the whole machine spent meanwhile.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use overlay_tests::in_netns;

/// Busy CPU time of the whole machine, from /proc/stat (user, nice, system, irq,
/// softirq, steal), in seconds. Namespaces share the CPUs, so the packet path's
/// softirq work on every "host" shows up here; so does anything else the machine
/// runs at the time, which is why it is sampled per run and reported as a median.
pub fn busy_cpu_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    ensure!(fields.len() >= 8, "unexpected /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy as f64 / hz)
}

#[derive(Clone, Copy, Debug)]
pub struct Tcp {
    pub gbit_per_s: f64,
    /// Busy CPU seconds of the machine per gigabit received.
    pub cpu_s_per_gbit: f64,
    pub retransmits: u64,
}

/// `iperf3 -c` from `client_ns` for `secs` with `streams` parallel TCP streams.
pub fn iperf_tcp(
    client_ns: &str,
    server: Ipv4Addr,
    port: u16,
    secs: u32,
    streams: u32,
) -> Result<Tcp> {
    iperf_tcp_by(&in_namespace(client_ns), server, port, secs, streams)
}

/// How a client in the namespace `ns` runs: the machine's iperf3 inside it.
fn in_namespace(ns: &str) -> Vec<String> {
    ["ip", "netns", "exec", ns].map(str::to_owned).to_vec()
}

/// As [`iperf_tcp`], the client started by `launcher` followed by iperf3's
/// arguments (`ip netns exec NS`, or `docker exec CONTAINER` for the
/// iperf3 of a container's image).
pub fn iperf_tcp_by(
    launcher: &[String],
    server: Ipv4Addr,
    port: u16,
    secs: u32,
    streams: u32,
) -> Result<Tcp> {
    let cpu0 = busy_cpu_secs()?;
    let json = iperf_client(
        launcher,
        server,
        port,
        &["-t", &secs.to_string(), "-P", &streams.to_string()],
    )?;
    let cpu = busy_cpu_secs()? - cpu0;
    let recv = &json["end"]["sum_received"];
    let bps = recv["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no sum_received.bits_per_second")?;
    let secs = recv["seconds"].as_f64().unwrap_or(f64::from(secs));
    ensure!(bps > 0.0, "iperf3 TCP: nothing arrived");
    let gbit = bps * secs / 1e9;
    Ok(Tcp {
        gbit_per_s: bps / 1e9,
        cpu_s_per_gbit: cpu / gbit,
        retransmits: json["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

#[derive(Clone, Copy, Debug)]
pub struct Udp {
    /// Datagrams the server received, per second.
    pub delivered_pps: f64,
    pub sent_pps: f64,
    /// Busy CPU nanoseconds of the machine per delivered datagram.
    pub cpu_ns_per_packet: f64,
}

/// UDP datagrams with 64-byte payloads from c1 to c2, as fast as one sender
/// thread can push them with `sendmmsg` (batches of 64), for `secs`; the
/// receiver counts what arrives with `recvmmsg`. iperf3's UDP mode spends
/// microseconds per datagram in its own loop and measured about a tenth of this
/// rate, which hid the datapath's per-packet cost behind the generator's.
pub fn udp64(
    client_ns: &str,
    server_ns: &str,
    server: Ipv4Addr,
    port: u16,
    secs: f64,
) -> Result<Udp> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    const BATCH: usize = 64;
    const PAYLOAD: usize = 64;
    let addr = SocketAddr::from((server, port));
    let stop = Arc::new(AtomicBool::new(false));
    let (bound_tx, bound_rx) = mpsc::channel();
    let receiver = {
        let stop = stop.clone();
        in_netns(server_ns, move || -> Result<u64> {
            let sock =
                std::net::UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
            // A deep buffer, so that the receiving thread losing the CPU for a
            // moment (two cores, shared) does not count as the path dropping.
            let rcvbuf: libc::c_int = 64 << 20;
            // SAFETY: a valid socket and an int option.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&rcvbuf as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            bound_tx.send(()).ok();
            let mut bufs = vec![[0u8; 2048]; BATCH];
            let mut iov: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: zeroed mmsghdr is valid; each points at its own iovec.
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let mut got = 0u64;
            loop {
                // SAFETY: msgs and the buffers they point at outlive the call.
                let n = unsafe {
                    libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0, std::ptr::null_mut())
                };
                if n > 0 {
                    got += n as u64;
                } else if stop.load(Ordering::Relaxed) {
                    return Ok(got);
                }
            }
        })
    };
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("the UDP receiver did not start"))?;
    let cpu0 = busy_cpu_secs()?;
    let sender = in_netns(client_ns, move || -> Result<(u64, f64)> {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(addr)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        let mut payload = [0x5au8; PAYLOAD];
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: PAYLOAD,
        };
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| {
                // SAFETY: as above; all share the one payload.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let started = Instant::now();
        let end = started + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while Instant::now() < end {
            // SAFETY: msgs and the payload outlive the call.
            let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n > 0 {
                sent += n as u64;
            }
        }
        Ok((sent, started.elapsed().as_secs_f64()))
    });
    let sent = sender.join().map_err(|_| anyhow!("UDP sender panicked"));
    // What is still in flight arrives within a few milliseconds.
    std::thread::sleep(Duration::from_millis(100));
    let cpu = busy_cpu_secs()? - cpu0;
    stop.store(true, Ordering::Relaxed);
    let delivered = receiver
        .join()
        .map_err(|_| anyhow!("UDP receiver panicked"))?
        .context("UDP receiver")?;
    let (sent, elapsed) = sent?.context("UDP sender")?;
    ensure!(delivered > 0, "no datagram arrived ({sent} sent)");
    Ok(Udp {
        delivered_pps: delivered as f64 / elapsed,
        sent_pps: sent as f64 / elapsed,
        cpu_ns_per_packet: cpu * 1e9 / delivered as f64,
    })
}

fn iperf_client(
    launcher: &[String],
    server: Ipv4Addr,
    port: u16,
    args: &[&str],
) -> Result<serde_json::Value> {
    let (program, launcher_args) = launcher.split_first().context("no launcher")?;
    // The server may still be finishing the previous test: retried briefly.
    let mut last = String::new();
    for _ in 0..5 {
        let out = Command::new(program)
            .args(launcher_args)
            .args(["iperf3", "-J", "-c"])
            .arg(server.to_string())
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .context("running iperf3")?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "iperf3 printed no JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        match json["error"].as_str() {
            None if out.status.success() => return Ok(json),
            error => last = error.unwrap_or("failed").to_owned(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!("iperf3 {args:?} to {server}: {last}")
}

#[derive(Clone, Debug)]
pub struct Rr {
    pub transactions_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// TCP request/response with 1-byte messages on one connection (netperf's
/// TCP_RR): the client writes a byte and waits for the server's byte, for
/// `secs`. sockperf cannot send messages under 14 bytes, hence this. Both ends
/// are threads of this process, each in its namespace, with TCP_NODELAY.
pub fn tcp_rr(
    client_ns: &str,
    server_ns: &str,
    server: Ipv4Addr,
    port: u16,
    secs: f64,
) -> Result<Rr> {
    let addr = SocketAddr::from((server, port));
    let (bound_tx, bound_rx) = mpsc::channel();
    let server_thread = in_netns(server_ns, move || -> Result<u64> {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        bound_tx.send(()).ok();
        let (mut conn, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut b = [0u8; 1];
        let mut n = 0u64;
        loop {
            match conn.read(&mut b)? {
                0 => return Ok(n),
                _ => conn.write_all(&b)?,
            }
            n += 1;
        }
    });
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("the RR server did not start"))?;
    let client = in_netns(client_ns, move || -> Result<(Vec<u32>, f64)> {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut lat_ns = Vec::with_capacity(1 << 20);
        let mut b = [0u8; 1];
        // A short warm-up: the first round trips resolve and fill caches.
        for _ in 0..100 {
            conn.write_all(&b)?;
            conn.read_exact(&mut b)?;
        }
        let started = Instant::now();
        let end = started + Duration::from_secs_f64(secs);
        loop {
            let t = Instant::now();
            if t >= end {
                break;
            }
            conn.write_all(&b)?;
            conn.read_exact(&mut b)?;
            lat_ns.push(t.elapsed().as_nanos() as u32);
        }
        Ok((lat_ns, started.elapsed().as_secs_f64()))
    });
    let (mut lat, elapsed) = client
        .join()
        .map_err(|_| anyhow!("RR client panicked"))?
        .context("RR client")?;
    server_thread
        .join()
        .map_err(|_| anyhow!("RR server panicked"))?
        .context("RR server")?;
    ensure!(!lat.is_empty(), "no transaction completed");
    lat.sort_unstable();
    let pct = |p: f64| f64::from(lat[((lat.len() - 1) as f64 * p) as usize]) / 1000.0;
    Ok(Rr {
        transactions_per_s: lat.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}
