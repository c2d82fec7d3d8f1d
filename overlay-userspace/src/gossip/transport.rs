//! chitchat's UDP transport with every datagram sealed by the cluster key.
//!
//! chitchat has no authentication of its own. Each datagram here is
//! `MAGIC | nonce (24) | XChaCha20-Poly1305(serialized message) | tag (16)`, with
//! MAGIC as associated data. A random 192-bit nonce per datagram needs no
//! coordination between nodes. A datagram that fails to open is dropped and
//! counted, before chitchat sees a byte of it.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use async_trait::async_trait;
use chacha20poly1305::{
    AeadCore, KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, OsRng, Payload},
};
use chitchat::{
    ChitchatMessage, Deserializable as _, Serializable as _,
    transport::{Socket, Transport},
};
use serde::Serialize;

use super::key::ClusterKey;

const MAGIC: &[u8; 4] = b"OVG1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The largest UDP payload IPv4 carries.
const MAX_DATAGRAM: usize = 65_507;

/// What the transport has seen; shared with the agent, which reports it.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    /// Datagrams that failed authentication, or authenticated but did not parse.
    pub rejected: AtomicU64,
    /// Messages too large for one sealed datagram, not sent.
    pub oversized: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TransportCounts {
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub oversized: u64,
}

impl TransportStats {
    pub fn counts(&self) -> TransportCounts {
        TransportCounts {
            sent: self.sent.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            oversized: self.oversized.load(Ordering::Relaxed),
        }
    }
}

pub struct SealedTransport {
    cipher: XChaCha20Poly1305,
    stats: Arc<TransportStats>,
}

impl SealedTransport {
    pub fn new(key: &ClusterKey, stats: Arc<TransportStats>) -> SealedTransport {
        SealedTransport {
            cipher: XChaCha20Poly1305::new((&key.0).into()),
            stats,
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
            cipher: self.cipher.clone(),
            stats: self.stats.clone(),
            recv_buf: vec![0; MAX_DATAGRAM],
            plain: Vec::new(),
            last_reject_log: None,
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    cipher: XChaCha20Poly1305,
    stats: Arc<TransportStats>,
    recv_buf: Vec<u8>,
    plain: Vec<u8>,
    last_reject_log: Option<Instant>,
}

/// Seals one serialized message.
pub fn seal(cipher: &XChaCha20Poly1305, plain: &[u8]) -> Result<Vec<u8>> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: MAGIC,
            },
        )
        .map_err(|_| anyhow::anyhow!("sealing a gossip message failed"))?;
    let mut datagram = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
    datagram.extend_from_slice(MAGIC);
    datagram.extend_from_slice(&nonce);
    datagram.extend_from_slice(&sealed);
    Ok(datagram)
}

/// Opens one datagram; `None` if it is not sealed with this key.
pub fn open(cipher: &XChaCha20Poly1305, datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.len() < MAGIC.len() + NONCE_LEN + TAG_LEN || &datagram[..MAGIC.len()] != MAGIC {
        return None;
    }
    let (nonce, sealed) = datagram[MAGIC.len()..].split_at(NONCE_LEN);
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: MAGIC,
            },
        )
        .ok()
}

impl SealedSocket {
    fn reject(&mut self, from: SocketAddr, why: &str) {
        let n = self.stats.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        // A flood of forged datagrams must not become a flood of log lines.
        if self
            .last_reject_log
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            self.last_reject_log = Some(Instant::now());
            log::warn!(
                "gossip: dropped a datagram from {from}: {why} (wrong cluster key?); {n} rejected so far"
            );
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> Result<()> {
        self.plain.clear();
        msg.serialize(&mut self.plain);
        let datagram = seal(&self.cipher, &self.plain)?;
        if datagram.len() > MAX_DATAGRAM {
            self.stats.oversized.fetch_add(1, Ordering::Relaxed);
            bail!(
                "gossip message of {} bytes does not fit one UDP datagram once sealed",
                datagram.len()
            );
        }
        self.socket
            .send_to(&datagram, to)
            .await
            .with_context(|| format!("sending gossip to {to}"))?;
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
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
            let Some(plain) = open(&self.cipher, &self.recv_buf[..len]) else {
                self.reject(from, "authentication failed");
                continue;
            };
            match ChitchatMessage::deserialize(&mut plain.as_slice()) {
                Ok(msg) => {
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    return Ok((from, msg));
                }
                Err(_) => self.reject(from, "authenticated but malformed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_key_opens_a_datagram() {
        let key = ClusterKey::generate();
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        let other = XChaCha20Poly1305::new((&ClusterKey::generate().0).into());
        let sealed = seal(&cipher, b"hello").unwrap();
        assert_eq!(open(&cipher, &sealed).as_deref(), Some(&b"hello"[..]));
        assert_eq!(open(&other, &sealed), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open(&cipher, &tampered), None);
        assert_eq!(open(&cipher, b"hello"), None);
        // Two seals of the same message differ: fresh nonces.
        assert_ne!(seal(&cipher, b"hello").unwrap(), sealed);
    }
}
