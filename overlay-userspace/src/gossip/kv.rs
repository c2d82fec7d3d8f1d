//! The gossip encoding of a [`NodeRecord`]: the node's chitchat key-value state.
//! One key per fact, so a change to one endpoint gossips one key.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
};

use itertools::{EitherOrBoth, Itertools as _};
use serde::{Deserialize, Serialize};

use crate::{
    cluster::record::{BlockClaim, EndpointRecord, NetworkDef, NodeRecord},
    model::{Mac, Subnet},
};

const KEY_VTEP: &str = "vtep";
const PREFIX_NETWORK: &str = "net:";
const PREFIX_REMOVED: &str = "netrm:";
const PREFIX_ENDPOINT: &str = "ep:";
const PREFIX_BLOCK: &str = "blk:";

#[derive(Serialize, Deserialize)]
struct VtepValue {
    ip: Ipv4Addr,
    since_ms: u64,
}

/// The options after `origin` are left out when they are defaults, and read
/// as defaults when absent, so records of agents before them still parse.
#[derive(Serialize, Deserialize)]
struct NetworkValue {
    vni: u32,
    subnet: Subnet,
    created_ms: u64,
    origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    aux: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    internal: bool,
}

#[derive(Serialize, Deserialize)]
struct RemovedValue {
    removed_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct EndpointValue {
    mac: Mac,
}

#[derive(Serialize, Deserialize)]
struct BlockValue {
    claimed_ms: u64,
}

/// A record as gossip keys: `vtep`, `net:<name>`, `netrm:<name>`,
/// `ep:<network>:<ip>`, `blk:<network>:<index>`, with JSON values.
pub fn encode(record: &NodeRecord) -> BTreeMap<String, String> {
    let mut kv = encode_few(record);
    for e in &record.endpoints {
        let (key, value) = endpoint_entry(e);
        kv.insert(key, value);
    }
    kv
}

/// The keys to set (with their values) and to delete that turn `old`'s
/// encoding into `new`'s.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub set: Vec<(String, String)>,
    pub delete: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.delete.is_empty()
    }
}

/// What changed from `old`'s encoding to `new`'s. The endpoints, the part
/// that grows with the node, are compared as facts and only the changed ones
/// encoded: a change to one endpoint encodes one key, not the node's
/// thousands (a node's other facts are few, and encoded whole).
pub fn delta(old: &NodeRecord, new: &NodeRecord) -> Delta {
    let mut delta = Delta::default();
    let (old_few, new_few) = (encode_few(old), encode_few(new));
    for key in old_few.keys().filter(|k| !new_few.contains_key(*k)) {
        delta.delete.push(key.clone());
    }
    for (key, value) in new_few {
        if old_few.get(&key) != Some(&value) {
            delta.set.push((key, value));
        }
    }
    if old.endpoints == new.endpoints {
        return delta;
    }
    let (old_eps, new_eps) = (by_address(&old.endpoints), by_address(&new.endpoints));
    // One walk over both in address order: a change costs no table of either.
    for pair in old_eps
        .iter()
        .merge_join_by(new_eps.iter(), |o, n| address(o).cmp(&address(n)))
    {
        match pair {
            EitherOrBoth::Left(gone) => delta.delete.push(endpoint_key(&gone.network, gone.ip)),
            EitherOrBoth::Right(is) => delta.set.push(endpoint_entry(is)),
            EitherOrBoth::Both(was, is) if was.mac != is.mac => {
                delta.set.push(endpoint_entry(is));
            }
            EitherOrBoth::Both(..) => {}
        }
    }
    delta
}

/// An endpoint's gossip key, as a fact: one per (network, address).
fn address(e: &EndpointRecord) -> (&str, Ipv4Addr) {
    (e.network.as_str(), e.ip)
}

/// `endpoints` in address order, one per address (the last of several, as
/// their encoding keeps). A node's own record is kept sorted, so this is
/// usually `endpoints` itself.
fn by_address(endpoints: &[EndpointRecord]) -> Cow<'_, [EndpointRecord]> {
    if endpoints
        .windows(2)
        .all(|w| address(&w[0]) < address(&w[1]))
    {
        return Cow::Borrowed(endpoints);
    }
    let mut sorted = endpoints.to_vec();
    // Stable: of one address, the last stays last, and dedup keeps it.
    sorted.sort_by(|a, b| address(a).cmp(&address(b)));
    sorted.reverse();
    sorted.dedup_by(|a, b| address(a) == address(b));
    sorted.reverse();
    Cow::Owned(sorted)
}

fn endpoint_key(network: &str, ip: Ipv4Addr) -> String {
    format!("{PREFIX_ENDPOINT}{network}:{ip}")
}

fn endpoint_entry(e: &EndpointRecord) -> (String, String) {
    (
        endpoint_key(&e.network, e.ip),
        json(&EndpointValue { mac: e.mac }),
    )
}

/// Every key but the endpoints'.
fn encode_few(record: &NodeRecord) -> BTreeMap<String, String> {
    let mut kv = BTreeMap::new();
    if let Some(ip) = record.vtep {
        let value = VtepValue {
            ip,
            since_ms: record.vtep_since_ms,
        };
        kv.insert(KEY_VTEP.to_owned(), json(&value));
    }
    for (name, def) in &record.networks {
        let value = NetworkValue {
            vni: def.vni,
            subnet: def.subnet,
            created_ms: def.created_ms,
            origin: def.origin.clone(),
            gateway: def.gateway,
            aux: def.aux.clone(),
            mtu: def.mtu,
            internal: def.internal,
        };
        kv.insert(format!("{PREFIX_NETWORK}{name}"), json(&value));
    }
    for (name, removed_ms) in &record.removed {
        kv.insert(
            format!("{PREFIX_REMOVED}{name}"),
            json(&RemovedValue {
                removed_ms: *removed_ms,
            }),
        );
    }
    for b in &record.blocks {
        kv.insert(
            format!("{PREFIX_BLOCK}{}:{}", b.network, b.index),
            json(&BlockValue {
                claimed_ms: b.claimed_ms,
            }),
        );
    }
    kv
}

/// Parses a node's gossip keys. Keys of other prefixes are ignored (room for
/// later versions); keys of ours that do not parse are listed in `malformed`.
pub fn decode<'a>(
    name: &str,
    generation: u64,
    live: bool,
    gossip_addr: Option<SocketAddr>,
    kv: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> NodeRecord {
    let mut r = NodeRecord {
        name: name.to_owned(),
        generation,
        live,
        gossip_addr,
        ..NodeRecord::default()
    };
    for (key, value) in kv {
        if !parse_entry(&mut r, key, value) {
            r.malformed.push(format!("{key}={value}"));
        }
    }
    r.endpoints.sort();
    r.blocks.sort();
    r
}

fn parse_entry(r: &mut NodeRecord, key: &str, value: &str) -> bool {
    if key == KEY_VTEP {
        let Ok(v) = serde_json::from_str::<VtepValue>(value) else {
            return false;
        };
        r.vtep = Some(v.ip);
        r.vtep_since_ms = v.since_ms;
        return true;
    }
    if let Some(name) = key.strip_prefix(PREFIX_NETWORK) {
        let Ok(v) = serde_json::from_str::<NetworkValue>(value) else {
            return false;
        };
        r.networks.insert(
            name.to_owned(),
            NetworkDef {
                name: name.to_owned(),
                vni: v.vni,
                subnet: v.subnet,
                created_ms: v.created_ms,
                origin: v.origin,
                gateway: v.gateway,
                aux: v.aux,
                mtu: v.mtu,
                internal: v.internal,
            },
        );
        return true;
    }
    if let Some(name) = key.strip_prefix(PREFIX_REMOVED) {
        let Ok(v) = serde_json::from_str::<RemovedValue>(value) else {
            return false;
        };
        r.removed.insert(name.to_owned(), v.removed_ms);
        return true;
    }
    if let Some(rest) = key.strip_prefix(PREFIX_ENDPOINT) {
        let Some((network, ip)) = rest.rsplit_once(':') else {
            return false;
        };
        let (Ok(ip), Ok(v)) = (ip.parse(), serde_json::from_str::<EndpointValue>(value)) else {
            return false;
        };
        r.endpoints.push(EndpointRecord {
            network: network.to_owned(),
            ip,
            mac: v.mac,
        });
        return true;
    }
    if let Some(rest) = key.strip_prefix(PREFIX_BLOCK) {
        let Some((network, index)) = rest.rsplit_once(':') else {
            return false;
        };
        let (Ok(index), Ok(v)) = (index.parse(), serde_json::from_str::<BlockValue>(value)) else {
            return false;
        };
        r.blocks.push(BlockClaim {
            network: network.to_owned(),
            index,
            claimed_ms: v.claimed_ms,
        });
        return true;
    }
    true
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain structs serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_its_gossip_encoding() {
        let ip = Ipv4Addr::new(10, 0, 0, 3);
        let mut r = NodeRecord {
            name: "n1".into(),
            generation: 7,
            live: true,
            vtep: Some(Ipv4Addr::new(172, 31, 1, 5)),
            ..NodeRecord::default()
        };
        r.networks.insert(
            "a".into(),
            NetworkDef {
                name: "a".into(),
                vni: 4097,
                subnet: "10.0.0.0/24".parse().unwrap(),
                created_ms: 0,
                origin: "n1".into(),
                gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
                aux: vec![Ipv4Addr::new(10, 0, 0, 2)],
                mtu: Some(1400),
                internal: true,
            },
        );
        r.removed.insert("b".into(), 5);
        r.endpoints.push(EndpointRecord {
            network: "a".into(),
            ip,
            mac: Mac::from_ipv4(ip),
        });
        r.blocks.push(BlockClaim {
            network: "a".into(),
            index: 2,
            claimed_ms: 9,
        });
        let kv = encode(&r);
        let back = decode(
            "n1",
            7,
            true,
            None,
            kv.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        assert_eq!(back, r);
        let junk = decode("n1", 7, true, None, [("ep:a:nope", "{}")]);
        assert_eq!(junk.malformed.len(), 1);
    }

    #[test]
    fn a_delta_turns_one_encoding_into_the_other() {
        let endpoint = |last: u8, mac: u8| EndpointRecord {
            network: "a".into(),
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac: Mac([2, 0x42, 10, 0, 0, mac]),
        };
        let old = NodeRecord {
            vtep: Some(Ipv4Addr::new(172, 31, 1, 5)),
            endpoints: vec![endpoint(3, 3), endpoint(4, 4), endpoint(5, 5)],
            ..NodeRecord::default()
        };
        let mut new = old.clone();
        new.vtep_since_ms = 9;
        new.removed.insert("b".into(), 5);
        new.endpoints = vec![endpoint(6, 6), endpoint(3, 3), endpoint(5, 50)];
        let d = delta(&old, &new);
        assert_eq!(d.set.len(), 4, "vtep, netrm:b, ep 6 and ep 5: {d:?}");
        assert_eq!(d.delete, ["ep:a:10.0.0.4"]);
        let mut kv = encode(&old);
        for key in &d.delete {
            kv.remove(key);
        }
        kv.extend(d.set);
        assert_eq!(kv, encode(&new));
        assert!(delta(&new, &new).is_empty());
    }

    #[test]
    fn a_network_announced_before_the_options_existed_reads_with_defaults() {
        let old = r#"{"vni":4097,"subnet":"10.0.0.0/24","created_ms":5,"origin":"n0"}"#;
        let r = decode("n0", 1, true, None, [("net:a", old)]);
        assert!(r.malformed.is_empty(), "{:?}", r.malformed);
        let def = &r.networks["a"];
        assert_eq!(def.gateway(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(def.way_out(), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(def.aux.is_empty() && def.mtu.is_none());
        // And a default network is announced in that old shape.
        let kv = encode(&r);
        assert_eq!(kv["net:a"], old);
    }
}
