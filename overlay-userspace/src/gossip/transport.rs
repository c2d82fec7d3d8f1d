//! chitchat's UDP transport, sealed (see `wire`), cut to the underlay's MTU
//! (see `chunk`) and guarded against replay (see `replay`).
//!
//! chitchat has no authentication of its own. Whatever fails here (does not
//! open with any key of the ring, is addressed to another node, is a copy, or
//! was sealed outside the window) is dropped and counted before chitchat sees a
//! byte of it, so it is never answered: a forged or replayed datagram from a
//! spoofed source makes this node send nothing at all.

use std::{
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use async_trait::async_trait;
use chacha20poly1305::aead::{OsRng, rand_core::RngCore as _};
use chitchat::{
    ChitchatMessage, Deserializable as _, Serializable as _,
    transport::{Socket, Transport},
};
use serde::Serialize;

use super::{
    chunk::{self, Reassembly},
    key::Keyring,
    now_ms,
    replay::{Freshness, ReplayGuard},
    wire::{self, Header},
};

/// The largest UDP payload IPv4 carries: what is read at once.
const MAX_DATAGRAM: usize = 65_507;
const UDP_HEADER: usize = 8;

/// What the transport has seen; shared with the agent, which reports it.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Datagrams sent.
    pub sent: AtomicU64,
    /// Datagrams that opened, were addressed here, and were new.
    pub accepted: AtomicU64,
    /// Datagrams that failed authentication, were addressed to another node,
    /// or authenticated but did not parse.
    pub rejected: AtomicU64,
    /// Authenticated datagrams seen before (inside the window).
    pub replayed: AtomicU64,
    /// Authenticated datagrams sealed outside the window (old copies, or a
    /// sender whose clock is off by more than the window).
    pub stale: AtomicU64,
    /// Messages given up on because a chunk never came.
    pub incomplete: AtomicU64,
    /// Messages too large for 255 chunks, not sent.
    pub oversized: AtomicU64,
    /// The largest datagram sent, in bytes (UDP payload).
    pub largest_sent: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TransportCounts {
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    #[serde(default)]
    pub replayed: u64,
    #[serde(default)]
    pub stale: u64,
    #[serde(default)]
    pub incomplete: u64,
    pub oversized: u64,
    #[serde(default)]
    pub largest_sent: u64,
}

impl TransportStats {
    pub fn counts(&self) -> TransportCounts {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportCounts {
            sent: load(&self.sent),
            accepted: load(&self.accepted),
            rejected: load(&self.rejected),
            replayed: load(&self.replayed),
            stale: load(&self.stale),
            incomplete: load(&self.incomplete),
            oversized: load(&self.oversized),
            largest_sent: load(&self.largest_sent),
        }
    }
}

/// The UDP payload a datagram may have so that, with its IP and UDP headers,
/// it fits an underlay of `mtu` bytes reached from `listen`.
pub fn max_datagram(mtu: u32, listen: SocketAddr) -> usize {
    let ip_header = if listen.is_ipv4() { 20 } else { 40 };
    (mtu as usize).saturating_sub(ip_header + UDP_HEADER)
}

/// The keys every socket of this transport seals and opens with, replaced
/// whole on a reload.
pub type SharedKeyring = Arc<RwLock<Keyring>>;

pub struct SealedTransport {
    keys: SharedKeyring,
    stats: Arc<TransportStats>,
    advertise: SocketAddr,
    max_datagram: usize,
}

impl SealedTransport {
    /// Datagrams of at most `max_datagram` bytes; this node is reached at its
    /// listen address or at `advertise`.
    pub fn new(
        keys: SharedKeyring,
        stats: Arc<TransportStats>,
        advertise: SocketAddr,
        max_datagram: usize,
    ) -> SealedTransport {
        assert!(
            max_datagram > wire::OVERHEAD,
            "the configuration keeps the MTU above the seal's overhead"
        );
        SealedTransport {
            keys,
            stats,
            advertise,
            max_datagram,
        }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen: SocketAddr) -> Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .with_context(|| format!("binding the gossip socket {listen}/udp"))?;
        Ok(Box::new(SealedSocket {
            socket,
            listen,
            advertise: self.advertise,
            keys: self.keys.clone(),
            stats: self.stats.clone(),
            chunk_len: self.max_datagram - wire::OVERHEAD,
            next_message_id: OsRng.next_u64(),
            replay: ReplayGuard::new(now_ms()),
            reassembly: Reassembly::default(),
            recv_buf: vec![0; MAX_DATAGRAM],
            plain: Vec::new(),
            last_reject_log: None,
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    listen: SocketAddr,
    advertise: SocketAddr,
    keys: SharedKeyring,
    stats: Arc<TransportStats>,
    chunk_len: usize,
    next_message_id: u64,
    replay: ReplayGuard,
    reassembly: Reassembly,
    recv_buf: Vec<u8>,
    plain: Vec<u8>,
    last_reject_log: Option<Instant>,
}

impl SealedSocket {
    fn reject(&mut self, from: SocketAddr, why: &str) {
        let n = self.stats.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        self.log_drop(from, why, n, "rejected");
    }

    // A flood of forged datagrams must not become a flood of log lines.
    fn log_drop(&mut self, from: SocketAddr, why: &str, n: u64, counter: &str) {
        if self
            .last_reject_log
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            self.last_reject_log = Some(Instant::now());
            log::warn!("gossip: dropped a datagram from {from}: {why}; {n} {counter} so far");
        }
    }

    /// Whether a datagram sent to `to` was meant for this socket.
    fn is_for_me(&self, to: SocketAddr) -> bool {
        to == self.advertise
            || to == self.listen
            || (self.listen.ip().is_unspecified() && to.port() == self.listen.port())
    }

    /// One received datagram: the message it completes, if any, with the
    /// sender's sealed address to answer, never the datagram's source, which
    /// anyone on the path can forge.
    fn receive(&mut self, from: SocketAddr, len: usize) -> Option<(SocketAddr, ChitchatMessage)> {
        let opened = {
            let keys = self.keys.read().expect("keyring lock");
            wire::open(keys.opening(), &self.recv_buf[..len])
        };
        let Some(opened) = opened else {
            self.reject(from, "authentication failed (wrong cluster key?)");
            return None;
        };
        let header = opened.header;
        if !self.is_for_me(header.to) {
            self.reject(from, &format!("addressed to {}, not this node", header.to));
            return None;
        }
        match self
            .replay
            .check(header.sealed_at_ms, opened.nonce, now_ms())
        {
            Freshness::Fresh => {}
            Freshness::Replayed => {
                let n = self.stats.replayed.fetch_add(1, Ordering::Relaxed) + 1;
                self.log_drop(from, "a copy of one seen before", n, "replayed");
                return None;
            }
            Freshness::Stale => {
                let n = self.stats.stale.fetch_add(1, Ordering::Relaxed) + 1;
                let age = i128::from(now_ms()) - i128::from(header.sealed_at_ms);
                self.log_drop(
                    from,
                    &format!(
                        "sealed {age} ms ago, outside the replay window (an old copy, or clocks apart?)"
                    ),
                    n,
                    "stale",
                );
                return None;
            }
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let mut incomplete = 0;
        let whole = self.reassembly.add(
            header.from,
            header.message_id,
            header.index,
            header.count,
            opened.chunk,
            Instant::now(),
            &mut incomplete,
        );
        self.stats
            .incomplete
            .fetch_add(incomplete, Ordering::Relaxed);
        let message = match whole {
            Ok(Some(message)) => message,
            Ok(None) => return None,
            Err(chunk::Refused::Malformed) => {
                self.reject(from, "authenticated but its chunk does not fit its message");
                return None;
            }
        };
        if let Ok(msg) = ChitchatMessage::deserialize(&mut message.as_slice()) {
            Some((header.from, msg))
        } else {
            self.reject(from, "authenticated but malformed");
            None
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> Result<()> {
        self.plain.clear();
        msg.serialize(&mut self.plain);
        let Some(chunks) = chunk::split(&self.plain, self.chunk_len) else {
            self.stats.oversized.fetch_add(1, Ordering::Relaxed);
            bail!(
                "gossip message of {} bytes takes more than 255 datagrams of {} bytes",
                self.plain.len(),
                self.chunk_len + wire::OVERHEAD
            );
        };
        let message_id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        let count = u8::try_from(chunks.len()).expect("split makes at most 255");
        let datagrams: Vec<Vec<u8>> = {
            let keys = self.keys.read().expect("keyring lock");
            let sealed_at_ms = now_ms();
            chunks
                .iter()
                .enumerate()
                .map(|(index, chunk)| {
                    let header = Header {
                        sealed_at_ms,
                        to,
                        from: self.advertise,
                        message_id,
                        index: u8::try_from(index).expect("at most 255 chunks"),
                        count,
                    };
                    wire::seal(keys.sealing(), &header, chunk)
                })
                .collect()
        };
        for datagram in datagrams {
            self.socket
                .send_to(&datagram, to)
                .await
                .with_context(|| format!("sending gossip to {to}"))?;
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
            self.stats
                .largest_sent
                .fetch_max(datagram.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.recv_buf).await {
                Ok(received) => received,
                // ICMP errors from peers that went away surface here; they are not fatal.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::OutOfMemory
                    ) || e.raw_os_error() == Some(libc::EHOSTUNREACH)
                        || e.raw_os_error() == Some(libc::ENETUNREACH) =>
                {
                    continue;
                }
                Err(e) => return Err(e).context("receiving gossip"),
            };
            if let Some(received) = self.receive(from, len) {
                return Ok(received);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::key::ClusterKey;

    /// A Syn with an empty digest and a cluster id long enough to take several
    /// chunks, written as chitchat writes one (its digest type is private).
    fn syn() -> ChitchatMessage {
        let mut bytes = 45_139u16.to_le_bytes().to_vec();
        bytes.extend([0, 0]);
        chitchat::Serializable::serialize(&0u16, &mut bytes);
        chitchat::Serializable::serialize(&"c".repeat(3_000), &mut bytes);
        let msg = ChitchatMessage::deserialize(&mut bytes.as_slice()).unwrap();
        assert!(matches!(msg, ChitchatMessage::Syn { .. }));
        msg
    }

    #[tokio::test]
    async fn a_copy_is_dropped_and_counted_and_a_message_crosses_in_chunks() {
        let keys = Arc::new(RwLock::new(Keyring::new(&[ClusterKey::generate()])));
        let addr = |i: u8| SocketAddr::from(([127, 93, 0, i], 7946));
        // The receiver listens on 1 and is advertised at 3, where a plain socket
        // sees what is sent to it: the datagrams an eavesdropper captures.
        let (sender_stats, receiver_stats) = (Arc::default(), Arc::<TransportStats>::default());
        let mut sender = SealedTransport::new(keys.clone(), sender_stats, addr(2), 600)
            .open(addr(2))
            .await
            .unwrap();
        let mut receiver = SealedTransport::new(keys.clone(), receiver_stats.clone(), addr(3), 600)
            .open(addr(1))
            .await
            .unwrap();
        let wire = tokio::net::UdpSocket::bind(addr(3)).await.unwrap();
        sender.send(addr(3), syn()).await.unwrap();
        let mut captured = Vec::new();
        let mut buf = vec![0; MAX_DATAGRAM];
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), wire.recv_from(&mut buf)).await
        {
            assert!(n <= 600, "a datagram of {n} B");
            captured.push(buf[..n].to_vec());
        }
        assert!(captured.len() > 1, "{} chunks", captured.len());
        // Delivered once, in any order, the message comes whole.
        for d in captured.iter().rev() {
            wire.send_to(d, addr(1)).await.unwrap();
        }
        let (answer_to, msg) = tokio::time::timeout(Duration::from_secs(2), receiver.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg, syn());
        // Relayed from 3, it is answered at the sender's own address.
        assert_eq!(answer_to, addr(2));
        // Again: every copy is dropped and counted, nothing reaches chitchat.
        for d in &captured {
            wire.send_to(d, addr(1)).await.unwrap();
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), receiver.recv())
                .await
                .is_err()
        );
        let counts = receiver_stats.counts();
        let n = captured.len() as u64;
        assert_eq!(
            (counts.accepted, counts.replayed, counts.rejected),
            (n, n, 0)
        );
        // Under a key no longer in the ring, nothing opens.
        *keys.write().unwrap() = Keyring::new(&[ClusterKey::generate()]);
        wire.send_to(&captured[0], addr(1)).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), receiver.recv())
                .await
                .is_err()
        );
        assert_eq!(receiver_stats.counts().rejected, 1);
    }
}
