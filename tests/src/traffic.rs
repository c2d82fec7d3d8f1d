//! Traffic between namespaces: ping, a verified TCP byte stream, link counters.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use crate::{
    cmd::ip,
    netns::{in_netns, join},
    scale::scaled,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingStats {
    pub transmitted: u64,
    pub received: u64,
}

/// `ping -c count -i 0.2 -W 1 EXTRA… dst` from inside `ns` (-W scaled). Lost replies are a
/// result, not an error; a ping that prints no summary is an error.
pub fn ping(ns: &str, dst: &str, count: u32, extra: &[&str]) -> Result<PingStats> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-c", &count.to_string()])
        .args(["-i", "0.2", "-W"])
        .arg(scaled(Duration::from_secs(1)).as_secs().max(1).to_string())
        .args(extra)
        .arg(dst)
        .output()
        .context("running ping")?;
    parse_ping_summary(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
        format!(
            "ping {dst} from {ns} printed no summary: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// "5 packets transmitted, 4 received, +1 errors, 20% packet loss, time 813ms"
fn parse_ping_summary(text: &str) -> Option<PingStats> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let count = |suffix: &str| {
        line.split(", ")
            .find_map(|part| part.trim().strip_suffix(suffix)?.parse().ok())
    };
    Some(PingStats {
        transmitted: count(" packets transmitted")?,
        received: count(" received")?,
    })
}

/// Packets received and transmitted by `ifname` in `ns`, as `ip -s link` counts them.
pub fn link_stats(ns: &str, ifname: &str) -> Result<(u64, u64)> {
    link_counters(ns, ifname, "packets")
}

/// A link's received and sent bytes, as `ip -s link` counts them.
pub fn link_bytes(ns: &str, ifname: &str) -> Result<(u64, u64)> {
    link_counters(ns, ifname, "bytes")
}

fn link_counters(ns: &str, ifname: &str, what: &str) -> Result<(u64, u64)> {
    let json = ip(&format!("-n {ns} -s -j link show dev {ifname}"))?;
    let links: serde_json::Value = serde_json::from_str(&json).context("parsing ip -j")?;
    let stats = &links[0]["stats64"];
    let count = |dir: &str| {
        stats[dir][what]
            .as_u64()
            .with_context(|| format!("no {dir} {what} for {ifname} in {ns}: {json}"))
    };
    Ok((count("rx")?, count("tx")?))
}

/// What the IPv4 layer of a namespace has received so far (`IpInReceives` and
/// `IpExtInOctets`): one packet per skb, so a receiver whose GRO merges frames
/// counts fewer, larger packets than the wire carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpReceived {
    pub packets: u64,
    pub octets: u64,
}

impl IpReceived {
    /// Average packet size from `earlier` to `self`, in bytes.
    pub fn bytes_per_packet_since(&self, earlier: &IpReceived) -> f64 {
        (self.octets - earlier.octets) as f64 / (self.packets - earlier.packets).max(1) as f64
    }
}

/// The IPv4 receive counters of namespace `ns`.
pub fn ip_received(ns: &str) -> Result<IpReceived> {
    join(in_netns(ns, || {
        // thread-self: the counters of this thread's namespace, not the process's.
        let field = |file: &str, section: &str, name: &str| -> Result<u64> {
            let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))?;
            let mut lines = text.lines().filter(|l| l.starts_with(section));
            let (names, values) = (lines.next(), lines.next());
            let (Some(names), Some(values)) = (names, values) else {
                bail!("no {section} lines in /proc/net/{file}");
            };
            let at = names
                .split_whitespace()
                .position(|n| n == name)
                .with_context(|| format!("no {section} {name} in /proc/net/{file}"))?;
            values
                .split_whitespace()
                .nth(at)
                .context("short values line")?
                .parse()
                .with_context(|| format!("{section} {name}"))
        };
        Ok(IpReceived {
            packets: field("snmp", "Ip:", "InReceives")?,
            octets: field("netstat", "IpExt:", "InOctets")?,
        })
    }))
}

#[derive(Clone, Copy, Debug)]
pub struct TransferReport {
    /// Bytes the server received, every one of them checked.
    pub bytes: u64,
    /// From the first connection attempt to the last byte checked.
    pub secs: f64,
    pub gbit_per_s: f64,
}

/// A deterministic byte stream both ends can generate, however they chunk it:
/// byte `i` is `table[i % PERIOD]`, the table being splitmix64 output for the
/// seed. Both ends work with memcpy and memcmp on the table, so the check keeps
/// up with the network even in an unoptimised build (xtask's). The period is
/// prime: a lost, repeated or reordered segment shows unless its length is a
/// multiple of it, about a megabyte.
struct Pattern {
    table: Vec<u8>,
    offset: usize,
}

const PERIOD: usize = 1_048_583;

impl Pattern {
    fn new(seed: u64) -> Pattern {
        let mut table = Vec::with_capacity(PERIOD + 8);
        for i in 0..PERIOD.div_ceil(8) as u64 {
            let mut z = seed.wrapping_add(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            table.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        table.truncate(PERIOD);
        Pattern { table, offset: 0 }
    }

    /// The stream's next `len` bytes (at most a period) as two slices of the
    /// table, the second empty unless they wrap around.
    fn next(&mut self, len: usize) -> (&[u8], &[u8]) {
        assert!(len <= PERIOD, "{len} bytes at once");
        let at = self.offset;
        self.offset = (at + len) % PERIOD;
        if at + len <= PERIOD {
            (&self.table[at..at + len], &[])
        } else {
            (&self.table[at..], &self.table[..at + len - PERIOD])
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let (head, tail) = self.next(buf.len());
        buf[..head.len()].copy_from_slice(head);
        buf[head.len()..].copy_from_slice(tail);
    }

    /// Where `got` first differs from the stream's next bytes, if it does.
    fn first_mismatch(&mut self, got: &[u8]) -> Option<usize> {
        let (head, tail) = self.next(got.len());
        if got[..head.len()] == *head && got[head.len()..] == *tail {
            return None;
        }
        got.iter()
            .zip(head.iter().chain(tail))
            .position(|(a, b)| a != b)
    }
}

/// The whole transfer, connection included, must fit in this.
fn transfer_timeout() -> Duration {
    scaled(Duration::from_secs(60))
}
/// No progress for this long in a namespace testbed means traffic is black-holed.
fn stall_timeout() -> Duration {
    scaled(Duration::from_secs(10))
}
fn connect_timeout() -> Duration {
    scaled(Duration::from_secs(10))
}
/// Per read or write; larger buffers measured no faster.
const BUF: usize = 1 << 16;

/// Sends `bytes` of a known pattern over TCP from `client_ns` to a server that
/// listens on `server_ip` in `server_ns`, and checks every byte on arrival. Both
/// ends are threads of this process; an error if any byte differs or is missing.
pub fn tcp_transfer(
    server_ns: &str,
    server_ip: &str,
    client_ns: &str,
    bytes: u64,
) -> Result<TransferReport> {
    // Distinct per call, so a server still in TIME_WAIT never collides.
    static NEXT_PORT: AtomicU32 = AtomicU32::new(0);
    let port =
        20_000 + std::process::id() % 20_000 + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 5_000;
    let port = u16::try_from(port).expect("below 45000");
    let addr: SocketAddr = format!("{server_ip}:{port}")
        .parse()
        .with_context(|| format!("server address {server_ip}"))?;
    tcp_transfer_via(server_ns, addr, client_ns, addr, bytes)
}

/// [`tcp_transfer`] to a server listening on `listen` that the client reaches
/// at `connect` (a published port, DNATed to it).
pub fn tcp_transfer_via(
    server_ns: &str,
    listen: SocketAddr,
    client_ns: &str,
    connect: SocketAddr,
    bytes: u64,
) -> Result<TransferReport> {
    let addr = listen;
    let seed = 0x5eed ^ u64::from(connect.port());
    let abandoned = Arc::new(AtomicBool::new(false));

    let (bound_tx, bound_rx) = mpsc::channel();
    let server = {
        let abandoned = abandoned.clone();
        in_netns(server_ns, move || {
            let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            bound_tx.send(()).ok();
            receive(&listener, seed, &abandoned)
        })
    };
    if bound_rx.recv_timeout(connect_timeout()).is_err() {
        abandoned.store(true, Ordering::Relaxed);
        return Err(join(server)
            .err()
            .unwrap_or_else(|| anyhow!("the server did not start")));
    }

    let started = Instant::now();
    let client = in_netns(client_ns, move || send(connect, seed, bytes));
    let sent = join(client);
    if sent.is_err() {
        // Do not make the server wait out its timeout for a client that is gone.
        abandoned.store(true, Ordering::Relaxed);
    }
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

fn send(addr: SocketAddr, seed: u64, bytes: u64) -> Result<()> {
    let transfer_timeout = transfer_timeout();
    let deadline = Instant::now() + transfer_timeout;
    let connect_deadline = Instant::now() + connect_timeout();
    // Retried: the first attempt can fail fast while the path is being resolved.
    let mut conn = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(conn) => break conn,
            Err(_) if Instant::now() < connect_deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(anyhow!(e).context(format!("connecting to {addr}"))),
        }
    };
    conn.set_write_timeout(Some(stall_timeout()))?;
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; BUF];
    let mut left = bytes;
    while left > 0 {
        ensure!(
            Instant::now() < deadline,
            "{left} bytes left after {transfer_timeout:?}"
        );
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        conn.write_all(&buf[..n])
            .with_context(|| format!("sending, {left} bytes left"))?;
        left -= n as u64;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}

/// Accepts one connection and checks what arrives against the pattern; the
/// number of bytes that arrived, all of them correct.
fn receive(listener: &TcpListener, seed: u64, abandoned: &AtomicBool) -> Result<u64> {
    let transfer_timeout = transfer_timeout();
    let deadline = Instant::now() + transfer_timeout;
    // Non-blocking, so that an abandoned transfer stops waiting.
    listener.set_nonblocking(true)?;
    let mut conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if abandoned.load(Ordering::Relaxed) {
                    bail!("the client gave up");
                }
                ensure!(
                    Instant::now() < deadline,
                    "no client within {transfer_timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(anyhow!(e).context("accepting")),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(stall_timeout()))?;
    let mut expected = Pattern::new(seed);
    let mut got = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        ensure!(
            Instant::now() < deadline,
            "only {total} bytes within {transfer_timeout:?}"
        );
        let n = conn
            .read(&mut got)
            .with_context(|| format!("receiving, after {total} bytes"))?;
        if n == 0 {
            return Ok(total);
        }
        if let Some(at) = expected.first_mismatch(&got[..n]) {
            bail!("byte {} differs from what was sent", total + at as u64);
        }
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_does_not_depend_on_chunking_and_catches_changes() {
        let len = PERIOD + 1000;
        let (mut a, mut b) = (Pattern::new(7), Pattern::new(7));
        let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
        for chunk in x.chunks_mut(1 << 16) {
            a.fill(chunk);
        }
        for chunk in y.chunks_mut(65_521) {
            b.fill(chunk);
        }
        assert_eq!(x, y);
        assert_eq!(x[..1000], x[PERIOD..], "periodic");
        assert!(x[..8] != Pattern::new(8).table[..8], "seeded");

        let mut check = Pattern::new(7);
        assert_eq!(check.first_mismatch(&x[..PERIOD - 5]), None);
        y[PERIOD + 3] ^= 1;
        assert_eq!(check.first_mismatch(&y[PERIOD - 5..]), Some(8));
    }

    #[test]
    fn ping_summaries_are_parsed() {
        let text = "PING 10.0.0.4 (10.0.0.4) 56(84) bytes of data.\n\n\
                    --- 10.0.0.4 ping statistics ---\n\
                    5 packets transmitted, 4 received, +1 errors, 20% packet loss, time 813ms\n";
        assert_eq!(
            parse_ping_summary(text),
            Some(PingStats {
                transmitted: 5,
                received: 4
            })
        );
        assert_eq!(
            parse_ping_summary("ping: connect: Network is unreachable"),
            None
        );
    }
}
