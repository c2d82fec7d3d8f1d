//! The sealed transport's receive path. Input that does not open is refused
//! without a panic; input sealed with the cluster key (what a key holder may
//! send) opens to exactly what was sealed, its header included, and then meets
//! the chunk reassembly and chitchat's message decoder, which must refuse or
//! decode but never panic.
#![no_main]

use std::time::Instant;

use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305};
use chitchat::{ChitchatMessage, Deserializable as _};
use libfuzzer_sys::fuzz_target;
use overlay_userspace::gossip::{
    chunk::Reassembly,
    wire::{Header, MAGIC, open, seal},
};

fuzz_target!(|data: &[u8]| {
    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    let ring = std::slice::from_ref(&cipher);
    assert!(open(ring, data).is_none() || data.starts_with(MAGIC));
    // The first bytes choose the header, as a key holder may.
    let pick = |i: usize| data.get(i).copied().unwrap_or(0);
    let header = Header {
        sealed_at_ms: u64::from(pick(0)) << 32,
        to: ([127, 0, 0, pick(1)], 7946).into(),
        from: ([127, 0, 1, pick(5)], 7946).into(),
        message_id: u64::from(pick(2)),
        index: pick(3),
        count: pick(4),
    };
    let sealed = seal(&cipher, &header, data);
    let opened = open(ring, &sealed).expect("a sealed datagram opens");
    assert_eq!((opened.header, &opened.chunk[..]), (header, data));
    let mut lost = 0;
    let whole = Reassembly::default().add(
        header.from,
        header.message_id,
        header.index,
        header.count,
        opened.chunk,
        Instant::now(),
        &mut lost,
    );
    if let Ok(Some(message)) = whole {
        let _ = ChitchatMessage::deserialize(&mut message.as_slice());
    }
});
