//! Bounds-checked access to packet headers, shared by the TC and XDP programs.
//!
//! Offsets are fixed: the outer IPv4 header must have no options (IHL 5), as every
//! VXLAN sender we interoperate with emits, so each header lives at a constant offset
//! and the verifier sees one bounds check per access.

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{arp::ArpHdr, eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};

pub const ETH_P_IP: u16 = 0x0800_u16.to_be();
pub const ETH_P_ARP: u16 = 0x0806_u16.to_be();
pub const IPPROTO_UDP: u8 = 17;
/// Version 4, IHL 5.
pub const IPV4_VIHL_NO_OPTIONS: u8 = 0x45;
/// The VXLAN header's I flag: the VNI field is valid (RFC 7348).
pub const VXLAN_FLAG_I: u8 = 0x08;

pub const ETH_LEN: usize = EthHdr::LEN;
pub const OUTER_IP_OFF: usize = ETH_LEN;
pub const OUTER_UDP_OFF: usize = OUTER_IP_OFF + Ipv4Hdr::LEN;
pub const VXLAN_OFF: usize = OUTER_UDP_OFF + UdpHdr::LEN;
/// Where the inner Ethernet header starts in a VXLAN frame (= 50, the overhead).
pub const INNER_ETH_OFF: usize = VXLAN_OFF + VxlanHdr::LEN;
pub const INNER_L3_OFF: usize = INNER_ETH_OFF + ETH_LEN;

/// Anything whose packet bytes lie between `data` and `data_end`.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;

    /// A pointer to a `T` at `offset`, if the whole `T` is inside the packet.
    #[inline(always)]
    fn ptr_at<T>(&self, offset: usize) -> Option<*mut T> {
        let start = self.data() + offset;
        if start + size_of::<T>() > self.data_end() {
            return None;
        }
        Some(start as *mut T)
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

/// Makes sure the first `len` bytes of an skb are in its linear area, so that
/// direct packet access can reach them. Cheap when they already are.
#[inline(always)]
pub fn tc_pull(ctx: &TcContext, len: usize) {
    if ctx.data() + len > ctx.data_end() {
        let _ = ctx.pull_data(len as u32);
    }
}

#[inline(always)]
pub fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

pub type Eth = EthHdr;
pub type Ipv4 = Ipv4Hdr;
pub type Udp = UdpHdr;
pub type Vxlan = VxlanHdr;
pub type Arp = ArpHdr;
