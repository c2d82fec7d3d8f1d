//! The read-only table commands: they open the pinned maps, so they work while an
//! agent runs, from any namespace that sees the bpffs.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use overlay_common::{FDB_KIND_GATEWAY, FDB_KIND_LOCAL, FDB_KIND_REMOTE};
use serde_json::{Value, json};

use crate::{
    dataplane::{maps::Maps, pins, usage::Occupancy},
    host,
    model::Mac,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Fdb,
    Neigh,
    Endpoints,
    Vteps,
    Stats,
}

/// Which node's pins to read: `--pin-dir`, else `--node`, else the only node
/// under the default root.
pub fn resolve_pin_dir(node: Option<&str>, pin_dir: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = pin_dir {
        return Ok(dir);
    }
    if let Some(node) = node {
        return Ok(pins::default_pin_dir(node));
    }
    let root = Path::new(pins::DEFAULT_PIN_ROOT);
    let nodes: Vec<String> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    match nodes.as_slice() {
        [only] => Ok(root.join(only)),
        [] => bail!(
            "no node is pinned under {}; is an agent running? (or give --pin-dir)",
            root.display()
        ),
        many => bail!(
            "several nodes are pinned under {}: {}; choose one with --node",
            root.display(),
            many.join(", ")
        ),
    }
}

/// One row: its cells by JSON field name, in column order.
type Row = Vec<(&'static str, Value)>;

/// Rows of a table: a header and string cells, or JSON objects.
pub fn render(table: Table, dir: &Path, as_json: bool) -> Result<String> {
    let maps = Maps::from_pins(dir)?;
    let (header, rows): (Vec<&str>, Vec<Row>) = match table {
        Table::Fdb => {
            let mut entries: Vec<_> = maps
                .fdb
                .iter()
                .collect::<Result<_, _>>()
                .context("reading FDB")?;
            entries.sort_by_key(|(k, _)| *k);
            let rows = entries
                .into_iter()
                .map(|(k, v)| {
                    let (kind, target) = match v.kind {
                        FDB_KIND_LOCAL => ("local", ifname(v.ifindex)),
                        FDB_KIND_REMOTE => ("remote", Ipv4Addr::from(v.remote_vtep).to_string()),
                        FDB_KIND_GATEWAY => ("gateway", "host stack".to_owned()),
                        other => ("unknown", other.to_string()),
                    };
                    vec![
                        ("vni", json!(k.vni)),
                        ("mac", json!(Mac(k.mac).to_string())),
                        ("kind", json!(kind)),
                        ("via", json!(target)),
                    ]
                })
                .collect();
            (vec!["VNI", "MAC", "KIND", "VIA"], rows)
        }
        Table::Neigh => {
            let mut entries: Vec<_> = maps
                .neigh
                .iter()
                .collect::<Result<_, _>>()
                .context("reading NEIGH")?;
            entries.sort_by_key(|(k, _)| *k);
            let rows = entries
                .into_iter()
                .map(|(k, v)| {
                    vec![
                        ("vni", json!(k.vni)),
                        ("ip", json!(Ipv4Addr::from(k.ip).to_string())),
                        ("mac", json!(Mac(v.mac).to_string())),
                    ]
                })
                .collect();
            (vec!["VNI", "IP", "MAC"], rows)
        }
        Table::Endpoints => {
            let entries: BTreeMap<_, _> = maps
                .endpoints
                .iter()
                .collect::<Result<_, _>>()
                .context("reading ENDPOINTS")?;
            let rows = entries
                .into_iter()
                .map(|(ifindex, e)| {
                    vec![
                        ("ifindex", json!(ifindex)),
                        ("interface", json!(ifname(ifindex))),
                        ("vni", json!(e.vni)),
                        ("ip", json!(Ipv4Addr::from(e.ip).to_string())),
                        ("mac", json!(Mac(e.mac).to_string())),
                    ]
                })
                .collect();
            (vec!["IFINDEX", "INTERFACE", "VNI", "IP", "MAC"], rows)
        }
        Table::Vteps => {
            let entries: BTreeMap<_, _> = maps
                .vteps
                .iter()
                .collect::<Result<_, _>>()
                .context("reading VTEPS")?;
            let rows = entries
                .into_iter()
                .map(|(ip, v)| {
                    vec![
                        ("vtep", json!(Ipv4Addr::from(ip).to_string())),
                        ("endpoints", json!(v.endpoints)),
                    ]
                })
                .collect();
            (vec!["VTEP", "ENDPOINTS"], rows)
        }
        Table::Stats => {
            let mut rows: Vec<_> = maps
                .counter_totals()?
                .into_iter()
                .map(|(counter, total)| {
                    vec![
                        ("counter", json!(counter.name())),
                        ("packets", json!(total.packets)),
                        ("bytes", json!(total.bytes)),
                    ]
                })
                .collect();
            let fill = maps.fill()?;
            if !as_json {
                let counters = render_rows(&["COUNTER", "PACKETS", "BYTES"], rows);
                return Ok(format!("{counters}\n{}", render_fill(&fill)));
            }
            for o in fill {
                rows.push(vec![
                    ("map", json!(o.map)),
                    ("entries", json!(o.entries)),
                    ("max_entries", json!(o.max_entries)),
                    ("full", json!(o.entries >= o.max_entries)),
                ]);
            }
            (vec!["COUNTER", "PACKETS", "BYTES"], rows)
        }
    };
    if as_json {
        let objects: Vec<Value> = rows
            .into_iter()
            .map(|row| Value::Object(row.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
            .collect();
        return Ok(serde_json::to_string_pretty(&objects)? + "\n");
    }
    Ok(render_rows(&header, rows))
}

fn render_rows(header: &[&str], rows: Vec<Row>) -> String {
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|(_, v)| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect()
        })
        .collect();
    format_table(header, &cells)
}

/// The tables' fill, with the full ones called out: the agent could not add
/// entries there (its log names the count).
fn render_fill(fill: &[Occupancy]) -> String {
    let rows: Vec<Vec<String>> = fill
        .iter()
        .map(
            |&Occupancy {
                 map: name,
                 entries,
                 max_entries: max,
             }| {
                let state = if entries >= max {
                    "FULL: new entries are refused"
                } else {
                    "ok"
                };
                vec![
                    name.to_owned(),
                    entries.to_string(),
                    max.to_string(),
                    state.to_owned(),
                ]
            },
        )
        .collect();
    format_table(&["MAP", "ENTRIES", "MAX", "STATE"], &rows)
}

pub fn format_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The interface name for an ifindex in this namespace, or `#N` if it is not here.
fn ifname(ifindex: u32) -> String {
    match host::ifname::ifname(ifindex) {
        Some(name) => format!("{name}(#{ifindex})"),
        None => format!("#{ifindex}"),
    }
}
