//! Turning a TraceJob's target into the in-kernel filter on one machine: pids, comms and cgroup paths are used
//! as given; cluster selectors have no meaning here and are reported as ignored.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sonde_crds::TraceJobSpec;
use sonde_probes::catalogue::Filtered;
use sonde_probes::{Filter, cgroup};

pub(crate) struct LocalTarget {
    pub filter: Filter,
    pub notes: Vec<String>,
}

pub(crate) fn resolve(spec: &TraceJobSpec) -> Result<LocalTarget> {
    let t = &spec.target;
    let mut notes = Vec::new();
    if t.pod_selector.is_some() || t.node_selector.is_some() || t.node_names.is_some() {
        notes.push("podSelector/nodeSelector/nodeNames need a cluster; on this machine only comms, pids and cgroupPaths narrow the trace".into());
    }
    let mut filter = Filter {
        comms: t.comms.clone(),
        pids: t
            .pids
            .as_ref()
            .map(|p| p.iter().map(|&p| p as u32).collect()),
        ..Default::default()
    };
    if let Some(paths) = &t.cgroup_paths {
        let mut ids = Vec::new();
        for p in paths {
            let dir = cgroup_dir(p);
            if !dir.is_dir() {
                bail!(
                    "spec.target.cgroupPaths: {} is not a cgroup v2 directory",
                    dir.display()
                );
            }
            cgroup::subtree_ids(&dir, &mut ids)?;
        }
        filter.cgroups = Some(ids);
    }
    let probe = sonde_probes::catalogue::info(spec.probe);
    if probe.filtered == Filtered::Netns {
        // Packets are handled in softirq context, so the receiving namespace, not the current task, is the filter.
        let mut netns: Vec<u32> = spec
            .params
            .as_ref()
            .and_then(probe.local_netns)
            .into_iter()
            .collect();
        for pid in filter.pids.take().unwrap_or_default() {
            let meta = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .with_context(|| format!("spec.target.pids: no process {pid}"))?;
            netns.push(meta.ino() as u32);
        }
        if filter.comms.take().is_some() {
            notes.push(format!(
                "{} filters by network namespace and port; comms are ignored",
                spec.probe
            ));
        }
        if filter.cgroups.take().is_some() {
            notes.push(format!(
                "{} filters by network namespace and port; cgroupPaths are ignored",
                spec.probe
            ));
        }
        filter.netns = (!netns.is_empty()).then_some(netns);
    }
    if filter == Filter::default() {
        notes.push("no local filter: tracing every task on this machine".into());
    }
    Ok(LocalTarget { filter, notes })
}

fn cgroup_dir(p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.starts_with("/sys/fs/cgroup") {
        path.to_path_buf()
    } else {
        cgroup::v2_root().join(p.trim_start_matches('/'))
    }
}
