//! The in-kernel target filter maps, filled at load and kept current while the probe runs.

use std::collections::BTreeSet;

use aya::Ebpf;
use aya::maps::HashMap;
use sonde_vocab::ProbeName;

use crate::config::ProbeConfig;
use crate::error::{Error, Result};

pub(crate) fn fill(ebpf: &mut Ebpf, cfg: &ProbeConfig) -> Result<()> {
    let p = cfg.probe;
    if let Some(ids) = &cfg.filter.cgroups {
        set_exactly(ebpf, p, "filter_cgroups", ids)?;
    }
    for pid in cfg.filter.pids.iter().flatten() {
        insert_u32(ebpf, p, "filter_pids", *pid)?;
    }
    for ns in cfg.filter.netns.iter().flatten() {
        insert_u32(ebpf, p, "filter_netns", *ns)?;
    }
    Ok(())
}

fn map<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    probe: ProbeName,
    name: &'static str,
) -> Result<HashMap<&'a mut aya::maps::MapData, K, V>> {
    let m = ebpf.map_mut(name).ok_or_else(|| Error::Map {
        probe,
        map: name,
        message: "missing".into(),
    })?;
    HashMap::try_from(m).map_err(|e| map_err(probe, name, e))
}

fn map_err(probe: ProbeName, map: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Map {
        probe,
        map,
        message: e.to_string(),
    }
}

pub(crate) fn insert_u32(
    ebpf: &mut Ebpf,
    probe: ProbeName,
    name: &'static str,
    key: u32,
) -> Result<()> {
    let mut m: HashMap<_, u32, u8> = map(ebpf, probe, name)?;
    m.insert(key, 1, 0).map_err(|e| map_err(probe, name, e))
}

/// Makes a filter set exactly `ids`: new members are admitted, gone ones dropped, others untouched.
pub(crate) fn set_exactly<K: aya::Pod + Ord>(
    ebpf: &mut Ebpf,
    probe: ProbeName,
    name: &'static str,
    ids: &[K],
) -> Result<()> {
    let mut m: HashMap<_, K, u8> = map(ebpf, probe, name)?;
    let want: BTreeSet<K> = ids.iter().copied().collect();
    let have: BTreeSet<K> = m.keys().filter_map(|k| k.ok()).collect();
    for gone in have.difference(&want) {
        m.remove(gone).map_err(|e| map_err(probe, name, e))?;
    }
    for new in want.difference(&have) {
        m.insert(*new, 1, 0).map_err(|e| map_err(probe, name, e))?;
    }
    Ok(())
}
