//! Running a loaded BPF program on a crafted frame (BPF_PROG_TEST_RUN), and the
//! frames to run it on. Shared by the program tests and the benchmark's
//! per-program costs.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};

/// `union bpf_attr`, the BPF_PROG_TEST_RUN member.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// sizeof(struct __sk_buff); `ifindex` is at offset 40.
pub const SKB_CTX_LEN: usize = 192;

/// A `struct __sk_buff` context for a TC program, arriving on `ifindex`.
pub fn skb_ctx(ifindex: u32) -> [u8; SKB_CTX_LEN] {
    let mut ctx = [0u8; SKB_CTX_LEN];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Runs program `fd` on `frame` `repeat` times: (verdict, output frame, mean ns
/// per run as the kernel measured it).
pub fn test_run(
    fd: i32,
    frame: &[u8],
    ctx: Option<&[u8; SKB_CTX_LEN]>,
    repeat: u32,
) -> Result<(u32, Vec<u8>, u32)> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    if let Some(ctx) = ctx {
        attr.ctx_size_in = ctx.len() as u32;
        attr.ctx_in = ctx.as_ptr() as u64;
    }
    // SAFETY: attr points at valid buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval, out, attr.duration))
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The one's-complement checksum of an IPv4 header (0 when a filled-in header verifies).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Fills in the UDP checksum of an [`ipv4_udp`] packet (RFC 768: over the
/// pseudo-header, the UDP header and the payload).
pub fn with_udp_checksum(mut packet: Vec<u8>) -> Vec<u8> {
    let udp_len = packet.len() - 20;
    let mut pseudo = Vec::with_capacity(12 + udp_len + 1);
    pseudo.extend_from_slice(&packet[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&packet[20..]);
    if pseudo.len() % 2 == 1 {
        pseudo.push(0);
    }
    let sum = match ipv4_checksum(&pseudo) {
        // A computed 0 is sent as all ones; 0 means "no checksum".
        0 => 0xffff,
        sum => sum,
    };
    packet[26..28].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// An IPv4 packet (DF, TTL 64, valid header checksum) carrying a UDP datagram
/// without checksum.
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let csum = ipv4_checksum(&p);
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}
