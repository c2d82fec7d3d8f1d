//! Loading the eBPF object, pinning its maps, attaching and detaching its programs.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use overlay_common::{
    Config, CounterValue, Endpoint, FdbEntry, FdbKey, NeighEntry, NeighKey, Network, Vtep,
    map_names, program_names,
};

use crate::{config::DecapMode, netlink::NetnsGuard};

/// The compiled eBPF object, embedded at build time.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay"))
}

/// Default root under which each node pins its maps, in `<root>/<node>/`.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/overlay";

pub fn default_pin_dir(node: &str) -> PathBuf {
    Path::new(DEFAULT_PIN_ROOT).join(node)
}

/// Typed handles on every map of the dataplane.
pub struct Maps {
    pub config: Array<MapData, Config>,
    pub networks: HashMap<MapData, u32, Network>,
    pub endpoints: HashMap<MapData, u32, Endpoint>,
    pub fdb: HashMap<MapData, FdbKey, FdbEntry>,
    pub neigh: HashMap<MapData, NeighKey, NeighEntry>,
    pub vteps: HashMap<MapData, [u8; 4], Vtep>,
    pub stats: PerCpuArray<MapData, CounterValue>,
    pub endpoint_devs: DevMapHash<MapData>,
}

impl Maps {
    /// Takes the maps out of a freshly loaded object and pins each under `pin_dir`
    /// (created if missing). On failure, removes the pins it made.
    pub fn take_and_pin(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<Maps> {
        fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
        let mut take = |name: &str| -> Result<Map> {
            let map = ebpf
                .take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))?;
            let path = pin_dir.join(name);
            map.pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
            Ok(map)
        };
        let maps = (|| -> Result<Maps> {
            Ok(Maps {
                config: Array::try_from(take(map_names::CONFIG)?)?,
                networks: HashMap::try_from(take(map_names::NETWORKS)?)?,
                endpoints: HashMap::try_from(take(map_names::ENDPOINTS)?)?,
                fdb: HashMap::try_from(take(map_names::FDB)?)?,
                neigh: HashMap::try_from(take(map_names::NEIGH)?)?,
                vteps: HashMap::try_from(take(map_names::VTEPS)?)?,
                stats: PerCpuArray::try_from(take(map_names::STATS)?)?,
                endpoint_devs: DevMapHash::try_from(take(map_names::ENDPOINT_DEVS)?)?,
            })
        })();
        if maps.is_err() {
            let _ = unpin(pin_dir);
        }
        maps
    }

    /// Opens the maps a running (or kept) agent pinned under `dir`.
    pub fn from_pins(dir: &Path) -> Result<Maps> {
        if !dir.is_dir() {
            bail!(
                "no pinned maps at {} (is an agent running for this node? is /sys/fs/bpf mounted?)",
                dir.display()
            );
        }
        let open = |name: &str| {
            let path = dir.join(name);
            MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))
        };
        Ok(Maps {
            config: Array::try_from(Map::Array(open(map_names::CONFIG)?))?,
            networks: HashMap::try_from(Map::HashMap(open(map_names::NETWORKS)?))?,
            endpoints: HashMap::try_from(Map::HashMap(open(map_names::ENDPOINTS)?))?,
            fdb: HashMap::try_from(Map::HashMap(open(map_names::FDB)?))?,
            neigh: HashMap::try_from(Map::HashMap(open(map_names::NEIGH)?))?,
            vteps: HashMap::try_from(Map::HashMap(open(map_names::VTEPS)?))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(open(map_names::STATS)?))?,
            endpoint_devs: DevMapHash::try_from(Map::DevMapHash(open(map_names::ENDPOINT_DEVS)?))?,
        })
    }
}

/// Removes the pins of every map under `dir`, then `dir` itself if it is empty.
pub fn unpin(dir: &Path) -> Result<()> {
    for name in map_names::ALL {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("unpinning {}", dir.join(name).display()));
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => {
            // The shared default root goes too once the last node has left it.
            if dir.parent() == Some(Path::new(DEFAULT_PIN_ROOT)) {
                let _ = fs::remove_dir(DEFAULT_PIN_ROOT);
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        // Someone else's files: leave them.
        Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// A program attachment this agent made, so it can undo exactly that.
enum Attachment {
    EndpointIngress(SchedClassifierLinkId),
    UnderlayTc(SchedClassifierLinkId),
    UnderlayXdp(XdpLinkId),
    PeerXdp(XdpLinkId),
}

/// The loaded programs and what they are attached to.
pub struct Programs {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
}

impl Programs {
    /// Loads every program into the kernel (the verifier runs here).
    pub fn load(mut ebpf: Ebpf) -> Result<Programs> {
        for name in [
            program_names::ENDPOINT_INGRESS,
            program_names::UNDERLAY_INGRESS_TC,
        ] {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name}"))?;
        }
        for name in [
            program_names::UNDERLAY_XDP,
            program_names::ENDPOINT_PEER_XDP,
        ] {
            xdp(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading program {name}"))?;
        }
        Ok(Programs {
            ebpf,
            attachments: Vec::new(),
        })
    }

    pub fn attach_endpoint(&mut self, host_ifname: &str) -> Result<()> {
        let id = classifier(&mut self.ebpf, program_names::ENDPOINT_INGRESS)?
            .attach(host_ifname, TcAttachType::Ingress)
            .with_context(|| {
                format!(
                    "attaching {} to {host_ifname}",
                    program_names::ENDPOINT_INGRESS
                )
            })?;
        self.attachments.push(Attachment::EndpointIngress(id));
        Ok(())
    }

    /// Attaches the XDP_PASS program to a container-side veth, from inside the
    /// container's namespace, so XDP-redirected frames are accepted there.
    pub fn attach_peer_xdp(&mut self, netns: &Path, ifname: &str) -> Result<()> {
        let _inside = NetnsGuard::enter(netns)?;
        let id = xdp(&mut self.ebpf, program_names::ENDPOINT_PEER_XDP)?
            .attach(ifname, XdpMode::Default)
            .with_context(|| {
                format!(
                    "attaching {} to {ifname} in {}",
                    program_names::ENDPOINT_PEER_XDP,
                    netns.display()
                )
            })?;
        self.attachments.push(Attachment::PeerXdp(id));
        Ok(())
    }

    pub fn attach_underlay(&mut self, underlay: &str, mode: DecapMode) -> Result<()> {
        let attachment = match mode {
            DecapMode::Tc => Attachment::UnderlayTc(
                classifier(&mut self.ebpf, program_names::UNDERLAY_INGRESS_TC)?
                    .attach(underlay, TcAttachType::Ingress)
                    .with_context(|| format!("attaching TC decap to {underlay}"))?,
            ),
            DecapMode::Xdp => Attachment::UnderlayXdp(
                xdp(&mut self.ebpf, program_names::UNDERLAY_XDP)?
                    .attach(underlay, XdpMode::Default)
                    .with_context(|| format!("attaching XDP decap to {underlay}"))?,
            ),
        };
        self.attachments.push(attachment);
        Ok(())
    }

    /// Detaches everything, newest first. Links whose interface is already gone
    /// detach as no-ops. Returns the first error after trying them all.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first_err = None;
        while let Some(attachment) = self.attachments.pop() {
            let result = match attachment {
                Attachment::EndpointIngress(id) => {
                    classifier(&mut self.ebpf, program_names::ENDPOINT_INGRESS)
                        .and_then(|p| Ok(p.detach(id)?))
                }
                Attachment::UnderlayTc(id) => {
                    classifier(&mut self.ebpf, program_names::UNDERLAY_INGRESS_TC)
                        .and_then(|p| Ok(p.detach(id)?))
                }
                Attachment::UnderlayXdp(id) => {
                    xdp(&mut self.ebpf, program_names::UNDERLAY_XDP).and_then(|p| Ok(p.detach(id)?))
                }
                Attachment::PeerXdp(id) => xdp(&mut self.ebpf, program_names::ENDPOINT_PEER_XDP)
                    .and_then(|p| Ok(p.detach(id)?)),
            };
            if let Err(e) = result {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The underlying object, for tests that run programs directly.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?;
    Ok(program.try_into()?)
}

pub fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?;
    Ok(program.try_into()?)
}
