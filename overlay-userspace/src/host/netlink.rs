//! Netlink: interfaces, addresses and veth pairs, over rtnetlink.
//!
//! A netlink socket belongs to the namespace its thread was in when it was
//! created. [`Netlink::in_netns`] uses that: it enters the namespace, opens the
//! socket, and comes back before anything else runs on this thread.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{
        AfSpecInet6, AfSpecUnspec, InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute,
        LinkFlag, LinkInfo as NlLinkInfo, LinkMessage,
    },
};
use rtnetlink::Handle;

use super::netns::{self, ConfDirs, NetnsGuard};

#[derive(Clone, Debug)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// A veth pair end (rather than a NIC).
    pub is_veth: bool,
}

/// An rtnetlink connection bound to one network namespace, and for the
/// agent's own namespace its per-interface sysctl directories.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    conf: Option<Arc<ConfDirs>>,
}

impl Netlink {
    /// A connection in the caller's own namespace. Needs a tokio runtime.
    pub fn current() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle, conf: None })
    }

    /// [`Netlink::current`], and the caller's namespace's per-interface sysctl
    /// directories held open (see [`ConfDirs`]): for the namespace where every
    /// endpoint's host end is set up.
    pub fn current_with_conf_dirs() -> Result<Netlink> {
        Ok(Netlink {
            conf: Some(Arc::new(ConfDirs::open()?)),
            ..Netlink::current()?
        })
    }

    /// Turns IPv6 off on an interface of this connection's namespace, which
    /// must be the calling thread's (see [`netns::disable_ipv6`]).
    pub fn disable_ipv6(&self, ifname: &str) -> Result<()> {
        match &self.conf {
            Some(conf) => conf.disable_ipv6(ifname),
            None => netns::disable_ipv6(ifname),
        }
    }

    /// Turns IPv4 forwarding on for packets arriving on an interface of this
    /// connection's namespace, which must be the calling thread's (see
    /// [`netns::enable_forwarding`]).
    pub fn enable_forwarding(&self, ifname: &str) -> Result<()> {
        match &self.conf {
            Some(conf) => conf.enable_forwarding(ifname),
            None => netns::enable_forwarding(ifname),
        }
    }

    /// A connection inside the namespace at `path`.
    pub fn in_netns(path: &Path) -> Result<Netlink> {
        let _inside = NetnsGuard::enter(path)?;
        Netlink::current()
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
        }
    }

    /// The IPv4 addresses of an interface, in the kernel's order (primary first).
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Addr>> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut found = Vec::new();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            for attr in msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                    found.push(ip);
                }
            }
        }
        Ok(found)
    }

    /// Creates a veth pair; returns the index of `name`.
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<u32> {
        self.handle
            .link()
            .add()
            .veth(name.to_owned(), peer.to_owned())
            .execute()
            .await
            .with_context(|| format!("creating veth pair {name}/{peer}"))?;
        self.link_by_name(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| anyhow!("veth {name} vanished right after creation"))
    }

    /// Creates a veth pair whose `peer` end is born in the namespace `netns`
    /// with its MAC and MTU (moving an interface there afterwards costs an RCU
    /// grace period); returns the index of `name`, which stays here, down.
    pub async fn add_veth_into(
        &self,
        name: &str,
        peer: &str,
        netns: &OwnedFd,
        peer_mac: [u8; 6],
        mtu: u32,
    ) -> Result<u32> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.extend([
            LinkAttribute::IfName(peer.to_owned()),
            LinkAttribute::NetNsFd(netns.as_raw_fd()),
            LinkAttribute::Address(peer_mac.to_vec()),
            LinkAttribute::Mtu(mtu),
        ]);
        let mut request = self.handle.link().add();
        request.message_mut().attributes.extend([
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::LinkInfo(vec![
                NlLinkInfo::Kind(InfoKind::Veth),
                NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ]);
        request
            .execute()
            .await
            .with_context(|| format!("creating veth pair {name}/{peer} (into the namespace)"))?;
        self.link_by_name(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| anyhow!("veth {name} vanished right after creation"))
    }

    /// Sets an interface's MAC and MTU, leaving it up or down as it is.
    pub async fn set_mac_mtu(&self, index: u32, mac: [u8; 6], mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(index)
            .address(mac.to_vec())
            .mtu(mtu)
            .execute()
            .await
            .context("setting MAC and MTU")
    }

    pub async fn set_mtu_up(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(index)
            .mtu(mtu)
            .execute()
            .await
            .context("setting MTU")?;
        self.set_up(index).await
    }

    /// Sets `addrgenmode none` (IFLA_INET6_ADDR_GEN_MODE =
    /// IN6_ADDR_GEN_MODE_NONE): the interface makes no IPv6 address of its
    /// own when it comes up, so it sends nothing of IPv6 (no DAD, no router
    /// solicitation) though IPv6 stays on. Before it is up: a link-local
    /// made at up stays. A move to another namespace resets it. A kernel
    /// without IPv6 has nothing to set.
    pub async fn set_no_ipv6_addresses(&self, index: u32) -> Result<()> {
        /// `IN6_ADDR_GEN_MODE_NONE` of `linux/if_link.h`.
        const IN6_ADDR_GEN_MODE_NONE: u8 = 1;
        let mut request = self.handle.link().set(index);
        request
            .message_mut()
            .attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(IN6_ADDR_GEN_MODE_NONE)],
            )]));
        match request.execute().await {
            Ok(()) => Ok(()),
            // A kernel without IPv6 knows no AF_INET6 settings (validate_linkmsg
            // refuses them): there is nothing to silence.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EAFNOSUPPORT => Ok(()),
            Err(e) => Err(e).context("setting IPv6 address generation to none"),
        }
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(index)
            .up()
            .execute()
            .await
            .context("setting link up")
    }

    pub async fn add_ipv4(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .execute()
            .await
            .with_context(|| format!("adding address {ip}/{prefix_len}"))
    }

    /// Adds an address; one the interface has already is fine (adoption).
    pub async fn ensure_ipv4(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .execute()
            .await
        {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            other => other.with_context(|| format!("adding address {ip}/{prefix_len}")),
        }
    }

    /// Routes `dst`/32 out of interface `index`, from source address `src`
    /// (replacing a route to `dst` already there).
    pub async fn replace_host_route(&self, dst: Ipv4Addr, index: u32, src: Ipv4Addr) -> Result<()> {
        self.handle
            .route()
            .add()
            .v4()
            .replace()
            .destination_prefix(dst, 32)
            .output_interface(index)
            .pref_source(src)
            .scope(netlink_packet_route::route::RouteScope::Link)
            .execute()
            .await
            .with_context(|| format!("routing {dst}/32"))
    }

    /// The default route through `gateway` (on-link in the subnet the caller
    /// has an address in).
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        self.handle
            .route()
            .add()
            .v4()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gateway)
            .execute()
            .await
            .with_context(|| format!("adding the default route via {gateway}"))
    }

    /// Creates `name`, up, a kernel VXLAN device on UDP `port` that is
    /// `external` with VNI filtering and no VNI in its filter: it has the port's
    /// tunnel socket, and its receive path accepts nothing. `Ok(false)`: the port
    /// already has a socket this device cannot share (`EADDRINUSE`), and nothing
    /// was created.
    pub async fn add_vxlan_socket_holder(&self, name: &str, port: u16) -> Result<bool> {
        let mut request = self.handle.link().add();
        let message = request.message_mut();
        message.header.flags.push(LinkFlag::Up);
        message.header.change_mask.push(LinkFlag::Up);
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::Vxlan),
            NlLinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Port(port),
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Vnifilter(true),
                InfoVxlan::Learning(false),
            ])),
        ]));
        // Created up in one request: if the socket cannot be bound the kernel
        // unregisters the device again, and nothing is left.
        match request.execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRINUSE => {
                Ok(false)
            }
            Err(e) => Err(e).with_context(|| format!("creating the VXLAN device {name}")),
        }
    }

    /// Deletes an interface; an interface that is already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(e).context("deleting interface"),
        }
    }
}

fn link_info(msg: LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        name: String::new(),
        index: msg.header.index,
        mtu: 0,
        mac: None,
        is_veth: false,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n,
            LinkAttribute::Mtu(m) => info.mtu = m,
            LinkAttribute::Address(a) if a.len() == 6 => {
                info.mac = Some(a.try_into().expect("length checked"));
            }
            LinkAttribute::LinkInfo(infos) => {
                info.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, NlLinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    info
}
