//! The sealed transport's receive path. Input that does not open is refused
//! without a panic; input sealed with the cluster key (what a key holder may
//! send) opens to exactly what was sealed and then meets chitchat's message
//! decoder, which must refuse or decode but never panic.
#![no_main]

use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305};
use chitchat::{ChitchatMessage, Deserializable as _};
use libfuzzer_sys::fuzz_target;
use overlay_userspace::gossip::transport::{open, seal};

fuzz_target!(|data: &[u8]| {
    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    assert!(open(&cipher, data).is_none() || data.starts_with(b"OVG1"));
    let sealed = seal(&cipher, data).expect("sealing never fails");
    let plain = open(&cipher, &sealed).expect("a sealed datagram opens");
    assert_eq!(plain, data);
    let _ = ChitchatMessage::deserialize(&mut plain.as_slice());
});
