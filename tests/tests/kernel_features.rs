//! The loader's choices on the running kernel, checked against the kernel: the
//! underlay's TC program attaches as a TCX link from 6.6 and as a cls_bpf filter
//! under a clsact qdisc (netlink) before, the choice is logged once per agent,
//! and the kernel shows the attachments the log claims. Endpoints' programs are
//! netlink filters on every kernel (a TCX attach waits a full RCU grace
//! period). `cargo xtask vmtest` runs this on 6.1 and 6.12; `cargo xtask test`
//! on the host's kernel.

mod common;

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{Decap, Overlay};

const TCX_LOG: &str = "the underlay's TC program attaches as a TCX link";
const NETLINK_LOG: &str = "falling back to cls_bpf filters under a clsact qdisc";

/// (major, minor) of the running kernel.
fn kernel_version() -> Result<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut parts = release.trim().split(['.', '-']);
    let mut next = || -> Result<u32> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("kernel release {release:?}"))
    };
    Ok((next()?, next()?))
}

/// The netlink filters in namespace `ns`, as "<dev> <kind>".
fn netlink_tc_filters(ns: &str) -> Result<Vec<String>> {
    Ok(common::netlink_tc_filters(ns)?
        .iter()
        .map(|f| format!("{} {}", f["devname"], f["kind"]))
        .collect())
}

#[test]
fn tc_attach_mode_follows_the_kernel_and_is_logged_once() -> Result<()> {
    let tcx = kernel_version()? >= (6, 6);
    let o = Overlay::start(Decap::Tc)?;
    // node1 has three endpoints (c1, c3, c4), node2 two (c2, c5); each node
    // also has TC decap on its underlay.
    for (node, endpoints) in [(1u8, 3usize), (2, 2)] {
        let log = o.agents[usize::from(node) - 1].stderr();
        let (said, unsaid) = if tcx {
            (TCX_LOG, NETLINK_LOG)
        } else {
            (NETLINK_LOG, TCX_LOG)
        };
        ensure!(
            log.matches(said).count() == 1 && !log.contains(unsaid),
            "node{node}: expected {said:?} logged once, and not {unsaid:?}:\n{log}"
        );
        let filters = netlink_tc_filters(&o.node_ns(node))?;
        let expected = if tcx { endpoints } else { endpoints + 1 };
        ensure!(
            filters.len() == expected,
            "node{node}: expected {expected} netlink TC filters, found {filters:?}"
        );
    }
    Ok(())
}
