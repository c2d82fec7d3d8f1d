//! What the lifecycle and kernel-features suites share beyond the test bed.

use anyhow::Result;

/// The cls_bpf filters (netlink TC attachments: the endpoints', and the
/// underlay's before 6.6) in namespace `ns`, as `bpftool net show` lists them:
/// one per interface and direction.
/// A newer bpftool lists TCX links there too; those are left out.
pub fn netlink_tc_filters(ns: &str) -> Result<Vec<serde_json::Value>> {
    let out = overlay_tests::sh(&format!("ip netns exec {ns} bpftool -j net show"))?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["tc"].as_array())
        .flatten()
        .filter(|f| f["kind"].as_str().is_some_and(|k| k.starts_with("clsact")))
        .cloned()
        .collect())
}
