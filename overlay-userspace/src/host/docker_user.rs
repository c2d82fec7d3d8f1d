//! Living beside a dockerd: its `DOCKER-USER` chain, Docker's documented place
//! for rules of others, and the only thing of Docker's the agent touches.
//!
//! dockerd (with its default iptables settings) sets the policy of the FORWARD
//! chain in its `filter` table to DROP. Every base chain on a netfilter hook
//! sees each packet and a drop in any of them is final, so an accept in the
//! agent's own table cannot save a forwarded packet from Docker's policy; only
//! a rule in Docker's chain ahead of the policy can. The way out of the overlay
//! is forwarded traffic (masquerading needs the host's conntrack and NAT, which
//! only routed packets meet), so where a `DOCKER-USER` chain exists the agent
//! inserts, for each network with a way out, an ACCEPT from and to its subnet,
//! marked with the comment `overlay-<node>`. They only keep Docker from
//! dropping: what is allowed is decided by the agent's own table, whose drops
//! still apply. They are removed on exit (unless `--keep`), and checked again
//! at every reconcile, since dockerd may start after the agent.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::model::Subnet;

const CHAIN: &str = "DOCKER-USER";

pub struct DockerUser {
    comment: String,
}

impl DockerUser {
    pub fn new(node: &str) -> DockerUser {
        DockerUser {
            comment: super::egress::table_name(node),
        }
    }

    /// Makes the agent's rules in `DOCKER-USER` those for `way_out`, if this
    /// namespace has that chain (a dockerd runs, or ran, here). Whether any
    /// rule changed.
    pub fn apply(&self, way_out: &[Subnet]) -> Result<bool> {
        let Some(present) = self.rules()? else {
            return Ok(false);
        };
        let wanted: Vec<Vec<String>> = way_out
            .iter()
            .flat_map(|s| [self.rule("-s", *s), self.rule("-d", *s)])
            .collect();
        let mut changed = false;
        for stale in present.iter().filter(|r| !wanted.contains(r)) {
            iptables(&["-D", CHAIN], stale)?;
            changed = true;
        }
        for missing in wanted.iter().filter(|r| !present.contains(r)) {
            iptables(&["-I", CHAIN, "1"], missing)?;
            changed = true;
        }
        Ok(changed)
    }

    /// Removes the agent's rules; a namespace without the chain has none.
    pub fn remove(&self) -> Result<()> {
        self.apply(&[]).map(|_| ())
    }

    fn rule(&self, direction: &str, subnet: Subnet) -> Vec<String> {
        [
            direction,
            &subnet.to_string(),
            "-m",
            "comment",
            "--comment",
            &self.comment,
            "-j",
            "ACCEPT",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The agent's rules in the chain, as `iptables -S` prints them (after
    /// `-A DOCKER-USER`); `None` if there is no such chain, or no iptables.
    fn rules(&self) -> Result<Option<Vec<Vec<String>>>> {
        let out = match Command::new("iptables").args(["-w", "-S", CHAIN]).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("running iptables"),
        };
        if !out.status.success() {
            return Ok(None);
        }
        let ours = format!("--comment {}", self.comment);
        Ok(Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(&ours))
                .filter_map(|l| l.strip_prefix(&format!("-A {CHAIN} ")))
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
                .collect(),
        ))
    }
}

/// `iptables -w COMMAND RULE…`.
fn iptables(command: &[&str], rule: &[String]) -> Result<()> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(command)
        .args(rule)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {} {}: {}",
            command.join(" "),
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
