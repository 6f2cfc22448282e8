//! Loading a probe's object with its config and attaching each hook through its fallback chain.

use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::programs::{BtfTracePoint, FEntry, KProbe, PerfEvent, Program, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use sonde_probe_abi::{CommKey, MAX_COMMS, TASK_COMM_LEN, comm_key};
use sonde_vocab::ProbeName;

use crate::catalogue::{self, Attach, Global, KernelSettings};
use crate::config::ProbeConfig;
use crate::error::{AttachAttempt, Error, Result, chain as chain_error};

/// A probe loaded and attached. Dropping it detaches and unloads everything: no pins, so a killed process
/// leaves nothing in the kernel.
pub struct Loaded {
    pub probe: ProbeName,
    pub ebpf: Ebpf,
    /// Every attempt, in order, including failures of hooks that later attached another way.
    pub attempts: Vec<AttachAttempt>,
    /// (hook, strategy) that attached.
    pub attached: Vec<(&'static str, &'static str)>,
    pub programs: Vec<&'static str>,
}

impl Loaded {
    /// The strategies used, e.g. `tp_btf` or `tracepoint+tp_btf`, for status and reports.
    pub fn strategy(&self) -> String {
        let mut s: Vec<&str> = self.attached.iter().map(|(_, s)| *s).collect();
        s.dedup();
        s.join("+")
    }
}

pub fn load(cfg: &ProbeConfig) -> Result<Loaded> {
    load_without(cfg, &[])
}

/// [`load`], passing over the attach strategies named in `skip` (`tp_btf`, `tracepoint`, ...) as if this kernel
/// had not got them: the way to run a fallback further down a chain on a kernel that has the better hook.
pub fn load_without(cfg: &ProbeConfig, skip: &[&str]) -> Result<Loaded> {
    cfg.validate()?;
    let probe = cfg.probe;
    let flag = |on: bool| -> u8 { on as u8 };
    let filter_cgroup = flag(cfg.filter.cgroups.is_some());
    let filter_pid = flag(cfg.filter.pids.is_some());
    let (filter_comm, comms) = comm_filter(cfg.filter.comms.as_deref());
    let filter_netns = flag(cfg.filter.netns.is_some());
    let emit = flag(cfg.output.events);
    let sample = cfg.output.sample_every.max(1);
    let threshold = cfg.kernel_threshold();
    let (thr, thr_ge) = threshold
        .map(|t| (t.value.max(1), flag(t.inclusive)))
        .unwrap_or((0, 0));
    let settings = KernelSettings::of(probe, &cfg.params);
    let (pods_root, pods_root_level) = cfg.filter.pods_root.unwrap_or((0, 0));
    let redact_outside = flag(cfg.filter.redact_outside);

    let mut loader = EbpfLoader::new();
    loader
        .btf(kernel_btf())
        .override_global("cfg_filter_cgroup", &filter_cgroup, true)
        .override_global("cfg_filter_pid", &filter_pid, true)
        .override_global("cfg_filter_comm", &filter_comm, true)
        .override_global("cfg_comms", &comms, true)
        .override_global("cfg_emit_events", &emit, true)
        .override_global("cfg_sample_every", &sample, true)
        .override_global("cfg_threshold", &thr, true)
        .override_global("cfg_threshold_ge", &thr_ge, true)
        .override_global("cfg_filter_netns", &filter_netns, false)
        .override_global("cfg_pods_root", &pods_root, false)
        .override_global("cfg_pods_root_level", &pods_root_level, false)
        .override_global("cfg_redact_outside", &redact_outside, false);
    // The probe's own globals must exist in its object: a name its entry misspells fails here, not silently.
    for (name, value) in &settings.globals {
        match value {
            Global::U8(v) => loader.override_global(name, v, true),
            Global::U32(v) => loader.override_global(name, v, true),
            Global::Ports(v) => loader.override_global(name, v, true),
        };
    }
    let mut ebpf = loader.load((catalogue::info(probe).object)()).map_err(|e| Error::Load {
        probe,
        hint: "is this root (or CAP_BPF+CAP_PERFMON) on a kernel with BTF (/sys/kernel/btf/vmlinux)?",
        source: Box::new(e),
    })?;

    crate::filter::fill(&mut ebpf, cfg)?;
    for (map, keys) in &settings.sets {
        for key in keys {
            crate::filter::insert_u32(&mut ebpf, probe, map, *key)?;
        }
    }

    let info = catalogue::info(probe);
    let mut attempts = Vec::new();
    let mut attached = Vec::new();
    let mut programs = Vec::new();
    for hook in info.hooks {
        let mut ok = false;
        let first = attempts.len();
        for attach in hook.chain {
            let result = match skip.contains(&attach.strategy()) {
                true => Err("skipped on request".to_string()),
                false => attach_one(&mut ebpf, attach, kernel_btf(), &settings),
            };
            attempts.push(AttachAttempt {
                hook: hook.name,
                strategy: attach.strategy(),
                target: attach.target(),
                error: result.as_ref().err().cloned(),
            });
            if result.is_ok() {
                if !hook.context {
                    attached.push((hook.name, attach.strategy()));
                }
                programs.push(attach.program());
                ok = true;
                break;
            }
        }
        if !ok && hook.required {
            return Err(Error::UnsupportedKernel {
                probe,
                hook: hook.name,
                attempts: attempts[first..].to_vec(),
            });
        }
        if !ok {
            tracing::warn!(probe = %probe, hook = hook.name, "optional hook unavailable on this kernel");
        }
    }
    Ok(Loaded {
        probe,
        ebpf,
        attempts,
        attached,
        programs,
    })
}

/// Detaches and unloads every program of a probe, keeping its maps: the trace stops producing at once, and the
/// kernel aggregates can still be read (dropping `Loaded` would also close the maps). Each detach may wait for an
/// RCU grace period in the kernel (hundreds of ms on a busy machine); the programs are detached in parallel so
/// the waits overlap instead of adding up.
pub fn detach(loaded: &mut Loaded) {
    let programs: Vec<(&str, &mut Program)> = loaded.ebpf.programs_mut().collect();
    std::thread::scope(|scope| {
        for (name, prog) in programs {
            scope.spawn(move || {
                let r = match prog {
                    Program::FEntry(p) => p.unload(),
                    Program::KProbe(p) => p.unload(),
                    Program::BtfTracePoint(p) => p.unload(),
                    Program::TracePoint(p) => p.unload(),
                    Program::PerfEvent(p) => p.unload(),
                    Program::RawTracePoint(p) => p.unload(),
                    _ => Ok(()),
                };
                match r {
                    // A program of a strategy that did not load (an fentry refused here, say).
                    Ok(()) | Err(aya::programs::ProgramError::NotLoaded) => {}
                    Err(e) => tracing::warn!(program = name, error = %chain_error(&e), "unloading"),
                }
            });
        }
    });
}

fn attach_one(
    ebpf: &mut Ebpf,
    attach: &Attach,
    btf: Option<&Btf>,
    settings: &KernelSettings,
) -> Result<(), String> {
    let name = attach.program();
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?;
    let need_btf = || btf.ok_or_else(|| "kernel has no BTF (/sys/kernel/btf/vmlinux)".to_string());
    let err = |e: aya::programs::ProgramError| chain_error(&e);
    match *attach {
        Attach::Fentry { func, .. } => {
            let p: &mut FEntry = prog.try_into().map_err(err)?;
            p.load(func, need_btf()?).map_err(err)?;
            p.attach().map_err(err).map(drop)
        }
        Attach::Kprobe { func, .. } => {
            let p: &mut KProbe = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.attach(func, 0).map_err(err).map(drop)
        }
        Attach::TpBtf { event, .. } => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(err)?;
            p.load(event, need_btf()?).map_err(err)?;
            p.attach().map_err(err).map(drop)
        }
        Attach::Tracepoint { category, name, .. } => {
            let p: &mut TracePoint = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.attach(category, name).map_err(err).map(drop)
        }
        Attach::PerfCpuClock { .. } => {
            let hz = settings
                .sample_hz
                .ok_or("the probe's entry sets no sampling rate for its perf-event hook")?;
            let p: &mut PerfEvent = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            let cpus = aya::util::online_cpus().map_err(|(f, e)| format!("{f}: {e}"))?;
            for cpu in cpus {
                p.attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(hz),
                    false,
                )
                .map_err(err)?;
            }
            Ok(())
        }
    }
}

/// Classic tracepoints need tracefs mounted; when it is not, mount it. A failure here surfaces as the attach
/// error that names the missing tracepoint.
pub fn ensure_tracefs() {
    if !std::path::Path::new("/sys/kernel/tracing/events").exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
}

/// The kernel's BTF, parsed once per process: an agent starting many sessions pays for it once.
fn kernel_btf() -> Option<&'static Btf> {
    static BTF: std::sync::OnceLock<Option<Btf>> = std::sync::OnceLock::new();
    BTF.get_or_init(|| Btf::from_sys_fs().ok()).as_ref()
}

/// The comm filter as the kernel reads it: how many entries are set, and the entries. A filter that is on with
/// no names admits nothing, so it gets one entry no task can have (comms are NUL-terminated).
fn comm_filter(comms: Option<&[String]>) -> (u8, [CommKey; MAX_COMMS]) {
    let mut table = [CommKey::default(); MAX_COMMS];
    match comms {
        None => (0, table),
        Some([]) => {
            table[0].comm = [0xff; TASK_COMM_LEN];
            (1, table)
        }
        Some(names) => {
            for (slot, name) in table.iter_mut().zip(names) {
                *slot = comm_key(name);
            }
            (names.len().min(MAX_COMMS) as u8, table)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_filter_table() {
        assert_eq!(comm_filter(None).0, 0);
        let (n, t) = comm_filter(Some(&[]));
        assert_eq!((n, t[0].comm), (1, [0xff; TASK_COMM_LEN]));
        let names = ["ping".to_string(), "a-very-long-command-name".to_string()];
        let (n, t) = comm_filter(Some(&names));
        assert_eq!(n, 2);
        assert_eq!(&t[0].comm[..5], b"ping\0");
        // Truncated like the kernel's comm, NUL-terminated.
        assert_eq!(&t[1].comm, b"a-very-long-com\0");
    }
}
