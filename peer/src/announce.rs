//! What one peer announces: the network (as a node whose file defines it would)
//! and its share of the endpoints, behind its own VTEP.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
};

use anyhow::{Result, ensure};
use overlay_userspace::{
    cluster::record::{EndpointRecord, NetworkDef, NodeRecord},
    gossip::now_ms,
    model::{Mac, Subnet},
};

/// Where the endpoints of all peers go: `total` addresses of `subnet` from host
/// number `first` on, dealt out in runs, one run per peer.
#[derive(Clone, Debug)]
pub struct Layout {
    pub network: String,
    pub vni: u32,
    pub subnet: Subnet,
    pub first: u32,
    pub total: usize,
    pub peers: usize,
}

impl Layout {
    pub fn check(&self) -> Result<()> {
        let hosts = (!self.subnet.mask()).saturating_sub(1);
        let end = u64::from(self.first) + self.total as u64;
        ensure!(
            self.first >= 1 && end <= u64::from(hosts) + 1,
            "{} endpoints from host {} on do not fit {}",
            self.total,
            self.first,
            self.subnet
        );
        ensure!(self.peers >= 1, "at least one peer");
        Ok(())
    }

    /// The endpoints peer `index` announces: an even share, the first peers
    /// taking one more when `total` does not divide.
    pub fn endpoints_of(&self, index: usize) -> Vec<EndpointRecord> {
        let share = self.total / self.peers;
        let extra = self.total % self.peers;
        let start = index * share + index.min(extra);
        let count = share + usize::from(index < extra);
        (start..start + count)
            .map(|k| self.endpoint(self.host(k)))
            .collect()
    }

    /// Host number `k` of the layout as an address.
    fn host(&self, k: usize) -> Ipv4Addr {
        let offset = u32::try_from(k).expect("checked to fit the subnet") + self.first;
        Ipv4Addr::from(u32::from(self.subnet.network) + offset)
    }

    pub fn endpoint(&self, ip: Ipv4Addr) -> EndpointRecord {
        EndpointRecord {
            network: self.network.clone(),
            ip,
            mac: Mac::from_ipv4(ip),
        }
    }

    /// The network as a node whose cluster file defines it announces it.
    fn network_def(&self, origin: &str) -> NetworkDef {
        NetworkDef {
            name: self.network.clone(),
            vni: self.vni,
            subnet: self.subnet,
            created_ms: 0,
            origin: origin.to_owned(),
            gateway: None,
            aux: Vec::new(),
            mtu: None,
            internal: false,
        }
    }

    /// Peer `index`'s record, named `name`, its VTEP the address it gossips on.
    pub fn record(&self, index: usize, name: &str, gossip_addr: SocketAddr) -> NodeRecord {
        let SocketAddr::V4(v4) = gossip_addr else {
            unreachable!("peers gossip on IPv4 addresses")
        };
        NodeRecord {
            name: name.to_owned(),
            generation: 0,
            live: true,
            gossip_addr: Some(gossip_addr),
            vtep: Some(*v4.ip()),
            vtep_since_ms: now_ms(),
            networks: BTreeMap::from([(self.network.clone(), self.network_def(name))]),
            removed: BTreeMap::new(),
            endpoints: self.endpoints_of(index),
            blocks: Vec::new(),
            malformed: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(total: usize, peers: usize) -> Layout {
        Layout {
            network: "scale".into(),
            vni: 42,
            subnet: "10.200.0.0/16".parse().unwrap(),
            first: 10,
            total,
            peers,
        }
    }

    #[test]
    fn the_shares_cover_every_endpoint_once() {
        let l = layout(20_000, 48);
        let mut all: Vec<Ipv4Addr> = (0..48)
            .flat_map(|i| l.endpoints_of(i))
            .map(|e| e.ip)
            .collect();
        assert_eq!(all.len(), 20_000);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20_000);
        assert_eq!(all[0], Ipv4Addr::new(10, 200, 0, 10));
        assert_eq!(all[19_999], Ipv4Addr::from(u32::from(all[0]) + 19_999));
        let sizes: Vec<usize> = (0..48).map(|i| l.endpoints_of(i).len()).collect();
        assert!(sizes.iter().all(|s| *s == 416 || *s == 417), "{sizes:?}");
    }

    #[test]
    fn a_layout_beyond_the_subnet_is_refused() {
        // Hosts 10..=65534 of the /16: the broadcast address stays out.
        assert!(layout(65_525, 1).check().is_ok());
        assert!(layout(65_526, 1).check().is_err());
    }
}
