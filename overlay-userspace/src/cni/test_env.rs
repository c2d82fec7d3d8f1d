//! What the unit tests of [`super::invocation`] and [`super::conf`] run
//! `parse` with: an environment as a runtime sets it.

use super::invocation::{Env, parse};

pub fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_vars(pairs.iter().copied())
}

/// An ADD's variables, every one set.
pub fn add_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

/// The code `parse` refuses with.
pub fn code(pairs: &[(&str, &str)], stdin: &str) -> u32 {
    parse(&env(pairs), stdin.as_bytes()).unwrap_err().code
}
