//! The agent's log: `--log-format json` gives one JSON object per line, and
//! one line per cluster event with its fields (a node joins, a node dies, a
//! network is created or removed, a conflict is refused); the programs' rare
//! events and a traced flow's decisions arrive in it through aya-log.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    Agent, Cluster, ClusterFile, Decap, NetworkSection, Overlay, overlay_binary, ping, scaled,
    scenario::{C1, C2, UBER_NET},
    unique_prefix, wait_until,
};
use overlay_userspace::dataplane::maps::Maps;
use serde_json::Value;

/// Every line of `agent`'s log, parsed; an error names a line that is not JSON.
fn json_lines(agent: &Agent) -> Result<Vec<Value>> {
    agent
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a JSON line: {l}")))
        .collect()
}

/// The log lines of `agent` with `event` set to `name`.
fn events(agent: &Agent, name: &str) -> Result<Vec<Value>> {
    Ok(json_lines(agent)?
        .into_iter()
        .filter(|l| l["event"] == name)
        .collect())
}

fn wait_for_event(agent: &Agent, name: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
    let mut found = None;
    wait_until(scaled(Duration::from_secs(15)), name, || {
        found = events(agent, name)?.into_iter().find(&check);
        Ok(found.is_some())
    })
    .with_context(|| format!("the log so far:\n{}", agent.stderr()))?;
    Ok(found.expect("checked"))
}

#[test]
fn json_logs_carry_one_line_per_cluster_event() -> Result<()> {
    let mut c = Cluster::create(&unique_prefix("lj"), 3)?;
    let with_uber = |c: &Cluster, i| ClusterFile {
        networks: vec![UBER_NET.section()],
        ..c.node_file(i)
    };
    let json = ["--log-format", "json"];
    c.start_agent(1, &with_uber(&c, 1), &json)?;
    c.start_agent(2, &with_uber(&c, 2), &json)?;
    let n1 = &c.agents[&1];
    let joined = wait_for_event(n1, "node_joined", |e| e["node"] == c.node_name(2))?;
    ensure!(joined["level"] == "INFO", "{joined}");
    ensure!(joined["vtep"] == "172.30.0.12", "{joined}");
    ensure!(joined["gossip"] == "172.30.0.12:7946", "{joined}");
    ensure!(joined["generation"].is_u64(), "{joined}");
    ensure!(
        joined["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("node {} joined", c.node_name(2)))),
        "{joined}"
    );
    ensure!(
        events(n1, "network_created")?.is_empty(),
        "the networks an agent starts with are not news"
    );

    c.cli(
        2,
        &[
            "network",
            "create",
            "blue",
            "--vni",
            "300",
            "--subnet",
            "10.30.0.0/24",
            "--internal",
            "--mtu",
            "1400",
        ],
    )?;
    let created = wait_for_event(n1, "network_created", |e| e["network"] == "blue")?;
    ensure!(
        created["vni"] == 300
            && created["subnet"] == "10.30.0.0/24"
            && created["origin"] == c.node_name(2)
            && created["gateway"] == "10.30.0.1"
            && created["internal"] == true
            && created["mtu"] == 1400,
        "{created}"
    );
    ensure!(
        created["message"]
            .as_str()
            .is_some_and(|m| m.contains("internal") && m.contains("MTU 1400")),
        "{created}"
    );
    c.cli(2, &["network", "rm", "blue"])?;
    let removed = wait_for_event(n1, "network_removed", |e| e["network"] == "blue")?;
    ensure!(removed["vni"] == 300, "{removed}");

    // Host 3 defines uber-net with another VNI: refused, and said so once.
    let clash = ClusterFile {
        networks: vec![NetworkSection::new(UBER_NET.name, 4200, UBER_NET.subnet)],
        ..c.node_file(3)
    };
    c.start_agent(3, &clash, &json)?;
    let n1 = &c.agents[&1];
    let refused = wait_for_event(n1, "conflict_refused", |e| {
        e["conflict"]
            .as_str()
            .is_some_and(|t| t.contains(UBER_NET.name))
    })?;
    ensure!(refused["level"] == "WARN", "{refused}");

    c.set_link(2, false)?;
    let died = wait_for_event(n1, "node_died", |e| e["node"] == c.node_name(2))?;
    ensure!(died["level"] == "WARN", "{died}");
    ensure!(events(n1, "node_died")?.len() == 1, "one line per death");
    ensure!(
        events(n1, "conflict_refused")?.len() == 1,
        "one line per conflict, not one per pass"
    );
    for line in json_lines(n1)? {
        for field in ["time", "level", "target", "message"] {
            ensure!(line[field].is_string(), "no {field} in {line}");
        }
    }
    Ok(())
}

/// `overlay trace ARGS` against `node`'s agent, once it says it traces.
struct Trace(Child);

impl Trace {
    fn start(o: &Overlay, node: u8, args: &[&str]) -> Result<Trace> {
        let mut child = Command::new(overlay_binary()?)
            .arg("trace")
            .args(args)
            .arg("--socket")
            .arg(o.scenario.names.socket(node.into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first)?;
        if !first.starts_with("tracing ") {
            let out = child.wait_with_output()?;
            anyhow::bail!(
                "overlay trace did not start: {first}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Trace(child))
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines_with(agent: &Agent, text: &str) -> usize {
    agent.stderr().lines().filter(|l| l.contains(text)).count()
}

#[test]
fn the_programs_log_a_traced_flow_and_their_rare_events_into_the_agents_log() -> Result<()> {
    let mut o = Overlay::build(Decap::Tc)?;
    let debug = [("RUST_LOG", "info,overlay_ebpf=debug")];
    for node in [1, 2] {
        o.start_agent_with_env(node, &["--reconcile-interval", "3600"], &debug)?;
    }
    let c1_to_c2 = |o: &Overlay| ping(&o.ns(C1), &C2.ip.to_string(), 1, &[]);
    ensure!(c1_to_c2(&o)?.received == 1);
    let n1 = &o.agents[0];
    ensure!(lines_with(n1, "decision") == 0, "nothing is traced yet");

    let trace = Trace::start(&o, 1, &[&C1.ip.to_string(), &C2.ip.to_string()])?;
    let second = Trace::start(&o, 1, &[&C1.ip.to_string()]);
    let refused = format!("{:#}", second.err().context("a second trace was accepted")?);
    ensure!(refused.contains("another `overlay trace`"), "{refused}");
    ensure!(c1_to_c2(&o)?.received == 1);
    wait_until(
        scaled(Duration::from_secs(5)),
        "the trace in the log",
        || Ok(lines_with(n1, "decision encap") >= 1 && lines_with(n1, "decision decap") >= 1),
    )
    .with_context(|| n1.stderr())?;
    let line = n1
        .stderr()
        .lines()
        .find(|l| l.contains("decision encap"))
        .map(str::to_owned)
        .context("the decision line")?;
    ensure!(
        line.contains("DEBUG") && line.contains("overlay_ebpf"),
        "{line}"
    );
    ensure!(
        n1.stderr().contains(&format!("{} -> {}", C1.ip, C2.ip)),
        "the packet's line: {}",
        n1.stderr()
    );
    drop(trace);
    wait_until(scaled(Duration::from_secs(5)), "the trace stops", || {
        Ok(n1.stderr().contains("stopped tracing"))
    })?;
    let traced = lines_with(n1, "decision");
    ensure!(c1_to_c2(&o)?.received == 1);
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        lines_with(n1, "decision") == traced,
        "untraced packets were logged"
    );

    // A frame on a veth with the program but no ENDPOINTS entry: warned about
    // in the agent's log (the periodic reconcile would heal it in an hour).
    let maps = Maps::from_pins(&o.pin_dir(1))?;
    let c1_ifindex = maps
        .endpoints
        .iter()
        .filter_map(Result::ok)
        .find(|(_, e)| e.ip == C1.ip.octets())
        .map(|(k, _)| k)
        .context("c1's ENDPOINTS entry")?;
    let mut endpoints = maps.endpoints;
    endpoints.remove(&c1_ifindex)?;
    let _ = c1_to_c2(&o);
    wait_until(scaled(Duration::from_secs(5)), "the warning", || {
        Ok(lines_with(n1, "no ENDPOINTS entry") >= 1)
    })
    .with_context(|| n1.stderr())?;
    let warning = n1
        .stderr()
        .lines()
        .find(|l| l.contains("no ENDPOINTS entry"))
        .map(str::to_owned)
        .unwrap_or_default();
    ensure!(
        warning.contains("WARN")
            && warning.contains("overlay_ebpf")
            && warning.contains(&format!("ifindex {c1_ifindex}")),
        "{warning}"
    );
    Ok(())
}

#[test]
fn a_trace_needs_the_agents_debug_log() -> Result<()> {
    let mut o = Overlay::build_with(Decap::Tc, &[C1, C2])?;
    o.start_agent(1)?;
    let err = format!(
        "{:#}",
        Trace::start(&o, 1, &[&C1.ip.to_string()])
            .err()
            .context("a trace without the debug log was accepted")?
    );
    ensure!(err.contains("RUST_LOG=info,overlay_ebpf=debug"), "{err}");
    let bad = Command::new(overlay_binary()?)
        .args(["trace", "10.0.0.300"])
        .output()?;
    ensure!(!bad.status.success(), "a bad address was taken");
    Ok(())
}
