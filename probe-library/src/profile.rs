//! cpu-profile: stacks counted in the kernel, named by crate::symbolize (kernel frames from kallsyms, user frames
//! from the processes' ELF files, away from this process), folded, and rendered as a flame graph by inferno.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, StackTraceMap};
use blazesym::symbolize::Symbolizer;
use sonde_probe_abi::{StackKey, cstr};
use sonde_vocab::{Figure, Summary, SummaryRow};

use crate::aggregate::{Aggregator, Event, Findings};
use crate::symbolize;

pub(crate) struct Profile;

/// `bpf_get_stackid`'s answer when the stack's hash bucket holds another stack (without BPF_F_REUSE_STACKID, which
/// would overwrite it and misattribute the samples counted on the old one).
const STACK_COLLISION: i32 = -17; // -EEXIST

/// The frame a sample's lost stack is shown as, so its samples are not taken for stack-less ones.
const LOST_STACK: &str = "[stack lost: stack map collision]";

fn frames(stacks: &StackTraceMap<&aya::maps::MapData>, id: i32) -> Vec<u64> {
    if id < 0 {
        return vec![];
    }
    stacks
        .get(&(id as u32), 0)
        .map(|s| s.frames().iter().map(|f| f.ip).collect())
        .unwrap_or_default()
}

impl Aggregator for Profile {
    fn record(&mut self, _bytes: &[u8]) -> Option<Event> {
        None
    }

    fn finish(&mut self, ebpf: &mut Ebpf, elapsed: Duration, top: usize) -> Findings {
        let mut counted: Vec<(StackKey, u64)> = Vec::new();
        if let Some(m) = ebpf.map("counts")
            && let Ok(counts) = BpfHashMap::<_, StackKey, u64>::try_from(m)
        {
            counted = counts.iter().filter_map(|r| r.ok()).collect();
        }
        let Some(stack_map) = ebpf.map("stacks") else {
            return Findings::default();
        };
        let Ok(stacks) = StackTraceMap::try_from(stack_map) else {
            return Findings::default();
        };
        let symbolizer = Symbolizer::new();
        // Every process's user frames are named in one request (see crate::symbolize: the binaries are the
        // tenants' own, parsed away from this process).
        let mut user_addrs: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let counted: Vec<(StackKey, u64, Vec<u64>, Vec<u64>)> = counted
            .into_iter()
            .map(|(key, count)| {
                let ustack = frames(&stacks, key.ustack);
                user_addrs.entry(key.pid).or_default().extend(&ustack);
                (key, count, ustack, frames(&stacks, key.kstack))
            })
            .collect();
        for addrs in user_addrs.values_mut() {
            addrs.sort_unstable();
            addrs.dedup();
        }
        let user = symbolize::user_frames(&user_addrs);
        let user_name = |pid: u32, addr: u64| -> String {
            user_addrs
                .get(&pid)
                .and_then(|a| a.binary_search(&addr).ok())
                .and_then(|i| Some(user.frames.get(&pid)?.get(i)?.text().to_string()))
                .unwrap_or_else(|| "[unknown]".into())
        };
        let mut folded: HashMap<String, u64> = HashMap::new();
        let mut by_leaf: HashMap<String, u64> = HashMap::new();
        let mut total: u64 = 0;
        let mut lost: u64 = 0;
        for (key, count, ustack, kstack) in counted {
            total = total.saturating_add(count);
            if key.kstack == STACK_COLLISION || key.ustack == STACK_COLLISION {
                lost = lost.saturating_add(count);
            }
            // Stacks come leaf first; flame graphs want root first.
            let mut path: Vec<String> = vec![cstr(&key.comm)];
            let mut ustack: Vec<String> = ustack.iter().map(|a| user_name(key.pid, *a)).collect();
            ustack.reverse();
            let mut kstack = symbolize::kernel_frames(&symbolizer, &kstack);
            kstack.reverse();
            kstack.iter_mut().for_each(|f| f.push_str("_[k]"));
            for (id, frames) in [(key.ustack, &mut ustack), (key.kstack, &mut kstack)] {
                if id == STACK_COLLISION {
                    frames.push(LOST_STACK.to_string());
                }
            }
            path.extend(ustack);
            path.extend(kstack);
            *by_leaf
                .entry(format!(
                    "{} {}",
                    path[0],
                    path.last().cloned().unwrap_or_default()
                ))
                .or_default() += count;
            *folded.entry(path.join(";")).or_default() += count;
        }
        let mut lines: Vec<String> = folded
            .into_iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        lines.sort();
        let s = elapsed.as_secs_f64().max(1e-3);
        let mut rows: Vec<SummaryRow> = by_leaf
            .into_iter()
            .map(|(key, count)| SummaryRow {
                key,
                count,
                per_second: Some(count as f64 / s),
                max: None,
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        rows.truncate(top);
        Findings {
            summary: Summary {
                key_meaning: "comm, hottest leaf frame (samples)".into(),
                rows,
                figures: std::iter::once(Figure {
                    name: "samples".into(),
                    value: total as f64,
                    unit: "count".into(),
                })
                .chain((lost > 0).then(|| Figure {
                    name: "samples whose stack was lost (stack map collisions)".into(),
                    value: lost as f64,
                    unit: "count".into(),
                }))
                // What could not be read, and why: those frames are `binary+0xoffset [build id]`, kept for
                // offline symbolization.
                .chain((user.unnamed() > 0).then(|| Figure {
                    name: match &user.failed {
                        Some(why) => format!("user frames not named ({why})"),
                        None => "user frames not named (no symbol in their binary)".into(),
                    },
                    value: user.unnamed() as f64,
                    unit: "count".into(),
                }))
                .collect(),
            },
            histograms: vec![],
            folded: lines,
        }
    }
}

/// Renders folded stacks as a flame graph SVG.
pub fn flamegraph_svg(folded: &[String], title: &str) -> Result<Vec<u8>, String> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, folded.iter().map(String::as_str), &mut svg)
        .map_err(|e| e.to_string())?;
    Ok(svg)
}
