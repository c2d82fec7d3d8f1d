//! chitchat messages cut into chunks that each fit one datagram under the
//! underlay's MTU, and put back together on the other side.
//!
//! chitchat 0.11 has no MTU setting: it fills a message up to 65,507 bytes, and
//! its Syn digest alone passes 1,400 bytes at about 40 nodes. Sent whole, such a
//! message leaves as IP fragments, which firewalls drop and which a single lost
//! fragment spoils with nothing to tell why. Cut here, every datagram is a whole
//! sealed packet: each chunk is authenticated and checked for replay on its own,
//! and a message is handed to chitchat only once every chunk has come. A message
//! that does not complete is dropped and counted; chitchat's next round asks
//! again (its anti-entropy repairs any loss).

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

/// The largest message chitchat writes, and so the most a message may gather.
pub const MAX_MESSAGE: usize = 65_507;
/// Messages being put together at once. Only key holders start one (every chunk
/// is authenticated first), so this bounds honest bursts: 64 whole messages
/// are at most 4 MiB.
pub const MAX_PARTIAL: usize = 64;
/// A message not complete by then has lost a chunk.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// `message` cut into at most 255 chunks of at most `chunk_len` bytes (one empty
/// chunk for an empty message); `None` if that takes more than 255.
pub fn split(message: &[u8], chunk_len: usize) -> Option<Vec<&[u8]>> {
    assert!(chunk_len > 0, "chunks hold at least one byte");
    if message.is_empty() {
        return Some(vec![message]);
    }
    let chunks: Vec<&[u8]> = message.chunks(chunk_len).collect();
    (chunks.len() <= usize::from(u8::MAX)).then_some(chunks)
}

/// Why a chunk was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its index or count make no sense, or its message grew too large.
    Malformed,
}

#[derive(Debug)]
struct Partial {
    started: Instant,
    chunks: Vec<Option<Vec<u8>>>,
    missing: usize,
    bytes: usize,
}

/// Messages whose chunks are still arriving, by sender and message id.
#[derive(Debug, Default)]
pub struct Reassembly {
    partial: HashMap<(SocketAddr, u64), Partial>,
}

impl Reassembly {
    /// Adds chunk `index` of `count` of message `id` from `from`: the whole
    /// message once this was its last missing chunk. `incomplete` counts the
    /// messages given up on meanwhile (timed out, or evicted when full).
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        from: SocketAddr,
        id: u64,
        index: u8,
        count: u8,
        chunk: Vec<u8>,
        now: Instant,
        incomplete: &mut u64,
    ) -> Result<Option<Vec<u8>>, Refused> {
        if count == 0 || index >= count || chunk.len() > MAX_MESSAGE {
            return Err(Refused::Malformed);
        }
        if count == 1 {
            return Ok(Some(chunk));
        }
        let before = self.partial.len();
        self.partial
            .retain(|_, p| now.duration_since(p.started) < TIMEOUT);
        *incomplete += (before - self.partial.len()) as u64;
        let key = (from, id);
        if !self.partial.contains_key(&key) && self.partial.len() >= MAX_PARTIAL {
            // Full: the oldest message goes. Its sender's next round repeats it.
            let oldest = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| *k)
                .expect("full");
            self.partial.remove(&oldest);
            *incomplete += 1;
        }
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            started: now,
            chunks: vec![None; usize::from(count)],
            missing: usize::from(count),
            bytes: 0,
        });
        if p.chunks.len() != usize::from(count) || p.bytes + chunk.len() > MAX_MESSAGE {
            self.partial.remove(&key);
            return Err(Refused::Malformed);
        }
        let slot = &mut p.chunks[usize::from(index)];
        if slot.is_none() {
            p.missing -= 1;
            p.bytes += chunk.len();
            *slot = Some(chunk);
        }
        if p.missing > 0 {
            return Ok(None);
        }
        let p = self.partial.remove(&key).expect("just filled");
        Ok(Some(p.chunks.into_iter().flatten().flatten().collect()))
    }

    pub fn in_progress(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn chunks_in_any_order_make_the_message_again() {
        let message: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let chunks = split(&message, 1_392).unwrap();
        assert_eq!(chunks.len(), 8);
        assert!(chunks.iter().all(|c| c.len() <= 1_392));
        let mut r = Reassembly::default();
        let mut lost = 0;
        let now = Instant::now();
        let count = u8::try_from(chunks.len()).unwrap();
        let mut whole = None;
        for i in (0..chunks.len()).rev() {
            assert!(whole.is_none(), "complete before the last chunk");
            let index = u8::try_from(i).unwrap();
            whole = r
                .add(from(1), 7, index, count, chunks[i].to_vec(), now, &mut lost)
                .unwrap();
        }
        assert_eq!(whole.as_deref(), Some(&message[..]));
        assert_eq!((r.in_progress(), lost), (0, 0));
        assert_eq!(split(b"", 10).unwrap(), vec![&b""[..]]);
        assert!(split(&message, 39).is_none());
    }

    #[test]
    fn bad_chunks_are_refused_and_lost_ones_are_given_up_on_within_bounds() {
        let mut r = Reassembly::default();
        let mut lost = 0;
        let t0 = Instant::now();
        assert_eq!(
            r.add(from(1), 1, 2, 2, vec![1], t0, &mut lost),
            Err(Refused::Malformed)
        );
        assert_eq!(
            r.add(from(1), 1, 0, 0, vec![1], t0, &mut lost),
            Err(Refused::Malformed)
        );
        assert_eq!(r.add(from(1), 1, 0, 2, vec![1], t0, &mut lost), Ok(None));
        // Another count for the same message: a key holder's nonsense.
        assert_eq!(
            r.add(from(1), 1, 1, 3, vec![1], t0, &mut lost),
            Err(Refused::Malformed)
        );
        // More half messages than the bound: the oldest go, memory stays bounded.
        for id in 0..(MAX_PARTIAL as u64 + 10) {
            let at = t0 + Duration::from_millis(id);
            r.add(from(2), id, 0, 2, vec![0; 1_000], at, &mut lost)
                .unwrap();
            assert!(r.in_progress() <= MAX_PARTIAL);
        }
        assert_eq!(lost, 10);
        // A message cannot grow past what chitchat ever sends.
        let big = vec![0; MAX_MESSAGE / 2 + 1];
        r.add(from(3), 9, 0, 3, big.clone(), t0, &mut lost).unwrap();
        assert_eq!(
            r.add(from(3), 9, 1, 3, big, t0, &mut lost),
            Err(Refused::Malformed)
        );
        // The rest time out.
        r.add(from(4), 1, 0, 2, vec![1], t0 + TIMEOUT * 2, &mut lost)
            .unwrap();
        assert_eq!(r.in_progress(), 1);
        assert_eq!(lost, 10 + MAX_PARTIAL as u64);
    }
}
