//! A node's gossip keys as any peer with the key may send them: decoded into a
//! record (unknown or malformed keys set aside), then resolved with this node's
//! own record, as every node does on each change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay_userspace::{
    cluster::{record::NodeRecord, resolve::resolve},
    gossip::kv,
};

fuzz_target!(|input: (u64, bool, Vec<(String, String)>)| {
    let (generation, live, pairs) = input;
    let record = kv::decode(
        "peer",
        generation,
        live,
        None,
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let own = NodeRecord {
        name: "self".into(),
        live: true,
        ..NodeRecord::default()
    };
    let _ = resolve(&own, &[record], 1_000);
});
