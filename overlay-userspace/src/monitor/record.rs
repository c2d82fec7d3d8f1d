//! A drop event as `overlay monitor` shows it: the kernel's [`DropEvent`]
//! (reason, interface, the frame's first bytes) decoded into time, addresses,
//! VNI and ports, and the filters a monitor asks for.

use std::{fmt, net::Ipv4Addr};

use overlay_common::{
    Counter, DropEvent, HOOK_ENDPOINT, HOOK_UNDERLAY_TC, HOOK_UNDERLAY_XDP, VXLAN_OVERHEAD,
};
use serde::{Deserialize, Serialize};

use crate::model::Mac;

/// One dropped frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    /// When it was dropped: RFC 3339, UTC, microseconds.
    pub time: String,
    /// The counter it was counted under, e.g. `drop_spoofed_ip`.
    pub reason: String,
    /// The program that dropped it: `endpoint` (a container's frame), `tc` or
    /// `xdp` (a frame from the underlay).
    pub hook: String,
    /// The interface it arrived on, by name (`#N` if not in this namespace).
    pub interface: String,
    pub ifindex: u32,
    /// The network: the sending endpoint's, or the VXLAN header's.
    pub vni: Option<u32>,
    /// The frame's length.
    pub len: u32,
    /// The headers in front of the VXLAN header, for a frame from the underlay.
    pub outer: Option<Headers>,
    /// The container's frame: as sent, or inside the VXLAN header.
    pub inner: Option<Headers>,
}

/// Ethernet, and the IPv4 (or ARP) and port headers behind it, as far as the
/// frame's first bytes reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    pub src_mac: String,
    pub dst_mac: String,
    /// `ipv4`, `arp`, or the EtherType in hex.
    pub protocol: String,
    /// IPv4 source, or the ARP sender's address.
    pub src_ip: Option<Ipv4Addr>,
    /// IPv4 destination, or the ARP target.
    pub dst_ip: Option<Ipv4Addr>,
    /// `udp`, `tcp`, `icmp` or the IP protocol number; `request`/`reply` for ARP.
    pub l4: Option<String>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

/// What decoding needs beyond the event: the node's VXLAN port, the VNI of a
/// local endpoint's interface, and interface names.
pub trait Lookup {
    fn vxlan_port(&self) -> u16;
    fn endpoint_vni(&self, ifindex: u32) -> Option<u32>;
    fn interface(&self, ifindex: u32) -> String;
}

impl DropRecord {
    /// Decodes `event`, dropped at `time` (RFC 3339).
    pub fn decode(event: &DropEvent, time: String, lookup: &impl Lookup) -> DropRecord {
        let sample = &event.sample[..usize::from(event.sample_len).min(event.sample.len())];
        let (hook, vni, outer, inner) = if event.hook == HOOK_ENDPOINT {
            (
                "endpoint",
                lookup.endpoint_vni(event.ifindex),
                None,
                Headers::parse(sample),
            )
        } else {
            let outer = Headers::parse(sample);
            let vxlan = outer
                .as_ref()
                .is_some_and(|o| o.l4.as_deref() == Some("udp"))
                && outer
                    .as_ref()
                    .and_then(|o| o.dst_port)
                    .is_some_and(|p| p == lookup.vxlan_port());
            let vni = sample
                .get(46..49)
                .filter(|_| vxlan)
                .map(|v| u32::from_be_bytes([0, v[0], v[1], v[2]]));
            let inner = sample
                .get(VXLAN_OVERHEAD as usize..)
                .filter(|_| vxlan)
                .and_then(Headers::parse);
            let hook = match event.hook {
                HOOK_UNDERLAY_TC => "tc",
                HOOK_UNDERLAY_XDP => "xdp",
                _ => "unknown",
            };
            (hook, vni, outer, inner)
        };
        DropRecord {
            time,
            reason: Counter::from_index(event.reason).map_or_else(
                || format!("unknown({})", event.reason),
                |c| c.name().to_owned(),
            ),
            hook: hook.to_owned(),
            interface: lookup.interface(event.ifindex),
            ifindex: event.ifindex,
            vni,
            len: event.frame_len,
            outer,
            inner,
        }
    }

    fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        [&self.outer, &self.inner]
            .into_iter()
            .flatten()
            .flat_map(|h| [h.src_ip, h.dst_ip])
            .flatten()
    }
}

impl Headers {
    /// The headers of an Ethernet frame, or `None` if not even Ethernet's fit.
    fn parse(frame: &[u8]) -> Option<Headers> {
        let eth = frame.get(..14)?;
        let mac = |b: &[u8]| Mac(b.try_into().expect("6 bytes")).to_string();
        let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
        let mut h = Headers {
            dst_mac: mac(&eth[0..6]),
            src_mac: mac(&eth[6..12]),
            protocol: format!("0x{ethertype:04x}"),
            ..Headers::default()
        };
        let l3 = &frame[14..];
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        match ethertype {
            0x0800 => {
                h.protocol = "ipv4".into();
                let Some(ipv4) = l3.get(..20) else {
                    return Some(h);
                };
                h.src_ip = Some(ip(&ipv4[12..16]));
                h.dst_ip = Some(ip(&ipv4[16..20]));
                let proto = ipv4[9];
                h.l4 = Some(match proto {
                    1 => "icmp".into(),
                    6 => "tcp".into(),
                    17 => "udp".into(),
                    other => other.to_string(),
                });
                let header_len = usize::from(ipv4[0] & 0x0f) * 4;
                if matches!(proto, 6 | 17)
                    && let Some(ports) = l3.get(header_len..header_len + 4)
                {
                    h.src_port = Some(u16::from_be_bytes([ports[0], ports[1]]));
                    h.dst_port = Some(u16::from_be_bytes([ports[2], ports[3]]));
                }
            }
            0x0806 => {
                h.protocol = "arp".into();
                if let Some(arp) = l3.get(..28) {
                    h.l4 = Some(match u16::from_be_bytes([arp[6], arp[7]]) {
                        1 => "request".into(),
                        2 => "reply".into(),
                        other => other.to_string(),
                    });
                    h.src_ip = Some(ip(&arp[14..18]));
                    h.dst_ip = Some(ip(&arp[24..28]));
                }
            }
            _ => {}
        }
        Some(h)
    }
}

impl fmt::Display for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} > {} {}", self.src_mac, self.dst_mac, self.protocol)?;
        if let (Some(src), Some(dst)) = (self.src_ip, self.dst_ip) {
            match (self.src_port, self.dst_port) {
                (Some(sp), Some(dp)) => write!(f, " {src}:{sp} > {dst}:{dp}")?,
                _ => write!(f, " {src} > {dst}")?,
            }
        }
        if let Some(l4) = &self.l4 {
            write!(f, " {l4}")?;
        }
        Ok(())
    }
}

/// One line: time, reason, interface, VNI, then the outer and inner headers.
impl fmt::Display for DropRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} on {}", self.time, self.reason, self.interface)?;
        if let Some(vni) = self.vni {
            write!(f, " vni {vni}")?;
        }
        write!(f, " len {}", self.len)?;
        if let Some(outer) = &self.outer {
            write!(f, " | outer {outer}")?;
        }
        if let Some(inner) = &self.inner {
            write!(f, " | inner {inner}")?;
        }
        Ok(())
    }
}

/// Which drops a monitor wants: all of them, or those matching every filter
/// given (a reason among `reasons`, the VNI, an address among `ips` anywhere
/// in the headers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub reasons: Vec<String>,
    #[serde(default)]
    pub vni: Option<u32>,
    #[serde(default)]
    pub ips: Vec<Ipv4Addr>,
}

impl Filter {
    pub fn matches(&self, r: &DropRecord) -> bool {
        (self.reasons.is_empty() || self.reasons.contains(&r.reason))
            && self.vni.is_none_or(|v| r.vni == Some(v))
            && (self.ips.is_empty() || r.addresses().any(|ip| self.ips.contains(&ip)))
    }
}

/// A drop reason by name, as `--reason` takes it.
pub fn parse_reason(name: &str) -> Result<String, String> {
    if Counter::ALL.iter().any(|c| c.is_drop() && c.name() == name) {
        return Ok(name.to_owned());
    }
    let known: Vec<&str> = Counter::ALL
        .iter()
        .filter(|c| c.is_drop())
        .map(|c| c.name())
        .collect();
    Err(format!(
        "{name:?} is not a drop reason; the reasons are {}",
        known.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Node;
    impl Lookup for Node {
        fn vxlan_port(&self) -> u16 {
            4789
        }
        fn endpoint_vni(&self, ifindex: u32) -> Option<u32> {
            (ifindex == 7).then_some(4097)
        }
        fn interface(&self, ifindex: u32) -> String {
            format!("if{ifindex}")
        }
    }

    fn event(hook: u8, reason: Counter, ifindex: u32, frame: &[u8]) -> DropEvent {
        let mut e: DropEvent = bytemuck::Zeroable::zeroed();
        e.hook = hook;
        e.reason = reason as u32;
        e.ifindex = ifindex;
        e.frame_len = frame.len() as u32;
        let n = frame.len().min(e.sample.len());
        e.sample[..n].copy_from_slice(&frame[..n]);
        e.sample_len = n as u16;
        e
    }

    fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        [&dst[..], &src[..], &ethertype.to_be_bytes(), payload].concat()
    }

    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    const C1: [u8; 6] = [2, 0x42, 10, 0, 0, 3];
    const C2: [u8; 6] = [2, 0x42, 10, 0, 0, 4];

    #[test]
    fn a_containers_frame_shows_its_addresses_ports_and_network() {
        let frame = eth(
            C2,
            C1,
            0x0800,
            &udp4([10, 0, 0, 66], [10, 0, 0, 4], 40000, 7777, b"x"),
        );
        let r = DropRecord::decode(
            &event(HOOK_ENDPOINT, Counter::DropSpoofedIp, 7, &frame),
            "t".into(),
            &Node,
        );
        assert_eq!(r.reason, "drop_spoofed_ip");
        assert_eq!(
            (r.hook.as_str(), r.interface.as_str(), r.vni),
            ("endpoint", "if7", Some(4097))
        );
        assert_eq!(r.outer, None);
        let inner = r.inner.clone().unwrap();
        assert_eq!(inner.src_mac, "02:42:0a:00:00:03");
        assert_eq!(inner.src_ip, Some(Ipv4Addr::new(10, 0, 0, 66)));
        assert_eq!((inner.src_port, inner.dst_port), (Some(40000), Some(7777)));
        assert_eq!(
            r.to_string(),
            "t drop_spoofed_ip on if7 vni 4097 len 43 | inner 02:42:0a:00:00:03 > 02:42:0a:00:00:04 ipv4 10.0.0.66:40000 > 10.0.0.4:7777 udp"
        );
    }

    #[test]
    fn a_vxlan_frame_shows_outer_and_inner_headers_and_its_vni() {
        let inner = eth(
            C1,
            C2,
            0x0800,
            &udp4([10, 0, 0, 4], [10, 0, 0, 3], 1, 2, b"x"),
        );
        let vxlan = [&[0x08, 0, 0, 0, 0, 0x10, 0x01, 0][..], &inner].concat();
        let frame = eth(
            [2, 0, 0, 0, 0, 5],
            [2, 0, 0, 0, 0, 1],
            0x0800,
            &udp4([10, 9, 9, 9], [172, 31, 1, 5], 50000, 4789, &vxlan),
        );
        let r = DropRecord::decode(
            &event(HOOK_UNDERLAY_XDP, Counter::DropUnknownVtep, 2, &frame),
            "t".into(),
            &Node,
        );
        assert_eq!((r.hook.as_str(), r.vni), ("xdp", Some(4097)));
        let outer = r.outer.clone().unwrap();
        assert_eq!(outer.src_ip, Some(Ipv4Addr::new(10, 9, 9, 9)));
        assert_eq!(outer.dst_port, Some(4789));
        assert_eq!(
            r.inner.clone().unwrap().dst_ip,
            Some(Ipv4Addr::new(10, 0, 0, 3))
        );
        assert!(
            Filter {
                ips: vec![Ipv4Addr::new(10, 9, 9, 9)],
                ..Filter::default()
            }
            .matches(&r)
        );
        assert!(
            Filter {
                vni: Some(4097),
                ..Filter::default()
            }
            .matches(&r)
        );
        assert!(
            !Filter {
                vni: Some(4098),
                ..Filter::default()
            }
            .matches(&r)
        );
        assert!(
            !Filter {
                reasons: vec!["drop_no_fdb".into()],
                ..Filter::default()
            }
            .matches(&r)
        );
    }

    #[test]
    fn a_frame_cut_short_shows_what_there_is() {
        let frame = eth(C2, C1, 0x0800, &[0x45, 0]);
        let r = DropRecord::decode(
            &event(HOOK_ENDPOINT, Counter::DropUnsupported, 9, &frame),
            "t".into(),
            &Node,
        );
        let inner = r.inner.unwrap();
        assert_eq!((inner.protocol.as_str(), inner.src_ip), ("ipv4", None));
        assert_eq!(r.vni, None);
        assert!(
            DropRecord::decode(
                &event(HOOK_ENDPOINT, Counter::DropUnsupported, 9, &[1, 2]),
                "t".into(),
                &Node
            )
            .inner
            .is_none()
        );
    }

    #[test]
    fn reasons_are_the_drop_counters() {
        assert!(parse_reason("drop_unknown_vtep").is_ok());
        let err = parse_reason("encap").unwrap_err();
        assert!(err.contains("drop_spoofed_ip"), "{err}");
    }
}
