//! The test bed: network namespaces as hosts, the seed article's topology, agent
//! processes, in-process traffic and capture. Everything it creates is removed by
//! a guard's `Drop`, so a failing test cleans up too.
//!
//! This library does not depend on the overlay crates, so `cargo xtask demo` can
//! use it before the eBPF toolchain is installed.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

// ------------------------------------------------------------------ commands

/// Runs a shell command; its stdout, or an error carrying its stderr.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .with_context(|| format!("running `{cmd}`"))?;
    ensure!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A short prefix unique to this process and call, for namespace and interface
/// names (which must stay within 15 characters).
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}{}{}",
        std::process::id() % 1000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// The agent binary `cargo xtask build` produces.
pub fn overlay_binary() -> Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/overlay");
    ensure!(
        path.exists(),
        "{} is missing: run `cargo xtask build` (or `cargo xtask test`)",
        path.display()
    );
    Ok(path)
}

/// Runs `f` on a fresh thread inside the network namespace `ns`; only that thread
/// switches, and sockets it opens stay in `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        let target = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: plain syscall on a valid fd; it affects this thread only.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        f()
    })
}

fn join<T>(handle: JoinHandle<Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("worker thread panicked"))?
}

// ------------------------------------------------------------ guards: files

/// A scratch directory under /tmp, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("overlay-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn write_config(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

// ------------------------------------------------------- guards: namespaces

/// A named network namespace (`ip netns add`), deleted on drop with everything in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        sh(&format!("ip netns add {name}"))?;
        let ns = Netns {
            name: name.to_owned(),
        };
        sh(&format!("ip -n {name} link set lo up"))?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TopologyOptions {
    /// Make the underlay veths compute checksums on transmit, as a physical NIC
    /// does, instead of passing CHECKSUM_PARTIAL along (which costs their TSO).
    pub wire_checksums: bool,
    pub underlay_mtu: u32,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            wire_checksums: false,
            underlay_mtu: 1500,
        }
    }
}

/// The seed article's topology: node1 on 172.31.1.0/24 and node2 on
/// 192.168.1.0/24, joined by a router. `<p>n1`, `<p>n2` and `<p>rt` are the
/// namespaces; each node's underlay is `eth0`, with a default route via the router.
pub struct SeedTopology {
    pub prefix: String,
    // Containers first: dropped (deleted) before the hosts.
    containers: Vec<Netns>,
    _hosts: Vec<Netns>,
}

pub const NODE1_UNDERLAY: &str = "172.31.1.5";
pub const NODE2_UNDERLAY: &str = "192.168.1.5";

impl SeedTopology {
    pub fn create(prefix: &str, opts: TopologyOptions) -> Result<SeedTopology> {
        let mut hosts = Vec::new();
        for name in ["rt", "n1", "n2"] {
            hosts.push(Netns::create(&format!("{prefix}{name}"))?);
        }
        let topology = SeedTopology {
            prefix: prefix.to_owned(),
            containers: Vec::new(),
            _hosts: hosts,
        };
        let (rt, n1, n2) = (
            format!("{prefix}rt"),
            format!("{prefix}n1"),
            format!("{prefix}n2"),
        );
        let mtu = opts.underlay_mtu;
        for (node, router_if, node_ip, router_ip) in [
            (&n1, "r1", NODE1_UNDERLAY, "172.31.1.1"),
            (&n2, "r2", NODE2_UNDERLAY, "192.168.1.1"),
        ] {
            sh(&format!(
                "ip -n {node} link add eth0 mtu {mtu} type veth peer name {router_if} mtu {mtu} netns {rt}"
            ))?;
            sh(&format!(
                "ip -n {rt} addr add {router_ip}/24 dev {router_if}"
            ))?;
            sh(&format!("ip -n {rt} link set {router_if} up"))?;
            sh(&format!("ip -n {node} addr add {node_ip}/24 dev eth0"))?;
            sh(&format!("ip -n {node} link set eth0 up"))?;
            sh(&format!("ip -n {node} route add default via {router_ip}"))?;
            // Hosts of an overlay forward (Docker turns it on); bpf_fib_lookup needs it.
            sh(&format!(
                "ip netns exec {node} sysctl -qw net.ipv4.conf.all.forwarding=1"
            ))?;
            if opts.wire_checksums {
                sh(&format!("ip netns exec {node} ethtool -K eth0 tx off"))?;
                sh(&format!("ip netns exec {rt} ethtool -K {router_if} tx off"))?;
            }
        }
        sh(&format!(
            "ip netns exec {rt} sysctl -qw net.ipv4.ip_forward=1"
        ))?;
        Ok(topology)
    }

    /// Deletes a container's namespace now, as when a container goes away.
    pub fn remove_container(&mut self, name: &str) -> Result<()> {
        let full = format!("{}{name}", self.prefix);
        let at = self
            .containers
            .iter()
            .position(|ns| ns.name == full)
            .with_context(|| format!("no container {name}"))?;
        self.containers.remove(at);
        Ok(())
    }

    /// An empty namespace `<prefix><name>` for a container; the agent plumbs it.
    pub fn container(&mut self, name: &str) -> Result<String> {
        let ns = Netns::create(&format!("{}{name}", self.prefix))?;
        let name = ns.name.clone();
        self.containers.push(ns);
        Ok(name)
    }
}

// ------------------------------------------------------------- guard: agent

/// A running `overlay agent`, entered into a node's namespace with nsenter (not
/// `ip netns exec`, which remounts /sys and would hide the bpffs). Stopped, and
/// its pins removed, on drop.
pub struct Agent {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    pin_dir: PathBuf,
}

const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Agent {
    fn spawn(
        node_ns: &str,
        binary: &Path,
        config: &Path,
        pin_dir: &Path,
        extra: &[&str],
    ) -> Result<Child> {
        Command::new("nsenter")
            .arg(format!("--net={}", netns_path(node_ns).display()))
            .arg(binary)
            .arg("agent")
            .arg("--config")
            .arg(config)
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning the agent")
    }

    /// Starts an agent and waits for its `ready` line.
    pub fn start(
        node_ns: &str,
        binary: &Path,
        config: &Path,
        pin_dir: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        let mut child = Agent::spawn(node_ns, binary, config, pin_dir, extra)?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err_pipe = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().expect("stderr buffer");
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let out_pipe = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                if line == "ready" {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut agent = Agent {
            child: Some(child),
            stderr,
            pin_dir: pin_dir.to_owned(),
        };
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                return Ok(agent);
            }
            if let Some(status) = agent.child.as_mut().expect("running").try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "the agent exited ({status}) before it was ready:\n{}",
                    agent.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready within {AGENT_READY_TIMEOUT:?}:\n{}",
                    agent.stderr()
                );
            }
        }
    }

    /// Runs an agent that is expected to stop by itself (e.g. on a bad config);
    /// returns its exit status and stderr. Killed if it runs for 30 s.
    pub fn run_to_completion(
        node_ns: &str,
        binary: &Path,
        config: &Path,
        pin_dir: &Path,
        extra: &[&str],
    ) -> Result<(ExitStatus, String)> {
        let mut child = Agent::spawn(node_ns, binary, config, pin_dir, extra)?;
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(pin_dir);
                bail!("the agent did not stop by itself within {AGENT_READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits for the agent to finish its teardown.
    pub fn stop(self) -> Result<ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal`; waits up to 10 s, then kills the agent and reports that.
    pub fn stop_with(mut self, signal: i32) -> Result<ExitStatus> {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + AGENT_STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the agent ignored signal {signal} for {AGENT_STOP_TIMEOUT:?}:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain syscall on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + AGENT_STOP_TIMEOUT;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed agent cannot unpin; do it for it.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir("/sys/fs/bpf/overlay");
    }
}

// ---------------------------------------------------------------- traffic

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingStats {
    pub transmitted: u64,
    pub received: u64,
}

/// `ping -c count` from inside `ns`; lost replies are a result, not an error.
pub fn ping(ns: &str, dst: &str, count: u32, extra: &[&str]) -> Result<PingStats> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
        ])
        .args(extra)
        .arg(dst)
        .output()
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| {
            anyhow!(
                "ping {dst} from {ns} printed no summary: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let number_before = |word: &str| -> Result<u64> {
        let head = &summary[..summary
            .find(word)
            .ok_or_else(|| anyhow!("no {word:?} in {summary:?}"))?];
        Ok(head
            .trim_end()
            .rsplit([' ', ','])
            .next()
            .unwrap_or_default()
            .parse()?)
    };
    Ok(PingStats {
        transmitted: number_before("packets transmitted")?,
        received: number_before("received")?,
    })
}

#[derive(Clone, Copy, Debug)]
pub struct TransferReport {
    /// Bytes the server received, every one of them checked.
    pub bytes: u64,
    pub secs: f64,
    pub gbit_per_s: f64,
}

/// A deterministic byte stream both ends can generate, however they chunk it:
/// byte `i` is a byte of a 64-bit mix (splitmix64) of `seed + i / 8`.
struct Pattern {
    seed: u64,
    offset: u64,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern { seed, offset: 0 }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for byte in buf {
            let mut z = self
                .seed
                .wrapping_add(self.offset / 8)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            *byte = z.to_le_bytes()[(self.offset % 8) as usize];
            self.offset += 1;
        }
    }
}

const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `bytes` of a known pattern over TCP from `client_ns` to a server in
/// `server_ns` listening on `server_ip`, and checks every byte on arrival.
pub fn tcp_transfer(
    server_ns: &str,
    server_ip: &str,
    client_ns: &str,
    bytes: u64,
) -> Result<TransferReport> {
    static NEXT_PORT: AtomicU32 = AtomicU32::new(0);
    let port = 20_000 + (std::process::id() % 20_000) + NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    let addr: SocketAddr = format!("{server_ip}:{port}").parse()?;
    let seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(port);

    let (bound_tx, bound_rx) = mpsc::channel();
    let server = in_netns(server_ns, move || {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        listener.set_nonblocking(true)?;
        bound_tx.send(()).ok();
        let deadline = Instant::now() + TRANSFER_TIMEOUT;
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(anyhow!(e).context("no client connected")),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut expected = Pattern::new(seed);
        let (mut got, mut want) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        let mut total = 0u64;
        loop {
            let n = conn.read(&mut got).context("receiving")?;
            if n == 0 {
                return Ok(total);
            }
            expected.fill(&mut want[..n]);
            if got[..n] != want[..n] {
                let at = got[..n]
                    .iter()
                    .zip(&want[..n])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                bail!("byte {} differs from what was sent", total + at as u64);
            }
            total += n as u64;
        }
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("the server did not start"))?;

    let started = Instant::now();
    let client = in_netns(client_ns, move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connecting to {addr}"))?;
        conn.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            pattern.fill(&mut buf[..n]);
            conn.write_all(&buf[..n]).context("sending")?;
            left -= n as u64;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    });
    let sent = join(client);
    // The receiving side knows best why a transfer failed (a reset follows it).
    let received = join(server).context("receiving side")?;
    sent.context("sending side")?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        received == bytes,
        "sent {bytes} bytes, the server received {received}"
    );
    Ok(TransferReport {
        bytes: received,
        secs,
        gbit_per_s: received as f64 * 8.0 / secs / 1e9,
    })
}

// ---------------------------------------------------------------- capture

/// Every frame seen on an interface (both directions), read by an AF_PACKET
/// socket opened inside the interface's namespace.
pub struct Capture {
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<Result<Vec<Vec<u8>>>>>,
}

impl Capture {
    pub fn start(ns: &str, ifname: &str) -> Result<Capture> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let ifname = std::ffi::CString::new(ifname)?;
        let flag = stop.clone();
        let worker = in_netns(ns, move || {
            let eth_p_all = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket calls; the fd is closed below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(eth_p_all)) };
            ensure!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let result = capture_loop(fd, &ifname, eth_p_all, &flag, &ready_tx);
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            result
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(()) => Ok(Capture {
                stop,
                worker: Some(worker),
            }),
            Err(_) => Err(join(worker)
                .err()
                .unwrap_or_else(|| anyhow!("capture did not start"))),
        }
    }

    /// Stops capturing and returns the frames, in order.
    pub fn stop(mut self) -> Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.worker.take().expect("running"))
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

fn capture_loop(
    fd: i32,
    ifname: &std::ffi::CStr,
    protocol: u16,
    stop: &AtomicBool,
    ready: &mpsc::Sender<()>,
) -> Result<Vec<Vec<u8>>> {
    // SAFETY: a valid NUL-terminated name; the lookup is in this thread's namespace.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    ensure!(ifindex != 0, "no interface {ifname:?}");
    // SAFETY: sockaddr_ll is plain data; zero is a valid starting point.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex as i32;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: valid fd and correctly sized arguments.
    unsafe {
        ensure!(
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32
            ) == 0,
            "binding the capture socket: {}",
            std::io::Error::last_os_error()
        );
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
    ready.send(()).ok();
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            frames.push(buf[..n as usize].to_vec());
        }
    }
    // What arrived while the stop flag was being set.
    loop {
        // SAFETY: as above.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            break;
        }
        frames.push(buf[..n as usize].to_vec());
    }
    Ok(frames)
}

pub fn is_arp(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == [0x08, 0x06]
}

/// IPv4 (without options) carrying UDP to `port`.
pub fn is_vxlan(frame: &[u8], port: u16) -> bool {
    frame.len() >= 50
        && frame[12..14] == [0x08, 0x00]
        && frame[14] == 0x45
        && frame[23] == 17
        && frame[36..38] == port.to_be_bytes()
}

/// The inner Ethernet frame of a VXLAN frame on the default port.
pub fn vxlan_inner(frame: &[u8]) -> Option<&[u8]> {
    is_vxlan(frame, 4789).then(|| &frame[50..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_does_not_depend_on_chunking() {
        let (mut a, mut b) = (Pattern::new(7), Pattern::new(7));
        let (mut x, mut y) = ([0u8; 100], [0u8; 100]);
        a.fill(&mut x);
        for chunk in y.chunks_mut(7) {
            b.fill(chunk);
        }
        assert_eq!(x, y);
        assert!(x.iter().any(|v| *v != x[0]));
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
    }
}
