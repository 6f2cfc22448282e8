//! Rolling windows for standing probes: after a window's findings are read, the kernel aggregates (pair counts,
//! histograms, stack counts) start again from zero. Increments that land between the read and the reset are
//! lost; at window lengths of 10 s and more that is a rounding error, and it avoids keeping a copy of every
//! map to subtract.

use aya::Ebpf;
use aya::maps::{HashMap, PerCpuArray, PerCpuValues, StackTraceMap};
use sonde_probe_abi::{StackKey, WakeupKey, WakeupVal};

use crate::catalogue::Aggregate;

pub(crate) fn reset_kernel_aggregates(ebpf: &mut Ebpf, aggregates: &[Aggregate]) {
    for a in aggregates {
        let name = a.map();
        match a {
            Aggregate::WakeupPairs => clear_hash::<WakeupKey, WakeupVal>(ebpf, name),
            Aggregate::StackCounts => clear_hash::<StackKey, u64>(ebpf, name),
            Aggregate::Stacks => {
                if let Some(m) = ebpf.map_mut(name)
                    && let Ok(mut stacks) = StackTraceMap::try_from(m)
                {
                    let ids: Vec<u32> = stacks.stack_ids().filter_map(|r| r.ok()).collect();
                    for id in ids {
                        let _ = stacks.remove(&id);
                    }
                }
            }
            Aggregate::Histograms => {
                if let Some(m) = ebpf.map_mut(name)
                    && let Ok(mut hists) = PerCpuArray::<_, u64>::try_from(m)
                    && let Ok(cpus) = aya::util::nr_cpus()
                {
                    for i in 0..hists.len() {
                        if let Ok(zero) = PerCpuValues::try_from(vec![0u64; cpus]) {
                            let _ = hists.set(i, zero, 0);
                        }
                    }
                }
            }
        }
    }
}

fn clear_hash<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &str) {
    if let Some(m) = ebpf.map_mut(name)
        && let Ok(mut map) = HashMap::<_, K, V>::try_from(m)
    {
        let keys: Vec<K> = map.keys().filter_map(|r| r.ok()).collect();
        for k in keys {
            let _ = map.remove(&k);
        }
    }
}
