//! One gossip datagram on the wire:
//!
//! ```text
//! MAGIC "OVG2" | nonce (24) | XChaCha20-Poly1305( header (54) | chunk ) | tag (16)
//! header: sealed_at_ms u64 | to: IPv6 (IPv4-mapped) 16 + port 2 | from: the same | message id u64 | index u8 | count u8
//! ```
//!
//! MAGIC is the associated data. A random 192-bit nonce per datagram needs no
//! coordination between nodes. The header is under the seal so that nobody
//! without a key can change it: the time it was sealed (the receiver's replay
//! window), the address it was sent to (a copy sent to another node is refused
//! there), the sender's own gossip address (where the answer goes, whatever
//! source address the datagram arrived with: a copy re-sent from a forged
//! source makes nobody answer that source) and where its chunk goes in its
//! message (see `chunk`).

use std::net::{Ipv6Addr, SocketAddr};

use chacha20poly1305::{
    AeadCore as _, XChaCha20Poly1305, XNonce,
    aead::{Aead as _, OsRng, Payload},
};

pub const MAGIC: &[u8; 4] = b"OVG2";
pub const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 8 + ADDR_LEN + ADDR_LEN + 8 + 1 + 1;
const ADDR_LEN: usize = 16 + 2;
/// What a datagram carries besides its chunk.
pub const OVERHEAD: usize = MAGIC.len() + NONCE_LEN + HEADER_LEN + TAG_LEN;

pub type Nonce = [u8; NONCE_LEN];

/// The sealed header of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sender's clock, milliseconds since the Unix epoch.
    pub sealed_at_ms: u64,
    /// The address the sender sent it to.
    pub to: SocketAddr,
    /// The sender's advertised gossip address, where answers go.
    pub from: SocketAddr,
    /// The same for every chunk of one message from one sender.
    pub message_id: u64,
    pub index: u8,
    pub count: u8,
}

/// A datagram that opened.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    pub nonce: Nonce,
    pub header: Header,
    pub chunk: Vec<u8>,
}

/// Seals `chunk` under `header` with `cipher`.
pub fn seal(cipher: &XChaCha20Poly1305, header: &Header, chunk: &[u8]) -> Vec<u8> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut plain = Vec::with_capacity(HEADER_LEN + chunk.len());
    plain.extend_from_slice(&header.sealed_at_ms.to_be_bytes());
    put_addr(&mut plain, header.to);
    put_addr(&mut plain, header.from);
    plain.extend_from_slice(&header.message_id.to_be_bytes());
    plain.extend_from_slice(&[header.index, header.count]);
    plain.extend_from_slice(chunk);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: &plain,
                aad: MAGIC,
            },
        )
        .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
    let mut datagram = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
    datagram.extend_from_slice(MAGIC);
    datagram.extend_from_slice(&nonce);
    datagram.extend_from_slice(&sealed);
    datagram
}

fn put_addr(plain: &mut Vec<u8>, addr: SocketAddr) {
    let ip = match addr {
        SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
        SocketAddr::V6(a) => *a.ip(),
    };
    plain.extend_from_slice(&ip.octets());
    plain.extend_from_slice(&addr.port().to_be_bytes());
}

fn addr_at(bytes: &[u8]) -> SocketAddr {
    let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..16]).expect("16 bytes"));
    SocketAddr::new(
        ip.to_canonical(),
        u16::from_be_bytes([bytes[16], bytes[17]]),
    )
}

/// Opens `datagram` with the first of `ciphers` that authenticates it; `None`
/// if none does.
pub fn open(ciphers: &[XChaCha20Poly1305], datagram: &[u8]) -> Option<Opened> {
    if datagram.len() < OVERHEAD || &datagram[..MAGIC.len()] != MAGIC {
        return None;
    }
    let (nonce, sealed) = datagram[MAGIC.len()..].split_at(NONCE_LEN);
    let plain = ciphers.iter().find_map(|cipher| {
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: MAGIC,
                },
            )
            .ok()
    })?;
    let (head, chunk) = plain.split_at(HEADER_LEN);
    let u64_at = |at: usize| u64::from_be_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    let ids = 8 + 2 * ADDR_LEN;
    Some(Opened {
        nonce: nonce.try_into().expect("split at NONCE_LEN"),
        header: Header {
            sealed_at_ms: u64_at(0),
            to: addr_at(&head[8..8 + ADDR_LEN]),
            from: addr_at(&head[8 + ADDR_LEN..ids]),
            message_id: u64_at(ids),
            index: head[ids + 8],
            count: head[ids + 9],
        },
        chunk: chunk.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use chacha20poly1305::KeyInit as _;

    use super::*;
    use crate::gossip::key::ClusterKey;

    fn header() -> Header {
        Header {
            sealed_at_ms: 1_700_000_000_123,
            to: "172.30.0.11:7946".parse().unwrap(),
            from: "192.168.1.5:7947".parse().unwrap(),
            message_id: 0x0102_0304_0506_0708,
            index: 2,
            count: 3,
        }
    }

    #[test]
    fn only_a_key_of_the_ring_opens_a_datagram_and_the_header_comes_back() {
        let key = ClusterKey::generate().cipher();
        let other = XChaCha20Poly1305::new(&ClusterKey::generate().0.into());
        let sealed = seal(&key, &header(), b"hello");
        assert_eq!(sealed.len(), OVERHEAD + 5);
        let opened = open(std::slice::from_ref(&key), &sealed).unwrap();
        assert_eq!(
            (opened.header, &opened.chunk[..]),
            (header(), &b"hello"[..])
        );
        assert_eq!(&opened.nonce[..], &sealed[4..4 + NONCE_LEN]);
        // Any key of the ring opens it, wherever it stands.
        assert!(open(&[other.clone(), key.clone()], &sealed).is_some());
        assert_eq!(open(std::slice::from_ref(&other), &sealed), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open(std::slice::from_ref(&key), &tampered), None);
        assert_eq!(open(std::slice::from_ref(&key), b"hello"), None);
        // Two seals of the same chunk differ: fresh nonces.
        assert_ne!(seal(&key, &header(), b"hello"), sealed);
        let v6 = Header {
            to: "[fd00::1]:7946".parse().unwrap(),
            from: "[fd00::2]:7946".parse().unwrap(),
            ..header()
        };
        let opened = open(std::slice::from_ref(&key), &seal(&key, &v6, b"")).unwrap();
        assert_eq!(opened.header, v6);
    }
}
