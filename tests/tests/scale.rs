//! The scale tool works: `overlay-peer`'s members join a real agent's cluster
//! with the key, their endpoints reach the agent's maps behind each peer's
//! VTEP, and one change made by a peer reaches the agent and the other peers.
//! (The figures at 50 nodes and 20,000 endpoints are `cargo xtask bench --scale`'s.)

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::{Result, ensure};
use overlay_common::{FDB_KIND_REMOTE, FdbEntry, FdbKey};
use overlay_tests::{SCALE_VNI, ScaleBed, scaled, unique_prefix, wait_until};
use overlay_userspace::dataplane::maps::Maps;

const PEERS: usize = 4;
const ENDPOINTS: usize = 400;

/// The agent's remote FDB entries of the scale network: MAC → VTEP.
fn remote_fdb(bed: &ScaleBed) -> Result<BTreeMap<[u8; 6], Ipv4Addr>> {
    let maps = Maps::from_pins(&bed.cluster.pin_dir(1))?;
    let mut out = BTreeMap::new();
    for entry in &maps.fdb {
        let (key, value): (FdbKey, FdbEntry) = entry?;
        if value.kind == FDB_KIND_REMOTE && key.vni == SCALE_VNI {
            out.insert(key.mac, Ipv4Addr::from(value.remote_vtep));
        }
    }
    Ok(out)
}

/// The MAC the peers give an endpoint at `ip` (Docker's convention).
fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

#[test]
fn peers_endpoints_reach_the_agents_maps_and_a_change_reaches_everyone() -> Result<()> {
    let mut bed = ScaleBed::create(&unique_prefix("scl"), 1)?;
    bed.start_peers(PEERS, ENDPOINTS)?;
    bed.start_agent(1, &[])?;
    wait_until(
        scaled(Duration::from_secs(20)),
        "the peers' endpoints in the agent's FDB",
        || Ok(remote_fdb(&bed)?.len() == ENDPOINTS),
    )?;
    // Each behind the VTEP of the peer announcing it: 100 per peer, in order.
    let fdb = remote_fdb(&bed)?;
    let first_peer = u32::from(ScaleBed::first_peer_addr());
    for k in 0..ENDPOINTS {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 10)) + u32::try_from(k)?);
        let peer = u32::try_from(k / (ENDPOINTS / PEERS))?;
        let want = Ipv4Addr::from(first_peer + peer);
        ensure!(
            fdb.get(&mac_of(ip)) == Some(&want),
            "endpoint {ip}: FDB says {:?}, expected VTEP {want}",
            fdb.get(&mac_of(ip))
        );
    }
    let (remote, _) = bed.remote_endpoints(1)?;
    ensure!(
        remote == ENDPOINTS as u64,
        "the agent's metrics count {remote} remote endpoints"
    );

    let change = Ipv4Addr::new(10, 200, 100, 1);
    let peers = bed.peers()?;
    peers.watch(change, PEERS - 1)?;
    peers.add(PEERS - 1, change)?;
    let seen = peers.seen(change, PEERS - 1, scaled(Duration::from_secs(10)))?;
    ensure!(seen.len() == PEERS - 1, "{seen:?}");
    wait_until(
        scaled(Duration::from_secs(10)),
        "the peer's new endpoint in the agent's FDB",
        || {
            let last_peer = Ipv4Addr::from(first_peer + u32::try_from(PEERS - 1)?);
            Ok(remote_fdb(&bed)?.get(&mac_of(change)) == Some(&last_peer))
        },
    )?;
    let (low, high) = bed.peers()?.view()?;
    ensure!(
        low == ENDPOINTS as u64 + 1 && high == low,
        "the peers see between {low} and {high} endpoints, not {}",
        ENDPOINTS + 1
    );
    Ok(())
}
