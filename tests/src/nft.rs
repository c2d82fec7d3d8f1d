//! Faults injected with nftables inside a test's own namespaces (the kernel has
//! no netem): loss with `numgen random`, partitions as drops on a switch's
//! bridge ports. Each fault is one table, removed when its guard drops.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};

use crate::netns::netns_path;

/// One nftables table in one namespace; deleted on drop.
pub struct NftTable {
    ns: String,
    family: &'static str,
    name: String,
}

impl NftTable {
    /// Loads `table FAMILY NAME { BODY }` into namespace `ns`.
    pub fn create(ns: &str, family: &'static str, name: &str, body: &str) -> Result<NftTable> {
        nft(ns, &format!("table {family} {name} {{\n{body}\n}}\n"))
            .with_context(|| format!("loading nftables table {family} {name} in {ns}"))?;
        Ok(NftTable {
            ns: ns.to_owned(),
            family,
            name: name.to_owned(),
        })
    }

    /// Drops `percent`% of the UDP datagrams to `port` entering `ns`, at random
    /// (`numgen random`), each datagram on its own.
    pub fn udp_loss(ns: &str, port: u16, percent: u32) -> Result<NftTable> {
        NftTable::create(
            ns,
            "inet",
            "fault_loss",
            &format!(
                "chain input {{\ntype filter hook input priority -10\n\
                 udp dport {port} numgen random mod 100 < {percent} counter drop\n}}"
            ),
        )
    }

    /// Cuts a bridge in `switch_ns` into two sides: nothing is forwarded from a
    /// port of one side to a port of the other (frames within a side pass).
    pub fn partition(switch_ns: &str, side_a: &[&str], side_b: &[&str]) -> Result<NftTable> {
        let set = |ports: &[&str]| {
            ports
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (a, b) = (set(side_a), set(side_b));
        NftTable::create(
            switch_ns,
            "bridge",
            "fault_partition",
            &format!(
                "chain forward {{\ntype filter hook forward priority 0\n\
                 iifname {{ {a} }} oifname {{ {b} }} counter drop\n\
                 iifname {{ {b} }} oifname {{ {a} }} counter drop\n}}"
            ),
        )
    }

    /// Drops every IPv4 packet entering `ns` from `peer`: a one-way cut.
    pub fn drop_from(ns: &str, peer: Ipv4Addr) -> Result<NftTable> {
        NftTable::create(
            ns,
            "ip",
            "fault_drop",
            &format!(
                "chain input {{\ntype filter hook prerouting priority -300\n\
                 ip saddr {peer} counter drop\n}}"
            ),
        )
    }

    /// Packets the table's rules have dropped so far (their counters summed).
    pub fn dropped(&self) -> Result<u64> {
        let out = nft_output(&self.ns, &["list", "table", self.family, &self.name])?;
        Ok(out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "packets")
            .filter_map(|w| w[1].parse::<u64>().ok())
            .sum())
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = nft_output(&self.ns, &["delete", "table", self.family, &self.name]);
    }
}

fn in_ns(ns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(ns).display()))
        .arg("nft");
    cmd
}

fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = in_ns(ns)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install nftables: `cargo xtask test` does)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "nft -f: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn nft_output(ns: &str, args: &[&str]) -> Result<String> {
    let out = in_ns(ns).args(args).output().context("running nft")?;
    ensure!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
