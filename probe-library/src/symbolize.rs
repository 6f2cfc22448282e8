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
//!   limit ([`CHILD_TIME`]): whatever a file does to the parser, the child is what ends. A binary whose frames
//!   the child could not name is tried again alone, so one hostile binary costs only its own names;
//! - frames arrive as (binary, file offset), from the mappings their process had when it was sampled
//!   (crate::procmaps), never as a pid's addresses: the pid may be another process's by now. The child opens a
//!   binary only as the file that was mapped ([`Opening`]);
//! - a frame that is not named keeps where it was: `binary+0xoffset [build id]`, the file offset that
//!   `addr2line`, `llvm-symbolizer` or pprof resolve offline against the same build (the build id only when
//!   the file could still be opened).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blazesym::MaybeDefault;
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};

use crate::procmaps::FileId;

/// The frame written for a kernel address kallsyms does not name.
pub const UNKNOWN_KERNEL: &str = "[unknown kernel]";

/// Set in the child's environment: it names frames instead of running as the binary it is.
const CHILD_ENV: &str = "SONDE_SYMBOLIZER_CHILD";

/// The child's address-space limit (RLIMIT_AS): room for the mapped binaries of the traced processes, far from
/// what a lying header asks for.
pub const CHILD_MEMORY: u64 = 2 << 30;

/// How long the child may take for one request.
pub const CHILD_TIME: Duration = Duration::from_secs(60);

/// At most this many binaries are retried one by one after the child failed on all of them together.
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
    let request: Result<Vec<BinaryFrames>, String> = std::io::stdin()
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
    let out = serde_json::to_vec(&name_binaries(&request)).unwrap_or_default();
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

/// Where the symbolizer may open a binary. Each is accepted only as the very file that was mapped.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Opening {
    /// `/proc/<pid>/map_files/<start>-<end>` of a process that mapped it: that file (in a container too,
    /// whatever its mount namespace, and deleted or replaced since), as long as that process runs: accepted
    /// only if `pid` still has `start_time` once the file is open (never another process at the pid).
    Mapped {
        pid: u32,
        start_time: u64,
        start: u64,
        end: u64,
    },
    /// A path in the symbolizer's own mount namespace, after the processes that mapped it exited: accepted only
    /// if the file has the identity it had when mapped ([`BinaryFrames::id`]). A container's binaries are
    /// usually not there (its root went with it): their frames stay `binary+0xoffset`.
    Path(String),
}

/// Frames in one binary: file offsets, named from its symbol tables.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BinaryFrames {
    /// As the mapping process listed it; an unnamed frame is its base name and the offset.
    pub path: String,
    /// What the file was when it was mapped (None: unknown, then it is opened only from a live process).
    pub id: Option<FileId>,
    /// Where to open it, tried in order.
    pub openings: Vec<Opening>,
    pub offsets: Vec<u64>,
}

impl BinaryFrames {
    /// `binary+0xoffset` for each offset: what is known without opening the file.
    fn places(&self) -> Vec<Frame> {
        let name = base_name(Path::new(&self.path));
        self.offsets
            .iter()
            .map(|off| Frame::Place(format!("{name}+{off:#x}")))
            .collect()
    }
}

/// Names for user frames, by binary: `frames[i]` gets one frame per offset of the request's `i`th binary, in
/// order. `failed` says why the symbolizer could not name some binaries' frames at all (it died, or timed out).
#[derive(Debug, Default)]
pub struct UserNames {
    pub frames: Vec<Vec<Frame>>,
    pub failed: Option<String>,
}

impl UserNames {
    /// How many frames are a place, not a name.
    pub fn unnamed(&self) -> usize {
        self.frames
            .iter()
            .flatten()
            .filter(|f| matches!(f, Frame::Place(_)))
            .count()
    }
}

/// Names the frames of each binary, in a child process where the executable serves as one, else here.
pub fn user_frames(binaries: &[BinaryFrames]) -> UserNames {
    let child = ISOLATED
        .load(Ordering::Relaxed)
        .then(std::env::current_exe)
        .and_then(Result::ok);
    user_frames_by(child.as_deref(), binaries)
}

/// [`user_frames`] with `child` as the symbolizer executable (None: name them in this process).
fn user_frames_by(child: Option<&Path>, binaries: &[BinaryFrames]) -> UserNames {
    let Some(exe) = child else {
        return UserNames {
            frames: name_binaries(binaries),
            failed: None,
        };
    };
    // Binaries without frames are not sent; their (empty) answers are put back in place.
    let sent: Vec<usize> = (0..binaries.len())
        .filter(|i| !binaries[*i].offsets.is_empty())
        .collect();
    let request: Vec<BinaryFrames> = sent.iter().map(|i| binaries[*i].clone()).collect();
    let mut out = UserNames {
        frames: vec![vec![]; binaries.len()],
        failed: None,
    };
    if request.is_empty() {
        return out;
    }
    match in_child(exe, &request) {
        Ok(names) => {
            for (i, frames) in sent.iter().zip(names) {
                out.frames[*i] = frames;
            }
        }
        Err(_) => {
            // One binary may be what the child could not survive: each is tried alone, so the others are named
            // all the same.
            for (n, i) in sent.iter().enumerate() {
                let one = &binaries[*i];
                let alone = if n < RETRY_ALONE {
                    in_child(exe, std::slice::from_ref(one))
                        .map(|mut n| n.pop().unwrap_or_default())
                } else {
                    Err(format!("not tried: more than {RETRY_ALONE} binaries"))
                };
                out.frames[*i] = alone.unwrap_or_else(|why| {
                    out.failed.get_or_insert(why);
                    one.places()
                });
            }
        }
    }
    out
}

/// Runs the request in a child, `exe`, under [`CHILD_MEMORY`] and [`CHILD_TIME`].
fn in_child(exe: &Path, request: &[BinaryFrames]) -> Result<Vec<Vec<Frame>>, String> {
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
    // The child answers every offset in order, or its answer is not used.
    if names.len() != request.len()
        || names
            .iter()
            .zip(request)
            .any(|(n, b)| n.len() != b.offsets.len())
    {
        return Err("the symbolizer's answer does not match the request".into());
    }
    Ok(names)
}

/// Opens the binary where one of its openings is the file that was mapped (see [`Opening`]).
fn open_binary(binary: &BinaryFrames) -> Option<File> {
    binary.openings.iter().find_map(|o| {
        let (path, live) = match o {
            Opening::Mapped {
                pid,
                start_time,
                start,
                end,
            } => (
                format!("/proc/{pid}/map_files/{start:x}-{end:x}"),
                Some((*pid, *start_time)),
            ),
            // A path is that file only by its identity.
            Opening::Path(_) if binary.id.is_none() => return None,
            Opening::Path(p) => (p.clone(), None),
        };
        // Non-blocking: a path replaced by a FIFO would hold the open (and the child) until its time limit.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || binary.id.is_some_and(|id| id != FileId::of(&meta)) {
            return None;
        }
        // Opened while the process that mapped it still ran (it ran before and after): its file.
        if let Some((pid, start_time)) = live
            && crate::procmaps::start_time(pid) != Some(start_time)
        {
            return None;
        }
        Some(file)
    })
}

/// Names each binary's frames with blazesym: the function's name, else where the frame is in its binary.
fn name_binaries(request: &[BinaryFrames]) -> Vec<Vec<Frame>> {
    request
        .iter()
        .map(|binary| {
            let Some(file) = open_binary(binary) else {
                return binary.places();
            };
            // The open file, as blazesym opens files by path: what was checked is what is read.
            let path = format!("/proc/self/fd/{}", file.as_raw_fd());
            let mut elf = Elf::new(&path);
            elf.debug_syms = false;
            // One symbolizer per binary: its caches are keyed by path, and fd paths are reused.
            let symbolizer = Symbolizer::new();
            let syms = symbolizer
                .symbolize(&Source::Elf(elf), Input::FileOffset(&binary.offsets))
                .ok();
            let mut build_id = None;
            let name = base_name(Path::new(&binary.path));
            binary
                .offsets
                .iter()
                .enumerate()
                .map(|(i, off)| {
                    if let Some(Symbolized::Sym(sym)) = syms.as_ref().and_then(|s| s.get(i)) {
                        return Frame::Named(sym.name.to_string());
                    }
                    let id = build_id.get_or_insert_with(|| {
                        blazesym::helper::read_elf_build_id(&path)
                            .ok()
                            .flatten()
                            .map(|b| format!(" [{}]", hex(&b)))
                            .unwrap_or_default()
                    });
                    Frame::Place(format!("{name}+{off:#x}{id}"))
                })
                .collect()
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

    /// A function of this test's own executable, to be named from a (binary, file offset).
    #[inline(never)]
    fn sonde_symbolize_target_fn() -> u64 {
        std::hint::black_box(7)
    }

    /// This test's executable, as its snapshot lists it, with the offset of [`sonde_symbolize_target_fn`].
    fn own_binary() -> (
        crate::procmaps::Snapshot,
        BinaryFrames,
        crate::procmaps::Mapping,
    ) {
        let me = crate::procmaps::take(std::process::id()).unwrap();
        let here = sonde_symbolize_target_fn as *const () as u64;
        let (file, off) = me.place(here).unwrap();
        let mapping = me.mapping(here).unwrap().clone();
        let binary = BinaryFrames {
            path: file.path.clone(),
            id: file.id,
            openings: vec![],
            offsets: vec![off],
        };
        (me, binary, mapping)
    }

    #[test]
    fn a_binary_is_named_from_the_file_that_was_mapped() {
        let (me, binary, m) = own_binary();
        let exe = base_name(&std::env::current_exe().unwrap());
        let mapped = Opening::Mapped {
            pid: me.pid,
            start_time: me.start_time,
            start: m.start,
            end: m.end,
        };
        let named = |openings: Vec<Opening>, id: Option<FileId>| {
            let b = BinaryFrames {
                openings,
                id,
                ..binary.clone()
            };
            name_binaries(&[b]).pop().unwrap().pop().unwrap()
        };
        let is_named =
            |f: &Frame| matches!(f, Frame::Named(n) if n.contains("sonde_symbolize_target_fn"));
        // What the child reads is what was sent.
        let sent = [BinaryFrames {
            openings: vec![mapped.clone(), Opening::Path(binary.path.clone())],
            ..binary.clone()
        }];
        let read: Vec<BinaryFrames> =
            serde_json::from_slice(&serde_json::to_vec(&sent).unwrap()).unwrap();
        assert_eq!(read, sent);
        // From the live process's mapping.
        assert!(is_named(&named(vec![mapped.clone()], binary.id)));
        // Its pid now another process's (another start time): the live process is not read, the frame is
        // where it was, without the build id (nothing was opened).
        let reused = Opening::Mapped {
            pid: me.pid,
            start_time: me.start_time + 1,
            start: m.start,
            end: m.end,
        };
        let place = named(vec![reused], binary.id);
        assert_eq!(
            place,
            Frame::Place(format!("{exe}+{:#x}", binary.offsets[0])),
            "{place:?}"
        );
        // After its process exited: the path, if it is still the file that was mapped.
        let path = Opening::Path(binary.path.clone());
        assert!(is_named(&named(vec![path.clone()], binary.id)));
        let other = binary.id.map(|id| FileId {
            mtime_nsec: id.mtime_nsec + 1,
            ..id
        });
        assert!(matches!(named(vec![path.clone()], other), Frame::Place(_)));
        assert!(matches!(named(vec![path], None), Frame::Place(_)));
        // A path that is now a FIFO is not waited on.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let started = Instant::now();
        let fifo = Opening::Path(fifo.to_str().unwrap().into());
        assert!(matches!(named(vec![fifo], binary.id), Frame::Place(_)));
        assert!(started.elapsed() < Duration::from_secs(5));
        // A file not found: the place.
        let gone = Opening::Path("/nonexistent/sonde-gone".into());
        assert_eq!(
            named(vec![gone], binary.id),
            Frame::Place(format!("{exe}+{:#x}", binary.offsets[0]))
        );
    }

    /// A symbolizer child that dies on one binary (a real child process, killed by SIGABRT as an allocation
    /// failure would kill it) costs that binary its names and nothing else, and says why.
    #[test]
    fn a_child_that_dies_on_one_binary_costs_only_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let child = dir.path().join("symbolizer");
        std::fs::write(
            &child,
            "#!/usr/bin/env python3\nimport json, os, sys\nreq = json.load(sys.stdin)\n\
             if any(b['path'] == '/evil' for b in req): os.abort()\n\
             json.dump([[{'Named': f'f{o}'} for o in b['offsets']] for b in req], sys.stdout)\n",
        )
        .unwrap();
        std::fs::set_permissions(&child, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let binary = |path: &str, offsets: Vec<u64>| BinaryFrames {
            path: path.into(),
            id: None,
            openings: vec![],
            offsets,
        };
        let request = [
            binary("/evil", vec![0x10]),
            binary("/usr/lib/empty.so", vec![]),
            binary("/usr/bin/good", vec![7, 8]),
        ];
        let names = user_frames_by(Some(&child), &request);
        assert_eq!(
            names.frames[2],
            [Frame::Named("f7".into()), Frame::Named("f8".into())]
        );
        assert!(names.frames[1].is_empty());
        // The evil binary's frames are kept as where they are in it.
        assert_eq!(names.frames[0], [Frame::Place("evil+0x10".into())]);
        let why = names.failed.clone().unwrap_or_default();
        assert!(why.contains("SIGABRT"), "{why}");
        assert_eq!(names.unnamed(), 1);
        // A child that answers: nothing failed.
        let names = user_frames_by(Some(&child), &request[2..]);
        assert!(names.failed.is_none() && names.unnamed() == 0, "{names:?}");
    }
}
