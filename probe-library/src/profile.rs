//! cpu-profile: stacks counted in the kernel, named by crate::symbolize (kernel frames from kallsyms, user frames
//! from the processes' ELF files, away from this process, by the mappings each process had when it was sampled:
//! crate::procmaps), folded, and rendered as a flame graph by inferno.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, StackTraceMap};
use blazesym::symbolize::Symbolizer;
use sonde_probe_abi::{StackKey, cstr};
use sonde_vocab::{Figure, Summary, SummaryRow};

use crate::aggregate::{Aggregator, Event, Findings};
use crate::procmaps::{self, Owner, Processes};
use crate::symbolize::{self, BinaryFrames};

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

/// cpu-profile's aggregator. The counts and stacks are in kernel maps, each count keyed by its process's pid and
/// start time; what is kept here is the mappings each of those processes had (crate::procmaps), noted while it
/// runs, so that its frames are named by them at the end even if it exited and its pid was given to another
/// process.
#[derive(Default)]
pub(crate) struct Profile {
    processes: Processes,
    /// The process each stack-count key's user stack belongs to, noted the first time the key was seen. At most
    /// the kernel map's entries (32768); forgotten with them at the end of a window.
    owners: HashMap<StackKey, Owner>,
    next_scan: Option<Instant>,
}

/// How often the stack counts are looked at for new processes while the trace runs (at most: see
/// [`SCAN_SHARE`]). A process that ran and exited between two looks has no mappings to be named by: its frames
/// are `[unknown]`, counted in a figure (as before the mappings were kept: it was gone at the end too), also
/// when its pid was given to another process before the look (the sample's start time is not that process's).
const SCAN_EVERY: Duration = Duration::from_millis(250);

/// A look takes at most 1/this of the time until the next (a `counts` key is a syscall; 10,000 keys took
/// 5-20 ms on a loaded 2-CPU node, a new process's mappings about 150 us).
const SCAN_SHARE: u32 = 50;

/// What one look may spend reading new processes' mappings; those left wait for the next look.
const SCAN_BUDGET: Duration = Duration::from_millis(20);

/// At most this many live processes' mappings are offered as ways to open one binary.
const MAX_OPENINGS: usize = 4;

/// A user frame before it is named.
enum Slot {
    /// Outside the file mappings of its process (anonymous code, or past [`procmaps::MAX_MAPPINGS`]).
    Unknown,
    /// Its process's mappings were not read while it ran (see [`SCAN_EVERY`]).
    NotRecorded,
    /// In `binaries[.0]`, at file offset `.1`.
    At(usize, u64),
}

/// One binary, whoever mapped it: the same file in many processes is named once.
#[derive(Clone, PartialEq, Eq, Hash)]
enum FileKey {
    Id(procmaps::FileId),
    /// A file whose identity could not be read: one per process.
    Unidentified(procmaps::ProcessId, String),
}

impl Profile {
    /// Notes the process (pid and start time) of each stack-count key not seen before: its mappings, from the
    /// snapshot kept of it or read from the live process at its pid if that is still the one.
    fn scan(&mut self, ebpf: &Ebpf) {
        let started = Instant::now();
        let (Some(counts), Some(stacks)) = (ebpf.map("counts"), ebpf.map("stacks")) else {
            return;
        };
        let (Ok(counts), Ok(stacks)) = (
            BpfHashMap::<_, StackKey, u64>::try_from(counts),
            StackTraceMap::try_from(stacks),
        ) else {
            return;
        };
        let mut new: BTreeMap<procmaps::ProcessId, Vec<StackKey>> = BTreeMap::new();
        for key in counts.keys().filter_map(|k| k.ok()) {
            // A kernel thread's sample has no user stack.
            if key.ustack >= 0 && !self.owners.contains_key(&key) {
                let process = (key.pid, procmaps::ticks_of(key.start_ns));
                new.entry(process).or_default().push(key);
            }
        }
        for (process, keys) in new {
            // One look reads at most SCAN_BUDGET's worth of processes (a pod forking thousands of them must not
            // hold up the drain it runs in, and with it the heartbeat and a stop); the rest wait for the next
            // look, their keys still unowned.
            if started.elapsed() >= SCAN_BUDGET {
                break;
            }
            // Read only if the process has no snapshot yet, or a frame outside it; and only if the live process
            // at the pid is the one sampled (a pid reused since is another start time: its frames stay unnamed).
            let addrs = keys.iter().flat_map(|k| frames(&stacks, k.ustack));
            let owner = self.processes.note(process, addrs, procmaps::take_process);
            for key in keys {
                self.owners.insert(key, owner);
            }
        }
        let cost = started.elapsed();
        self.next_scan = Some(Instant::now() + SCAN_EVERY.max(cost * SCAN_SHARE));
    }
}

impl Aggregator for Profile {
    fn record(&mut self, _bytes: &[u8]) -> Option<Event> {
        None
    }

    fn observe(&mut self, ebpf: &Ebpf) {
        if self.next_scan.is_none_or(|at| Instant::now() >= at) {
            self.scan(ebpf);
        }
    }

    fn reset(&mut self) {
        // The kernel's counts start again: so do their owners. The processes' mappings stay (they still run).
        self.owners.clear();
        self.next_scan = None;
    }

    fn finish(&mut self, ebpf: &mut Ebpf, elapsed: Duration, top: usize) -> Findings {
        // The keys counted since the last look, while their processes most likely still run.
        self.scan(ebpf);
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
        // Every user frame becomes (binary, file offset) by the mappings its process had when it was seen, and
        // all binaries are named in one request (see crate::symbolize: they are the tenants' own, parsed away
        // from this process). The live process at a pid is read only if it is the one sampled (same start time).
        let mut binaries: Vec<BinaryFrames> = Vec::new();
        let mut by_file: HashMap<FileKey, usize> = HashMap::new();
        let mut not_recorded: HashSet<(u32, u64)> = HashSet::new();
        let counted: Vec<(StackKey, u64, Vec<Slot>, Vec<u64>)> = counted
            .into_iter()
            .map(|(key, count)| {
                let ustack = frames(&stacks, key.ustack);
                let snapshot = match self.owners.get(&key) {
                    Some(Owner::Process(id)) => {
                        self.processes.get_or_read(*id, procmaps::take_process)
                    }
                    _ => None,
                };
                let slots = ustack
                    .iter()
                    .map(|&addr| {
                        let Some(s) = snapshot else {
                            not_recorded.insert((key.pid, addr));
                            return Slot::NotRecorded;
                        };
                        let Some(m) = s.mapping(addr) else {
                            return Slot::Unknown;
                        };
                        let Some(file) = &m.file else {
                            return Slot::Unknown;
                        };
                        let fkey = match file.id {
                            Some(id) => FileKey::Id(id),
                            None => FileKey::Unidentified(s.id(), file.path.clone()),
                        };
                        let i = *by_file.entry(fkey).or_insert_with(|| {
                            binaries.push(BinaryFrames {
                                path: file.path.clone(),
                                id: file.id,
                                openings: vec![],
                                offsets: vec![],
                            });
                            binaries.len() - 1
                        });
                        let b = &mut binaries[i];
                        let opening = symbolize::Opening::Mapped {
                            pid: s.pid,
                            start_time: s.start_time,
                            start: m.start,
                            end: m.end,
                        };
                        let known = b.openings.iter().any(|o| {
                            matches!(o, symbolize::Opening::Mapped { pid, start_time, .. }
                                if (*pid, *start_time) == s.id())
                        });
                        if !known && b.openings.len() < MAX_OPENINGS {
                            b.openings.push(opening);
                        }
                        let offset = addr - m.start + m.offset;
                        b.offsets.push(offset);
                        Slot::At(i, offset)
                    })
                    .collect();
                (key, count, slots, frames(&stacks, key.kstack))
            })
            .collect();
        for b in &mut binaries {
            b.offsets.sort_unstable();
            b.offsets.dedup();
            // Once the processes exited, the path as they named it, if it is still that file here (see
            // symbolize::Opening::Path: a container's root is usually gone with it).
            if b.id.is_some() {
                b.openings.push(symbolize::Opening::Path(b.path.clone()));
            }
        }
        let user = symbolize::user_frames(&binaries);
        let user_name = |slot: &Slot| -> String {
            let Slot::At(i, offset) = slot else {
                return "[unknown]".into();
            };
            binaries
                .get(*i)
                .and_then(|b| b.offsets.binary_search(offset).ok())
                .and_then(|j| Some(user.frames.get(*i)?.get(j)?.text().to_string()))
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
            let mut ustack: Vec<String> = ustack.iter().map(user_name).collect();
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
                .chain((!not_recorded.is_empty()).then(|| Figure {
                    name: "user frames not named (their process exited before its mappings were read)".into(),
                    value: not_recorded.len() as f64,
                    unit: "count".into(),
                }))
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
