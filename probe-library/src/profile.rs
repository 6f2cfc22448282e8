//! cpu-profile: stacks counted in the kernel, symbolized here (kernel via kallsyms, user via the process's ELF
//! and DWARF, both by blazesym), folded, and rendered as a flame graph by inferno.

use std::collections::HashMap;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, StackTraceMap};
use blazesym::symbolize::source::{Kernel, Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::{MaybeDefault, Pid};
use sonde_probe_abi::{StackKey, cstr};
use sonde_vocab::{Figure, Summary, SummaryRow};

use crate::aggregate::{Aggregator, Event, Findings};

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

fn names(symbolizer: &Symbolizer, src: &Source, addrs: &[u64]) -> Vec<String> {
    if addrs.is_empty() {
        return vec![];
    }
    match symbolizer.symbolize(src, Input::AbsAddr(addrs)) {
        Ok(syms) => syms
            .iter()
            .zip(addrs)
            .map(|(s, a)| match s {
                Symbolized::Sym(sym) => sym.name.to_string(),
                Symbolized::Unknown(_) => format!("{a:#x}"),
            })
            .collect(),
        Err(_) => addrs.iter().map(|a| format!("{a:#x}")).collect(),
    }
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
        let kernel = Source::Kernel(Kernel {
            vmlinux: MaybeDefault::None,
            ..Default::default()
        });
        let mut folded: HashMap<String, u64> = HashMap::new();
        let mut by_leaf: HashMap<String, u64> = HashMap::new();
        let mut total = 0;
        let mut lost = 0;
        for (key, count) in counted {
            total += count;
            if key.kstack == STACK_COLLISION || key.ustack == STACK_COLLISION {
                lost += count;
            }
            let user = Source::Process(Process::new(Pid::from(key.pid)));
            // Stacks come leaf first; flame graphs want root first.
            let mut path: Vec<String> = vec![cstr(&key.comm)];
            let mut ustack = names(&symbolizer, &user, &frames(&stacks, key.ustack));
            ustack.reverse();
            let mut kstack = names(&symbolizer, &kernel, &frames(&stacks, key.kstack));
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
