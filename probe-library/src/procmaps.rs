//! What a sampled process had mapped, read while it runs, so that its user frames are named by the binaries it
//! ran when it was sampled, not by whatever process holds its pid when the window ends.
//!
//! A cpu-profile sample keeps only its process and the stack's addresses; frames are named at the end of a
//! trace or window (up to 24 h later). By then the process may have exited and its pid been given to another
//! process: naming the addresses by the live pid would name another process's functions (wrong, and that
//! process's layout in a tenant's results). So the BPF program keys each sample by pid and the process's start
//! time ([`ticks_of`] makes it `/proc/<pid>/stat` field 22), and while the trace runs the processes that appear
//! in the stack counts are read: a [`Snapshot`] of their executable mappings (`/proc/<pid>/maps`), kept by
//! (pid, start time) in [`Processes`], taken only from the live process at the pid that has the sample's start
//! time ([`take_process`]). An address becomes (binary, file offset) by the snapshot; the binary is named from
//! its file (in the symbolizer child: no ELF is parsed here).
//!
//! Nothing here parses a file a tenant controls: `/proc` text written by the kernel, and `stat` of the mapped
//! files.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

/// At most this many processes' snapshots are kept; past it the one unused longest is dropped (its samples'
/// frames are named only if the process still runs with the same start time when they are symbolized).
pub const MAX_PROCESSES: usize = 4096;

/// At most this many executable mappings are kept per process (a frame past them is `[unknown]`).
pub const MAX_MAPPINGS: usize = 1024;

/// At most about this many bytes of snapshots are kept ([`Snapshot::weight`]); past it the ones unused
/// longest are dropped, as past [`MAX_PROCESSES`]. A typical process (tens of mappings) weighs a few KiB; the
/// paths are the processes' own, up to 4 KiB each.
pub const MAX_BYTES: usize = 32 << 20;

/// A process, as long as it lives: its pid and start time (clock ticks after boot). A pid given to another
/// process has another start time.
pub type ProcessId = (u32, u64);

/// Identity of a mapped file, from `stat` of `/proc/<pid>/map_files/<start>-<end>` when it was mapped: a path
/// read later is that file only if it still has all of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl FileId {
    pub fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

/// A file a process mapped executable.
#[derive(Clone, Debug, PartialEq)]
pub struct MappedFile {
    /// As `/proc/<pid>/maps` lists it: in the process's own mount namespace (a container's), maybe
    /// ` (deleted)`; or a pseudo-file such as `[vdso]`.
    pub path: String,
    /// None when it could not be read (a pseudo-file, or the process was gone).
    pub id: Option<FileId>,
}

/// One executable mapping.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// None: anonymous memory (JIT code); its frames are `[unknown]`.
    pub file: Option<Arc<MappedFile>>,
}

/// A process's executable mappings, as read while it ran.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub pid: u32,
    pub start_time: u64,
    /// Sorted by start, not overlapping.
    pub mappings: Vec<Mapping>,
}

impl Snapshot {
    pub fn id(&self) -> ProcessId {
        (self.pid, self.start_time)
    }

    /// The executable mappings of `maps` (the text of `/proc/<pid>/maps`); `file_id` gives a file's identity
    /// from the mapping's start and end (the `map_files` entry).
    pub fn parse(
        pid: u32,
        start_time: u64,
        maps: &str,
        mut file_id: impl FnMut(u64, u64) -> Option<FileId>,
    ) -> Snapshot {
        // One file per (device, inode, path): its identity is read once.
        let mut files: HashMap<(&str, &str, &str), Arc<MappedFile>> = HashMap::new();
        let mut mappings = Vec::new();
        for line in maps.lines() {
            let Some(f) = fields(line) else { continue };
            if !f.perms.contains('x') {
                continue;
            }
            if mappings.len() >= MAX_MAPPINGS {
                break;
            }
            let file = (!f.path.is_empty()).then(|| {
                files
                    .entry((f.dev, f.inode, f.path))
                    .or_insert_with(|| {
                        Arc::new(MappedFile {
                            path: f.path.to_string(),
                            // Inode 0: not a file (`[vdso]`).
                            id: (f.inode != "0").then(|| file_id(f.start, f.end)).flatten(),
                        })
                    })
                    .clone()
            });
            mappings.push(Mapping {
                start: f.start,
                end: f.end,
                offset: f.offset,
                file,
            });
        }
        mappings.sort_by_key(|m| m.start);
        Snapshot {
            pid,
            start_time,
            mappings,
        }
    }

    /// About how many bytes it holds.
    pub fn weight(&self) -> usize {
        let mut files: Vec<(*const MappedFile, usize)> = self
            .mappings
            .iter()
            .filter_map(|m| m.file.as_ref())
            .map(|f| (Arc::as_ptr(f), f.path.len()))
            .collect();
        files.sort_unstable();
        files.dedup();
        size_of::<Snapshot>()
            + self.mappings.len() * size_of::<Mapping>()
            + files
                .iter()
                .map(|(_, path)| size_of::<MappedFile>() + path)
                .sum::<usize>()
    }

    /// The mapping holding `addr`.
    pub fn mapping(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// Where `addr` is: its file and the offset in it.
    pub fn place(&self, addr: u64) -> Option<(&Arc<MappedFile>, u64)> {
        let m = self.mapping(addr)?;
        Some((m.file.as_ref()?, addr - m.start + m.offset))
    }

    /// Adds what a later read of the same process found (a library loaded since, new JIT code); a mapping of
    /// the later read replaces the earlier ones it overlaps.
    pub fn merge(&mut self, later: Snapshot) {
        let mut kept: Vec<Mapping> = std::mem::take(&mut self.mappings)
            .into_iter()
            .filter(|old| {
                !later
                    .mappings
                    .iter()
                    .any(|new| new.start < old.end && old.start < new.end)
            })
            .collect();
        kept.extend(later.mappings);
        kept.sort_by_key(|m| m.start);
        kept.truncate(MAX_MAPPINGS);
        self.mappings = kept;
    }
}

struct Fields<'a> {
    start: u64,
    end: u64,
    perms: &'a str,
    offset: u64,
    dev: &'a str,
    inode: &'a str,
    path: &'a str,
}

/// `start-end perms offset dev inode   path` (the path may hold spaces, or be absent).
fn fields(line: &str) -> Option<Fields<'_>> {
    let mut rest = line;
    let mut next = || {
        let s = rest.trim_start();
        let (field, tail) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
        rest = tail;
        (!field.is_empty()).then_some(field)
    };
    let (start, end) = next()?.split_once('-')?;
    let perms = next()?;
    let offset = u64::from_str_radix(next()?, 16).ok()?;
    let dev = next()?;
    let inode = next()?;
    Some(Fields {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path: rest.trim(),
    })
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks after boot.
pub fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The comm (field 2) is in parentheses and may hold anything, `)` included: count from the last `)`,
    // which ends it; the state is field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The start time `/proc/<pid>/stat` shows (field 22, [`start_time`]) for a process whose thread group leader
/// has `start_boottime` `start_ns` (what the BPF program reads): the kernel's
/// `nsec_to_clock_t(timens_add_boottime_ns(start_boottime))`, in this process's time namespace (as its
/// `timens_offsets` show it: the namespace of its children, the same unless it left its own without forking).
pub fn ticks_of(start_ns: u64) -> u64 {
    static CLOCK: std::sync::OnceLock<(u64, i64)> = std::sync::OnceLock::new();
    let (hz, offset) = *CLOCK.get_or_init(|| {
        let offsets = std::fs::read_to_string("/proc/self/timens_offsets").unwrap_or_default();
        (
            rustix::param::clock_ticks_per_second(),
            boottime_offset(&offsets),
        )
    });
    to_ticks(start_ns, hz, offset)
}

/// `ns + offset` in clock ticks of `hz` per second: `ns / (1e9 / hz)` where `hz` divides 1e9 (USER_HZ is 100).
fn to_ticks(ns: u64, hz: u64, offset: i64) -> u64 {
    let ns = ns.saturating_add_signed(offset);
    (u128::from(ns) * u128::from(hz) / 1_000_000_000) as u64
}

/// The boottime offset in `timens_offsets` (`boottime <s> <ns>`), in ns; 0 without time namespaces.
fn boottime_offset(offsets: &str) -> i64 {
    offsets
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "boottime").then_some(())?;
            let s: i64 = f.next()?.parse().ok()?;
            let ns: i64 = f.next()?.parse().ok()?;
            s.checked_mul(1_000_000_000)?.checked_add(ns)
        })
        .unwrap_or(0)
}

/// Reads the executable mappings of the live process `pid`; None if it is gone, or was replaced by another
/// process (another start time) while they were read.
pub fn take(pid: u32) -> Option<Snapshot> {
    read_live(pid, None)
}

/// Reads the executable mappings of the process `id` if it is the one at its pid: None if that pid is gone or
/// another process's (nothing is read then but its start time).
pub fn take_process(id: ProcessId) -> Option<Snapshot> {
    read_live(id.0, Some(id.1))
}

fn read_live(pid: u32, expected: Option<u64>) -> Option<Snapshot> {
    let before = start_time(pid)?;
    if expected.is_some_and(|t| t != before) {
        return None;
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let snapshot = Snapshot::parse(pid, before, &maps, |start, end| {
        std::fs::metadata(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
            .ok()
            .map(|m| FileId::of(&m))
    });
    // All read between two reads of the start time that agree: one process's.
    (start_time(pid)? == before).then_some(snapshot)
}

/// Snapshots by process, at most [`MAX_PROCESSES`] and about [`MAX_BYTES`], the ones unused longest dropped
/// first.
#[derive(Default)]
pub struct Processes {
    /// Each with when it was last used ([`Processes::clock`]) and its weight.
    by_id: HashMap<ProcessId, (Snapshot, u64, usize)>,
    clock: u64,
    bytes: usize,
}

/// Which process a sample belongs to, as far as could be told when it was first seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Process(ProcessId),
    /// The process had exited (its pid maybe another process's) before its mappings were read: its frames are
    /// not named.
    Unknown,
}

impl Processes {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: ProcessId) -> Option<&Snapshot> {
        self.by_id.get(&id).map(|(s, _, _)| s)
    }

    /// Notes the process `id` (the pid and start time of a sample), whose stacks hold `addrs`: the snapshot it
    /// already has, read again if an address is outside it (a library loaded since) and it still runs, or a new
    /// one if it still runs. `read` reads the live process at the pid if it is that one ([`take_process`]): a
    /// process that took the pid over is never read for it.
    pub fn note(
        &mut self,
        id: ProcessId,
        addrs: impl IntoIterator<Item = u64>,
        read: impl Fn(ProcessId) -> Option<Snapshot>,
    ) -> Owner {
        self.clock += 1;
        if let Some((snapshot, used, weight)) = self.by_id.get_mut(&id) {
            *used = self.clock;
            if addrs.into_iter().any(|a| snapshot.mapping(a).is_none())
                && let Some(later) = read(id).filter(|s| s.id() == id)
            {
                snapshot.merge(later);
                self.bytes -= *weight;
                *weight = snapshot.weight();
                self.bytes += *weight;
                self.shrink(Some(id));
            }
            return Owner::Process(id);
        }
        match read(id).filter(|s| s.id() == id) {
            Some(snapshot) => {
                self.insert(snapshot);
                Owner::Process(id)
            }
            None => Owner::Unknown,
        }
    }

    /// The snapshot of `id`: kept, or read again if it was dropped and that very process still runs (never
    /// another process at the same pid).
    pub fn get_or_read(
        &mut self,
        id: ProcessId,
        read: impl Fn(ProcessId) -> Option<Snapshot>,
    ) -> Option<&Snapshot> {
        if !self.by_id.contains_key(&id) {
            let snapshot = read(id).filter(|s| s.id() == id)?;
            self.insert(snapshot);
        }
        self.get(id)
    }

    fn insert(&mut self, snapshot: Snapshot) {
        self.clock += 1;
        let (id, weight) = (snapshot.id(), snapshot.weight());
        self.bytes += weight;
        if let Some((_, _, old)) = self.by_id.insert(id, (snapshot, self.clock, weight)) {
            self.bytes -= old;
        }
        self.shrink(Some(id));
    }

    /// Drops the snapshots unused longest (but `keep`) until within [`MAX_PROCESSES`] and [`MAX_BYTES`].
    fn shrink(&mut self, keep: Option<ProcessId>) {
        while self.by_id.len() > MAX_PROCESSES || self.bytes > MAX_BYTES {
            let Some(oldest) = self
                .by_id
                .iter()
                .filter(|(id, _)| Some(**id) != keep)
                .min_by_key(|(_, (_, used, _))| *used)
                .map(|(id, _)| *id)
            else {
                return;
            };
            if let Some((_, _, weight)) = self.by_id.remove(&oldest) {
                self.bytes -= weight;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c4a00000-55d0c4a20000 r--p 00000000 fd:01 1234                       /usr/bin/app
55d0c4a20000-55d0c4a80000 r-xp 00020000 fd:01 1234                       /usr/bin/app
55d0c4a80000-55d0c4a90000 rw-p 00080000 fd:01 1234                       /usr/bin/app
7f1200000000-7f1200100000 rwxp 00000000 00:00 0
7f1200200000-7f1200300000 r-xp 00028000 fd:01 99                         /opt/my lib/libx.so (deleted)
7ffd1234a000-7ffd1234c000 r-xp 00000000 00:00 0                          [vdso]
";

    fn id(n: u64) -> FileId {
        FileId {
            dev: 1,
            ino: n,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
        }
    }

    fn fake(pid: u32, start_time: u64) -> Snapshot {
        Snapshot::parse(pid, start_time, MAPS, |start, _| Some(id(start)))
    }

    #[test]
    fn addresses_become_a_file_and_its_offset() {
        let s = fake(42, 1000);
        assert_eq!(s.mappings.len(), 4, "{s:#?}");
        let (file, off) = s.place(0x55d0c4a20010).unwrap();
        assert_eq!(file.path, "/usr/bin/app");
        assert_eq!(off, 0x20010);
        assert_eq!(file.id, Some(id(0x55d0c4a20000)));
        let (file, off) = s.place(0x7f1200200abc).unwrap();
        assert_eq!(file.path, "/opt/my lib/libx.so (deleted)");
        assert_eq!(off, 0x28abc);
        // The end is not in the mapping; read-only and anonymous mappings are no place; [vdso] has no identity.
        assert!(s.place(0x55d0c4a80000).is_none());
        assert!(s.place(0x55d0c4a00010).is_none());
        assert!(s.mapping(0x7f1200000010).is_some() && s.place(0x7f1200000010).is_none());
        assert_eq!(s.place(0x7ffd1234a100).unwrap().0.id, None);
        assert!(s.place(0x10).is_none());
    }

    #[test]
    fn start_time_is_field_22_whatever_the_comm() {
        let stat =
            "4242 (a) b) c 1 2) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1 2 3";
        assert_eq!(parse_start_time(stat), Some(987654));
        let mine = start_time(std::process::id()).unwrap();
        assert!(mine > 0);
        let me = take(std::process::id()).unwrap();
        assert_eq!(me.start_time, mine);
        // This test's own code is mapped from its executable, which has an identity.
        let here = start_time_is_field_22_whatever_the_comm as *const () as u64;
        let (file, _) = me.place(here).unwrap();
        let exe = std::fs::metadata(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(file.id, Some(FileId::of(&exe)));
    }

    /// A pid given to another process (another start time) is another process: a sample is named only by a
    /// snapshot of the process it was taken in (its pid and start time), never by the live process at its pid.
    #[test]
    fn a_reused_pid_is_never_read_for_an_earlier_process() {
        let mut procs = Processes::default();
        let reads = std::cell::Cell::new(0);
        let first = procs.note((42, 1000), [0x55d0c4a20010], |(p, _)| {
            reads.set(reads.get() + 1);
            Some(fake(p, 1000))
        });
        assert_eq!(first, Owner::Process((42, 1000)));
        assert_eq!(reads.get(), 1);
        // Seen again, addresses inside the snapshot: not read again.
        procs.note((42, 1000), [0x55d0c4a20020], |_| panic!("read again"));
        // Pid 42 now belongs to a process started later. A sample of the first one, at an address outside its
        // snapshot, is still the first one's: what the live process has is not added to it.
        let other = |p| {
            Some(Snapshot::parse(
                p,
                2000,
                "1000-2000 r-xp 0 fd:01 7 /bin/other\n",
                |_, _| Some(id(7)),
            ))
        };
        let late = procs.note((42, 1000), [0x1000], |(p, _)| other(p));
        assert_eq!(late, Owner::Process((42, 1000)));
        let old = procs.get((42, 1000)).unwrap();
        assert_eq!(old.place(0x55d0c4a20010).unwrap().0.path, "/usr/bin/app");
        assert!(old.place(0x1000).is_none());
        // The later process's samples are its own.
        let second = procs.note((42, 2000), [0x1000], |(p, _)| other(p));
        assert_eq!(second, Owner::Process((42, 2000)));
        assert_eq!(
            procs.get((42, 2000)).unwrap().place(0x1000).unwrap().0.path,
            "/bin/other"
        );
        // A process never read before its pid was given to another: no owner, whatever the live one has.
        assert_eq!(
            procs.note((43, 3000), [0x1000], |(p, _)| other(p)),
            Owner::Unknown
        );
        assert!(procs.get((43, 3000)).is_none() && procs.get((43, 2000)).is_none());
        // A dropped snapshot is read again only from the same process: pid 42 is now another one.
        let mut fresh = Processes::default();
        assert!(
            fresh
                .get_or_read((42, 1000), |(p, _)| Some(fake(p, 2000)))
                .is_none()
        );
        assert!(
            fresh
                .get_or_read((42, 1000), |(p, _)| Some(fake(p, 1000)))
                .is_some()
        );
        // A pid gone before its mappings were read: no owner.
        assert_eq!(procs.note((44, 5), [1], |_| None), Owner::Unknown);
    }

    /// The live reader reads a process only if it is the one at its pid.
    #[test]
    fn a_process_is_read_only_at_its_own_start_time() {
        let me = std::process::id();
        let mine = start_time(me).unwrap();
        assert_eq!(take_process((me, mine)).unwrap().id(), (me, mine));
        assert!(take_process((me, mine + 1)).is_none());
        assert!(take_process((me, mine - 1)).is_none());
    }

    /// A BPF start time (ns after boot) in the clock ticks of `/proc/<pid>/stat`, as the kernel converts it.
    #[test]
    fn a_start_time_in_ns_is_the_ticks_proc_shows() {
        assert_eq!(to_ticks(1_234_567_890_123, 100, 0), 123_456);
        assert_eq!(to_ticks(9_999_999, 100, 0), 0);
        assert_eq!(to_ticks(10_000_000, 100, 0), 1);
        assert_eq!(to_ticks(1_234_567_890_123, 1000, 0), 1_234_567);
        // In a time namespace whose boot was 10 s earlier (or 1 s later).
        assert_eq!(to_ticks(5_000_000_000, 100, 10_000_000_000), 1500);
        assert_eq!(to_ticks(5_000_000_000, 100, -1_000_000_000), 400);
        let offsets = "monotonic           0         0\nboottime        -12    500000\n";
        assert_eq!(boottime_offset(offsets), -11_999_500_000);
        assert_eq!(boottime_offset(""), 0);
        // Here: this machine's clock ticks and time namespace (the kernel tests check it against the kernel).
        let here = std::fs::read_to_string("/proc/self/timens_offsets").unwrap_or_default();
        let hz = rustix::param::clock_ticks_per_second();
        assert_eq!(
            ticks_of(7_000_000_000),
            to_ticks(7_000_000_000, hz, boottime_offset(&here))
        );
    }

    #[test]
    fn a_library_loaded_later_is_added() {
        let mut procs = Processes::default();
        procs.note((42, 1000), [0x55d0c4a20010], |(p, _)| Some(fake(p, 1000)));
        let later = "55d0c4a20000-55d0c4a80000 r-xp 00020000 fd:01 1234 /usr/bin/app\n\
                     7f0000000000-7f0000001000 r-xp 00001000 fd:01 55 /lib/late.so\n";
        procs.note((42, 1000), [0x7f0000000010], |(p, _)| {
            Some(Snapshot::parse(p, 1000, later, |s, _| Some(id(s))))
        });
        let s = procs.get((42, 1000)).unwrap();
        assert_eq!(
            s.place(0x7f0000000010).unwrap(),
            (&s.mappings[1].file.clone().unwrap(), 0x1010)
        );
        assert_eq!(s.place(0x7f1200200abc).unwrap().1, 0x28abc);
    }

    #[test]
    fn at_most_max_processes_are_kept_the_least_recently_used_dropped() {
        let mut procs = Processes::default();
        for pid in 0..MAX_PROCESSES as u32 {
            procs.note((pid, 1), [], |(p, _)| Some(fake(p, 1)));
        }
        // Pid 0 used again: pid 1 is now the one unused longest.
        procs.note((0, 1), [], |_| None);
        procs.note((999_999, 1), [], |(p, _)| Some(fake(p, 1)));
        assert_eq!(procs.len(), MAX_PROCESSES);
        assert!(procs.get((0, 1)).is_some() && procs.get((1, 1)).is_none());
        // Processes with long paths: bounded in bytes too.
        let long = "/x".repeat(2000);
        let maps: String = (0..MAX_MAPPINGS as u64 + 10)
            .map(|i| {
                format!(
                    "{:x}-{:x} r-xp 0 fd:01 {i} {long}{i}\n",
                    i * 0x1000,
                    i * 0x1000 + 0x1000
                )
            })
            .collect();
        let heavy = Snapshot::parse(1, 1, &maps, |_, _| None);
        assert_eq!(heavy.mappings.len(), MAX_MAPPINGS);
        assert!(heavy.weight() > MAX_MAPPINGS * 4000, "{}", heavy.weight());
        let mut procs = Processes::default();
        for pid in 0..20 {
            procs.note((pid, 1), [], |(p, _)| {
                Some(Snapshot {
                    pid: p,
                    ..heavy.clone()
                })
            });
        }
        assert!(
            procs.bytes <= MAX_BYTES && procs.len() < 20,
            "{} bytes",
            procs.bytes
        );
        assert!(procs.get((19, 1)).is_some() && procs.get((0, 1)).is_none());
        let weights: usize = procs.by_id.values().map(|(s, _, _)| s.weight()).sum();
        assert_eq!(procs.bytes, weights);
    }
}
