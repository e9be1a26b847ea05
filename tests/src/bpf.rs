//! Reading the kernel's view with bpftool, as an operator would.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::sys;

const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";

fn bpftool_json(args: &[&str]) -> Result<Value> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = sys::run("bpftool", &all)?;
    serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")
}

/// (program id, name) of every program attached to the root cgroup.
pub fn root_cgroup_programs() -> Result<Vec<(u32, String)>> {
    let all = bpftool_json(&["cgroup", "show", CGROUP_ROOT])?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_u64()? as u32, p["name"].as_str()?.to_owned())))
        .collect())
}

/// (link file, program id) for every link pinned under `<bpf_dir>/links`.
pub fn linked_program_ids(bpf_dir: &Path) -> Result<Vec<(String, u32)>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(bpf_dir.join("links"))? {
        let path = entry?.path();
        let link = bpftool_json(&["link", "show", "pinned", &path.display().to_string()])?;
        let prog = link["prog_id"].as_u64().context("link without prog_id")? as u32;
        ids.push((
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            prog,
        ));
    }
    ids.sort();
    Ok(ids)
}

/// Entries of a map dumped by bpftool, with BTF-formatted keys and values where present.
pub fn dump(map: &Path) -> Result<Vec<(Value, Value)>> {
    let all = bpftool_json(&["map", "dump", "pinned", &map.display().to_string()])?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let e = e.get("formatted").unwrap_or(e);
            (e["key"].clone(), e["value"].clone())
        })
        .collect())
}

/// (netns cookie, pod IPv4 in network order) of each enrolled pod, read through BTF names.
pub fn enrolled_entries(map: &Path) -> Result<Vec<(u64, u32)>> {
    dump(map)?
        .into_iter()
        .map(|(key, value)| {
            let cookie = key
                .as_u64()
                .with_context(|| format!("key {key} is not BTF-formatted"))?;
            let ip = value["ip4"]
                .as_u64()
                .with_context(|| format!("value {value} has no ip4 field"))?;
            Ok((cookie, ip as u32))
        })
        .collect()
}

/// Names of every loaded program whose name starts with `prefix`.
pub fn loaded_programs(prefix: &str) -> Result<Vec<String>> {
    let all = bpftool_json(&["prog", "show"])?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// (netns cookie, inner map id) of each pod's map of pending original destinations, from the
/// pinned map of maps.
pub fn pod_maps(outer: &Path) -> Result<Vec<(u64, u32)>> {
    dump(outer)?
        .into_iter()
        .map(|(key, value)| Ok((number(&key)?, number(&value)? as u32)))
        .collect()
}

/// A map key or value as bpftool prints it: a number where BTF names the type, else raw bytes
/// (`["0x01", ...]`, little-endian here), as for maps of maps.
fn number(value: &Value) -> Result<u64> {
    if let Some(n) = value.as_u64() {
        return Ok(n);
    }
    let bytes = value
        .as_array()
        .with_context(|| format!("{value} is neither a number nor bytes"))?;
    bytes.iter().rev().try_fold(0u64, |n, byte| {
        let byte = byte.as_str().and_then(|b| b.strip_prefix("0x"));
        let byte = byte.and_then(|b| u8::from_str_radix(b, 16).ok());
        let byte = byte.with_context(|| format!("{value} has a byte that is not 0xNN"))?;
        Ok(n << 8 | u64::from(byte))
    })
}

/// `bpftool map show id ID`: the map's type, name and `max_entries`, among others.
pub fn map_info(id: u32) -> Result<Value> {
    bpftool_json(&["map", "show", "id", &id.to_string()])
}
