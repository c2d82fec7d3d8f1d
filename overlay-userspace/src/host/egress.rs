//! The way out of the overlay through this host: the agent's own nftables
//! table, `ip overlay-<node>`, and nothing in anyone else's.
//!
//! A container's frame to its gateway's MAC is handed to the host stack by the
//! endpoint program (every other frame stays on the eBPF path and never meets
//! netfilter). The host routes it like any forwarded packet, and this table:
//!
//! - masquerades what leaves a network with a way out for a destination outside
//!   the overlay, to the address of the interface it leaves by (the node's
//!   underlay address, for the default route);
//! - drops what would go from one overlay network to another through the host
//!   (the networks are isolated, as Docker's are), what an internal network
//!   sends (no way out), and what arrives from outside for a container without
//!   belonging to a connection it opened (or a published port's DNAT).
//!
//! The table is replaced whole in one nft transaction, so applying it again
//! changes nothing and a table a previous agent left (`--keep`, or killed) is
//! taken over without duplicates.

use std::{
    fmt::Write as _,
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::docker_user::DockerUser;
use crate::{
    desired::{EgressNets, Published},
    model::Subnet,
};

/// The way out on this node: the agent's nftables table, and its rules in a
/// dockerd's `DOCKER-USER` chain where there is one ([`super::docker_user`]).
pub struct WayOut {
    name: String,
    /// The script last applied, to skip re-applying an unchanged table.
    applied: Option<String>,
    docker: DockerUser,
}

impl WayOut {
    pub fn new(node: &str) -> WayOut {
        WayOut {
            name: table_name(node),
            applied: None,
            docker: DockerUser::new(node),
        }
    }

    pub fn table(&self) -> &str {
        &self.name
    }

    /// Brings the table (and `DOCKER-USER`) to what `nets` implies; `force`
    /// re-applies an unchanged table too and looks for a dockerd's chain again
    /// (the periodic reconcile: it heals edits made by hand and meets a dockerd
    /// that started later). What changed, in words, if anything.
    pub fn apply(&mut self, nets: &EgressNets, force: bool) -> Result<Option<String>> {
        let script = render(&self.name, nets);
        if !force && self.applied.as_deref() == Some(script.as_str()) {
            return Ok(None);
        }
        let first = self.applied.is_none();
        nft(&script).with_context(|| format!("writing nftables table ip {}", self.name))?;
        self.applied = Some(script);
        let docker = self
            .docker
            .apply(&nets.way_out)
            .context("updating dockerd's DOCKER-USER chain")?;
        Ok(match (first, docker) {
            (true, false) => Some(format!("nftables table ip {} in place", self.name)),
            (_, true) => Some(format!(
                "nftables table ip {} in place; DOCKER-USER accepts {:?} for it",
                self.name,
                nets.way_out
                    .iter()
                    .map(Subnet::to_string)
                    .collect::<Vec<_>>()
            )),
            (false, false) => None,
        })
    }

    /// Deletes the table and the agent's `DOCKER-USER` rules; what is not there
    /// is fine. Tries both; the first error.
    pub fn remove(&mut self) -> Result<()> {
        self.applied = None;
        let name = &self.name;
        let table = nft(&format!("table ip {name} {{}}\ndelete table ip {name}\n"))
            .with_context(|| format!("deleting nftables table ip {name}"));
        let docker = self
            .docker
            .remove()
            .context("removing the agent's rules from DOCKER-USER");
        table.and(docker)
    }
}

/// `overlay-<node>`: node names are plain (letters, digits, `-_.`), which nft
/// takes in an identifier after a letter.
pub fn table_name(node: &str) -> String {
    format!("overlay-{node}")
}

/// The whole table as an nft script that replaces any table of that name.
pub fn render(name: &str, nets: &EgressNets) -> String {
    let mut s = String::new();
    // Creating it first makes the delete succeed when it is not there yet.
    let _ = writeln!(s, "table ip {name} {{}}\ndelete table ip {name}");
    let _ = writeln!(s, "table ip {name} {{");
    set(&mut s, "overlay", &nets.overlay);
    set(&mut s, "way_out", &nets.way_out);
    s.push_str(concat!(
        "\tchain forward {\n",
        "\t\ttype filter hook forward priority filter; policy accept;\n",
        // Between overlay endpoints only the dataplane switches: through the
        // host, networks would reach each other.
        "\t\tip saddr @overlay ip daddr @overlay drop\n",
        "\t\tip saddr @overlay ip saddr != @way_out drop\n",
        "\t\tip daddr @overlay ct status dnat accept\n",
        "\t\tip daddr @overlay ct state established,related accept\n",
        "\t\tip daddr @overlay drop\n",
        "\t}\n",
        "\tchain postrouting {\n",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
        "\t\tip saddr @way_out ip daddr != @overlay masquerade\n",
        "\t}\n",
    ));
    if !nets.published.is_empty() {
        published(&mut s, &nets.published);
    }
    s.push_str("}\n");
    s
}

/// Published ports: DNAT on the way in (`prerouting`) and for the host's own
/// connections (`output`, loopback aside: a DNATed 127.0.0.1 would be a
/// martian), to any of the node's addresses unless the port names one. The
/// forward chain accepts what was DNATed, and conntrack takes the replies
/// back.
fn published(s: &mut String, ports: &[Published]) {
    // `dstnat` names -100 on prerouting only; output takes the number.
    for (hook, priority, local_only) in [
        ("prerouting", "dstnat", ""),
        ("output", "-100", " ip daddr != 127.0.0.0/8"),
    ] {
        let _ = writeln!(
            s,
            "\tchain {hook} {{\n\t\ttype nat hook {hook} priority {priority}; policy accept;"
        );
        for p in ports {
            let to = match p.port.host_ip {
                Some(ip) => format!("ip daddr {ip}"),
                None => format!("fib daddr type local{local_only}"),
            };
            let _ = writeln!(
                s,
                "\t\t{to} {} dport {} dnat to {}:{}",
                p.port.protocol, p.port.host_port, p.ip, p.port.container_port
            );
        }
        s.push_str("\t}\n");
    }
}

fn set(s: &mut String, name: &str, subnets: &[Subnet]) {
    let _ = write!(s, "\tset {name} {{\n\t\ttype ipv4_addr; flags interval;\n");
    if !subnets.is_empty() {
        let list: Vec<String> = subnets.iter().map(Subnet::to_string).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
    s.push_str("\t}\n");
}

/// Runs `nft -f -` on `script`: one atomic transaction.
fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (install nftables: apt-get install nftables)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .context("writing to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{PortMapping, Protocol};

    #[test]
    fn the_table_replaces_itself_and_lists_the_subnets() {
        let nets = EgressNets {
            overlay: vec![
                "10.0.0.0/24".parse().unwrap(),
                "10.9.0.0/24".parse().unwrap(),
            ],
            way_out: vec!["10.0.0.0/24".parse().unwrap()],
            published: Vec::new(),
        };
        let s = render("overlay-n1", &nets);
        assert!(s.starts_with("table ip overlay-n1 {}\ndelete table ip overlay-n1\n"));
        assert!(s.contains("set overlay {\n\t\ttype ipv4_addr; flags interval;\n\t\telements = { 10.0.0.0/24, 10.9.0.0/24 }"));
        assert!(s.contains("ip saddr @way_out ip daddr != @overlay masquerade"));
        // An empty set has no elements line, which nft would refuse.
        let empty = render("overlay-n1", &EgressNets::default());
        assert!(!empty.contains("elements"), "{empty}");
        assert!(!s.contains("dnat to"), "no DNAT without published ports");
    }

    #[test]
    fn published_ports_are_dnated_on_the_way_in_and_from_the_host() {
        let port = |host_ip, host_port| PortMapping {
            protocol: Protocol::Tcp,
            host_ip,
            host_port,
            container_port: 80,
        };
        let nets = EgressNets {
            published: vec![
                Published {
                    port: port(None, 8080),
                    ip: Ipv4Addr::new(10, 0, 0, 3),
                },
                Published {
                    port: port(Some(Ipv4Addr::new(172, 31, 1, 5)), 8081),
                    ip: Ipv4Addr::new(10, 0, 0, 4),
                },
            ],
            ..EgressNets::default()
        };
        let s = render("overlay-n1", &nets);
        assert!(s.contains("chain prerouting {\n\t\ttype nat hook prerouting priority dstnat;"));
        assert!(s.contains("chain output {\n\t\ttype nat hook output priority -100;"));
        assert!(s.contains("\t\tfib daddr type local tcp dport 8080 dnat to 10.0.0.3:80\n"));
        assert!(s.contains(
            "\t\tfib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to 10.0.0.3:80\n"
        ));
        assert_eq!(
            s.matches("ip daddr 172.31.1.5 tcp dport 8081 dnat to 10.0.0.4:80")
                .count(),
            2,
            "{s}"
        );
        assert!(s.trim_end().ends_with('}'));
    }
}
