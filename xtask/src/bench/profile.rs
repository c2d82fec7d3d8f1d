//! Where a case's CPU time goes: `perf record` of the whole machine's kernel
//! while one TCP stream runs, folded into the kernel functions that did the
//! work and into a few groups that tell the datapaths apart (checksums, GSO
//! segmentation, GRO, copies, the BPF programs, ...). It runs once per case,
//! outside the comparison rounds: sampling costs the traffic a little.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};

use super::{cases, cases::Case, metrics};

/// Sampling rate: enough samples in a few seconds for groups of 1 %.
const FREQUENCY: &str = "1999";
/// Symbols per case in the report.
const TOP: usize = 12;

/// The groups, in table order: a symbol belongs to the first whose pattern
/// it contains. The last one, "other", takes the rest.
const GROUPS: [(&str, &[&str]); 12] = [
    (
        "BPF programs and helpers",
        &[
            "bpf_prog_",
            "bpf_skb_",
            "bpf_redirect",
            "bpf_fib",
            "bpf_l3",
            "bpf_l4",
            "htab_",
            "bpf_get_hash",
            "bpf_ktime",
            "bpf_map_",
            "__htab",
            "bpf_xdp",
            "xdp_do",
            "dev_map",
        ],
    ),
    ("checksums", &["csum", "checksum"]),
    ("GSO segmentation", &["gso", "skb_segment", "segment"]),
    ("GRO", &["gro"]),
    (
        "copies to and from user space",
        &[
            "copy_user",
            "copyin",
            "copyout",
            "_copy_to_iter",
            "_copy_from_iter",
            "rep_movs",
            "memcpy",
            "memmove",
            "copy_page",
        ],
    ),
    (
        "skb allocation and freeing",
        &[
            "kmem_cache",
            "kfree",
            "kmalloc",
            "alloc_skb",
            "skb_release",
            "page_frag",
            "skb_free",
            "__slab",
            "pskb_expand_head",
            "build_skb",
            "skb_clone",
            "consume_skb",
            "napi_skb_cache",
            "page_pool",
        ],
    ),
    ("TCP", &["tcp_"]),
    (
        "UDP and the tunnel",
        &["udp", "vxlan", "iptunnel", "ip_tunnel"],
    ),
    (
        "IP, routing and netfilter",
        &[
            "ip_", "fib_", "nf_", "ipt_", "nft_", "dst_", "neigh_", "arp_",
        ],
    ),
    (
        "devices, bridge and qdisc",
        &[
            "veth",
            "br_",
            "dev_",
            "netif_",
            "__netif",
            "napi",
            "qdisc",
            "sch_",
            "tcf_",
            "tc_",
            "net_rx_action",
            "process_backlog",
            "skb_do_redirect",
        ],
    ),
    // A cpu-clock sample that falls while interrupts are off is taken when
    // they come back on, so these functions also carry the time of what ran
    // just before with interrupts off: on a VM, mostly the IPI that wakes the
    // other CPU, a VM exit.
    (
        "wakeups and interrupts back on",
        &[
            "_raw_spin_unlock_irq",
            "wake",
            "finish_task_switch",
            "schedule",
            "handle_softirqs",
            "do_select",
            "sock_poll",
        ],
    ),
    ("other", &[]),
];

#[derive(Clone, Debug)]
pub struct Profile {
    pub case: String,
    /// Kernel samples taken while the stream ran (the whole machine, idle excluded).
    pub samples: u64,
    /// Share of those samples per group, in [`GROUPS`] order.
    pub groups: Vec<f64>,
    /// The busiest kernel functions: (symbol, share of the samples).
    pub top: Vec<(String, f64)>,
}

/// Profiles `case` while c1 sends one TCP stream to c2 for `secs`.
pub fn record(case: &Case, secs: u32, dir: &Path) -> Result<Profile> {
    let data = dir.join(format!("perf-{}.data", sanitize(&case.spec.label())));
    let perf = Command::new("perf")
        .args([
            "record",
            "-a",
            "-g",
            "-e",
            "cpu-clock",
            "-F",
            FREQUENCY,
            "-q",
            "-o",
        ])
        .arg(&data)
        .args(["--", "sleep", &(secs + 1).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf record (Debian package linux-perf)")?;
    let traffic = metrics::iperf_tcp(
        &case.client_ns(),
        case.server_ip,
        cases::IPERF_PORT,
        secs,
        1,
    );
    let out = perf.wait_with_output().context("waiting for perf record")?;
    traffic.with_context(|| format!("{}: TCP 1 stream under perf", case.spec.label()))?;
    ensure!(
        out.status.success(),
        "perf record failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let report = Command::new("perf")
        .args([
            "report",
            "--no-children",
            "--sort",
            "comm,sym",
            "--stdio",
            "-q",
            "-F",
            "sample,comm,sym",
            "-g",
            "none",
            "-i",
        ])
        .arg(&data)
        .output()
        .context("running perf report")?;
    ensure!(
        report.status.success(),
        "perf report failed: {}",
        String::from_utf8_lossy(&report.stderr).trim()
    );
    let symbols = parse_report(&String::from_utf8_lossy(&report.stdout));
    Ok(fold(case.spec.label(), &symbols))
}

/// `perf report -F sample,comm,sym` lines (`  1234  iperf3  [k] symbol`) as
/// symbol → samples: the kernel's, in the tasks that carry the traffic.
fn parse_report(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((head, sym)) = line.split_once(" [k] ") else {
            continue; // user space: the other jobs' and iperf3's own, alike in every case
        };
        let Some((n, comm)) = head.trim().split_once(char::is_whitespace) else {
            continue;
        };
        let (Ok(n), sym) = (n.parse::<u64>(), sym.trim()) else {
            continue;
        };
        if !carries_traffic(comm.trim()) || is_idle(sym) {
            continue;
        }
        *out.entry(sym.to_owned()).or_default() += n;
    }
    out
}

/// The tasks in whose context the packets are processed: iperf3 (its own
/// sends and receives, and the softirqs that follow them), ksoftirqd, and the
/// idle task (softirqs of a CPU woken up for them). Whatever else runs on the
/// machine, another bench or a build, is left out.
fn carries_traffic(comm: &str) -> bool {
    comm == "iperf3" || comm == "swapper" || comm.starts_with("ksoftirqd/")
}

fn is_idle(sym: &str) -> bool {
    [
        "safe_halt",
        "default_idle",
        "cpuidle",
        "do_idle",
        "acpi_idle",
        "intel_idle",
        "poll_idle",
    ]
    .iter()
    .any(|p| sym.contains(p))
}

/// The groups' names, in the order of [`Profile::groups`].
pub fn group_names() -> impl Iterator<Item = &'static str> {
    GROUPS.iter().map(|(name, _)| *name)
}

fn group_of(sym: &str) -> usize {
    GROUPS
        .iter()
        .position(|(_, patterns)| patterns.iter().any(|p| sym.contains(p)))
        .unwrap_or(GROUPS.len() - 1)
}

fn fold(case: String, symbols: &BTreeMap<String, u64>) -> Profile {
    let samples: u64 = symbols.values().sum();
    let share = |n: u64| {
        if samples == 0 {
            0.0
        } else {
            n as f64 / samples as f64
        }
    };
    let mut groups = vec![0u64; GROUPS.len()];
    for (sym, n) in symbols {
        groups[group_of(sym)] += n;
    }
    let mut top: Vec<(String, u64)> = symbols.iter().map(|(s, n)| (s.clone(), *n)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Profile {
        case,
        samples,
        groups: groups.into_iter().map(share).collect(),
        top: top
            .into_iter()
            .take(TOP)
            .map(|(s, n)| (s, share(n)))
            .collect(),
    }
}

fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The groups side by side, one column per case, then each case's busiest
/// functions.
pub fn markdown(profiles: &[Profile]) -> String {
    if profiles.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\nWhere the time goes (`perf record -a` of the kernel, cpu-clock, while c1 sends one TCP \
         stream to c2; the kernel's samples in iperf3, ksoftirqd and the idle task's softirqs, \
         idle itself and every other task left out):\n\n| group |",
    );
    for p in profiles {
        s += &format!(" {} |", p.case);
    }
    s += "\n|---|";
    s += &"---|".repeat(profiles.len());
    s += "\n";
    for (g, (name, _)) in GROUPS.iter().enumerate() {
        s += &format!("| {name} |");
        for p in profiles {
            s += &format!(" {:.1} % |", p.groups[g] * 100.0);
        }
        s += "\n";
    }
    s += "| kernel samples |";
    for p in profiles {
        s += &format!(" {} |", p.samples);
    }
    s += "\n\nThe busiest kernel functions of each case:\n\n| case | functions (share of its kernel samples) |\n|---|---|\n";
    for p in profiles {
        let top: Vec<String> = p
            .top
            .iter()
            .map(|(sym, share)| format!("`{sym}` {:.1} %", share * 100.0))
            .collect();
        s += &format!("| {} | {} |\n", p.case, top.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_samples_of_the_traffic_fold_into_groups_without_idle_or_other_jobs() {
        let text = "\
            600  swapper          [k] pv_native_safe_halt\n\
            250  iperf3           [k] csum_partial\n\
             50  ksoftirqd/1      [k] csum_partial\n\
            100  iperf3           [k] skb_segment\n\
             50  swapper          [k] bpf_prog_4f1a_endpoint_ingress\n\
             50  iperf3           [k] some_unknown_function\n\
            900  iperf3           [.] a_user_space_function\n\
            700  opt cgu.01       [k] csum_partial\n\
            garbage line\n";
        let p = fold("x".into(), &parse_report(text));
        assert_eq!(p.samples, 500);
        let share = |name: &str| p.groups[GROUPS.iter().position(|(n, _)| *n == name).unwrap()];
        assert_eq!(share("checksums"), 0.6);
        assert_eq!(share("GSO segmentation"), 0.2);
        assert_eq!(share("BPF programs and helpers"), 0.1);
        assert_eq!(share("other"), 0.1);
        assert_eq!(p.top[0], ("csum_partial".to_owned(), 0.6));
        assert!((p.groups.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
}
