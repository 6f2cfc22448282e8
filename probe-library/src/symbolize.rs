//! Names for the frames of sampled stacks, without trusting what is read to name them.
//!
//! Kernel frames are named from kallsyms (the kernel's own table); one that cannot be named is written as
//! [`UNKNOWN_KERNEL`], never as its address: a raw kernel address in a flame graph or a status would give its
//! readers the kernel's KASLR offset.
//!
//! User frames are named from the ELF files of the traced processes: a tenant's binaries, untrusted input to a
//! process that serves every tenant on the node. A crafted file once made the parser allocate what a section
//! header claimed and abort the agent. So:
//! - blazesym is built without DWARF and without section decompression (what the flame graph needs is the
//!   function's name, from `.symtab`/`.dynsym`, which it reads from a mapping of the file);
//! - in a binary that calls [`serve_if_child`] first thing in `main` (the agent, `sonde`), user frames are named
//!   in a child process of the same executable with its own address-space limit ([`CHILD_MEMORY`]) and a time
//!   limit ([`CHILD_TIME`]): whatever a file does to the parser, the child is what ends. A process whose frames
//!   the child could not name is tried again alone, so one hostile binary costs only its own names;
//! - a frame that is not named keeps where it was: `binary+0xoffset [build id]`, the file offset that
//!   `addr2line`, `llvm-symbolizer` or pprof resolve offline against the same build.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blazesym::normalize::{Normalizer, UserMeta};
use blazesym::symbolize::source::{Kernel, Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::{MaybeDefault, Pid};

/// The frame written for a kernel address kallsyms does not name.
pub const UNKNOWN_KERNEL: &str = "[unknown kernel]";

/// Set in the child's environment: it names frames instead of running as the binary it is.
const CHILD_ENV: &str = "SONDE_SYMBOLIZER_CHILD";

/// The child's address-space limit (RLIMIT_AS): room for the mapped binaries of the traced processes, far from
/// what a lying header asks for.
pub const CHILD_MEMORY: u64 = 2 << 30;

/// How long the child may take for one request.
pub const CHILD_TIME: Duration = Duration::from_secs(60);

/// At most this many processes are retried one by one after the child failed on all of them together.
const RETRY_ALONE: usize = 32;

/// Whether this executable serves as its own symbolizer child ([`serve_if_child`] was called in `main`).
static ISOLATED: AtomicBool = AtomicBool::new(false);

/// Call first in `main` of a binary that runs probes. Started as the symbolizer child, this names the frames
/// of the request on stdin, writes them to stdout and exits; otherwise it marks the executable as able to
/// name user frames in such a child, and returns.
pub fn serve_if_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        ISOLATED.store(true, Ordering::Relaxed);
        return;
    }
    let limit = rustix::process::Rlimit {
        current: Some(CHILD_MEMORY),
        maximum: Some(CHILD_MEMORY),
    };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::As, limit) {
        eprintln!("symbolizer: setting RLIMIT_AS: {e}");
        std::process::exit(2);
    }
    let mut input = Vec::new();
    let request: Result<Vec<(u32, Vec<u64>)>, String> = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice(&input).map_err(|e| e.to_string()));
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            eprintln!("symbolizer: reading the request: {e}");
            std::process::exit(2);
        }
    };
    let out = serde_json::to_vec(&name_user_frames(&request)).unwrap_or_default();
    let ok = std::io::stdout().write_all(&out).is_ok();
    std::process::exit(if ok { 0 } else { 2 });
}

/// One user frame: its function's name, or where it is (`binary+0xoffset [build id]`) when that is all that
/// could be read.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Frame {
    Named(String),
    Place(String),
}

impl Frame {
    pub fn text(&self) -> &str {
        match self {
            Frame::Named(s) | Frame::Place(s) => s,
        }
    }
}

/// Names for user frames, by process: `frames[pid]` gets one frame per address, in order. `failed` says why
/// the symbolizer could not name some processes' frames at all (it died, or timed out).
#[derive(Debug, Default)]
pub struct UserNames {
    pub frames: BTreeMap<u32, Vec<Frame>>,
    pub failed: Option<String>,
}

impl UserNames {
    /// How many frames are a place, not a name.
    pub fn unnamed(&self) -> usize {
        self.frames
            .values()
            .flatten()
            .filter(|f| matches!(f, Frame::Place(_)))
            .count()
    }
}

/// Names the user frames of each process (`stacks`: pid and its addresses), in a child process where the
/// executable serves as one, else here.
pub fn user_frames(stacks: &BTreeMap<u32, Vec<u64>>) -> UserNames {
    let child = ISOLATED
        .load(Ordering::Relaxed)
        .then(std::env::current_exe)
        .and_then(Result::ok);
    user_frames_by(child.as_deref(), stacks)
}

/// [`user_frames`] with `child` as the symbolizer executable (None: name them in this process).
fn user_frames_by(child: Option<&Path>, stacks: &BTreeMap<u32, Vec<u64>>) -> UserNames {
    let request: Vec<(u32, Vec<u64>)> = stacks
        .iter()
        .filter(|(_, a)| !a.is_empty())
        .map(|(p, a)| (*p, a.clone()))
        .collect();
    let pids = || request.iter().map(|(p, _)| *p);
    let Some(exe) = child else {
        return UserNames {
            frames: pids().zip(name_user_frames(&request)).collect(),
            failed: None,
        };
    };
    if request.is_empty() {
        return UserNames::default();
    }
    let mut out = UserNames::default();
    match in_child(exe, &request) {
        Ok(names) => out.frames = pids().zip(names).collect(),
        Err(_) => {
            // One process's binary may be what the child could not survive: each is tried alone, so the others
            // are named all the same.
            for (i, one) in request.iter().enumerate() {
                let alone = if i < RETRY_ALONE {
                    in_child(exe, std::slice::from_ref(one))
                        .map(|mut n| n.pop().unwrap_or_default())
                } else {
                    Err(format!("not tried: more than {RETRY_ALONE} processes"))
                };
                let frames = alone.unwrap_or_else(|why| {
                    out.failed.get_or_insert(why);
                    by_mapping(one.0, &one.1)
                });
                out.frames.insert(one.0, frames);
            }
        }
    }
    out
}

/// Runs the request in a child, `exe`, under [`CHILD_MEMORY`] and [`CHILD_TIME`].
fn in_child(exe: &Path, request: &[(u32, Vec<u64>)]) -> Result<Vec<Vec<Frame>>, String> {
    let mut child = Command::new(exe)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the symbolizer: {e}"))?;
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let mut stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&body);
        }
    });
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut out);
        }
        out
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < CHILD_TIME => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = writer.join();
                let _ = reader.join();
                return Err(format!(
                    "the symbolizer took longer than {}s",
                    CHILD_TIME.as_secs()
                ));
            }
        }
    };
    let _ = writer.join();
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let last = err.lines().last().unwrap_or_default();
        return Err(format!("the symbolizer ended with {status}: {last}"));
    }
    let names: Vec<Vec<Frame>> =
        serde_json::from_slice(&out).map_err(|e| format!("the symbolizer's answer: {e}"))?;
    // The child answers every address in order, or its answer is not used.
    if names.len() != request.len()
        || names
            .iter()
            .zip(request)
            .any(|(n, (_, a))| n.len() != a.len())
    {
        return Err("the symbolizer's answer does not match the request".into());
    }
    Ok(names)
}

/// Names each process's frames with blazesym: the function's name, else where the address is in its binary.
fn name_user_frames(request: &[(u32, Vec<u64>)]) -> Vec<Vec<Frame>> {
    let symbolizer = Symbolizer::new();
    let normalizer = Normalizer::builder().enable_build_ids(true).build();
    request
        .iter()
        .map(|(pid, addrs)| {
            let src = Source::Process(Process::new(Pid::from(*pid)));
            let syms = symbolizer.symbolize(&src, Input::AbsAddr(addrs)).ok();
            let places = normalizer.normalize_user_addrs(Pid::from(*pid), addrs).ok();
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    if let Some(Symbolized::Sym(sym)) = syms.as_ref().and_then(|s| s.get(i)) {
                        return Frame::Named(sym.name.to_string());
                    }
                    let Some(p) = places.as_ref() else {
                        return by_mapping(*pid, std::slice::from_ref(a))
                            .pop()
                            .unwrap_or(Frame::Place("[unknown]".into()));
                    };
                    match p
                        .outputs
                        .get(i)
                        .and_then(|(off, m)| Some((off, p.meta.get(*m)?)))
                    {
                        Some((off, UserMeta::Elf(elf))) => {
                            let build_id = elf
                                .build_id
                                .as_ref()
                                .map(|b| format!(" [{}]", hex(b)))
                                .unwrap_or_default();
                            Frame::Place(format!("{}+{off:#x}{build_id}", base_name(&elf.path)))
                        }
                        _ => Frame::Place("[unknown]".into()),
                    }
                })
                .collect()
        })
        .collect()
}

/// `binary+0xoffset` from the process's mappings as the kernel lists them (no file is parsed), or `[unknown]`.
fn by_mapping(pid: u32, addrs: &[u64]) -> Vec<Frame> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mappings: Vec<(u64, u64, u64, &str)> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (start, end) = f.next()?.split_once('-')?;
            let _perms = f.next()?;
            let offset = u64::from_str_radix(f.next()?, 16).ok()?;
            let path = f.nth(2)?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                offset,
                path,
            ))
        })
        .collect();
    addrs
        .iter()
        .map(|a| {
            mappings
                .iter()
                .find(|(s, e, _, _)| (*s..*e).contains(a))
                .map(|(s, _, off, path)| {
                    format!("{}+{:#x}", base_name(Path::new(path)), a - s + off)
                })
                .map_or_else(|| Frame::Place("[unknown]".into()), Frame::Place)
        })
        .collect()
}

/// Names kernel frames from kallsyms; an address it does not name is [`UNKNOWN_KERNEL`].
pub fn kernel_frames(symbolizer: &Symbolizer, addrs: &[u64]) -> Vec<String> {
    if addrs.is_empty() {
        return vec![];
    }
    let kernel = Source::Kernel(Kernel {
        vmlinux: MaybeDefault::None,
        ..Default::default()
    });
    match symbolizer.symbolize(&kernel, Input::AbsAddr(addrs)) {
        Ok(syms) => syms
            .iter()
            .map(|s| match s {
                Symbolized::Sym(sym) => sym.name.to_string(),
                Symbolized::Unknown(_) => UNKNOWN_KERNEL.into(),
            })
            .collect(),
        Err(_) => vec![UNKNOWN_KERNEL.into(); addrs.len()],
    }
}

fn base_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_address_is_never_written_as_a_number() {
        let symbolizer = Symbolizer::new();
        // Not a kernel text address on any x86_64 kernel: the low half is user space.
        let names = kernel_frames(&symbolizer, &[0x1000, 0xdead_beef]);
        assert_eq!(names, [UNKNOWN_KERNEL, UNKNOWN_KERNEL]);
    }

    #[test]
    fn an_unnamed_user_frame_is_its_binary_and_file_offset() {
        // This test's own code: mapped from its executable.
        let here = an_unnamed_user_frame_is_its_binary_and_file_offset as *const () as u64;
        let frames = by_mapping(std::process::id(), &[here, 8]);
        let exe = base_name(&std::env::current_exe().unwrap());
        assert!(
            frames[0].text().starts_with(&format!("{exe}+0x")),
            "{frames:?}"
        );
        assert_eq!(frames[1], Frame::Place("[unknown]".into()));
    }

    /// A symbolizer child that dies on one process's frames (a real child process, killed by SIGABRT as an
    /// allocation failure would kill it) costs that process its names and nothing else, and says why.
    #[test]
    fn a_child_that_dies_on_one_process_costs_only_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let child = dir.path().join("symbolizer");
        std::fs::write(
            &child,
            "#!/usr/bin/env python3\nimport json, os, sys\nreq = json.load(sys.stdin)\n\
             if any(pid == 1 for pid, _ in req): os.abort()\n\
             json.dump([[{'Named': f'f{a}'} for a in addrs] for _, addrs in req], sys.stdout)\n",
        )
        .unwrap();
        std::fs::set_permissions(&child, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let me = std::process::id();
        let here = a_child_that_dies_on_one_process_costs_only_its_names as *const () as u64;
        let stacks = BTreeMap::from([(1, vec![here]), (me, vec![7, 8])]);
        let names = user_frames_by(Some(&child), &stacks);
        assert_eq!(
            names.frames[&me],
            [Frame::Named("f7".into()), Frame::Named("f8".into())]
        );
        // pid 1's frames are kept as where they are in its binary (or unknown where its mappings are not readable).
        assert!(
            matches!(&names.frames[&1][..], [Frame::Place(_)]),
            "{names:?}"
        );
        let why = names.failed.clone().unwrap_or_default();
        assert!(why.contains("SIGABRT"), "{why}");
        assert_eq!(names.unnamed(), 1);
        // A child that answers: nothing failed.
        let one = BTreeMap::from([(me, vec![9])]);
        let names = user_frames_by(Some(&child), &one);
        assert!(names.failed.is_none() && names.unnamed() == 0, "{names:?}");
    }
}
