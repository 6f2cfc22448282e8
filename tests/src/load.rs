//! Load generators that cannot outlive their test. Each runs under `timeout` (a hard bound however the test
//! ends, even by SIGKILL), as the leader of its own process group, and Drop kills the whole group, so children
//! such as perf's second sched-pipe task go too.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The longest any test load may run.
pub const LOAD_BOUND: Duration = Duration::from_secs(90);

/// Holds one load-heavy test of a test binary at a time: the tests of a binary run in parallel by default, and two
/// floods or bulk flows on two cores would measure each other (one's sched-pipe load breaching the other's
/// threshold, one flow's CPU stretching the other's delays). Each test binary links its own copy of the lock.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `perf bench sched pipe`: two tasks (comm `sched-pipe`) waking each other as fast as the machine allows;
/// the loop count is effectively unbounded, the time is not.
pub const SCHED_PIPE: &[&str] = &["perf", "bench", "sched", "pipe", "-l", "1000000000"];

/// `argv` bounded by `timeout`: SIGKILL for the whole process group after `bound`.
pub fn bounded_argv(bound: Duration, argv: &[&str]) -> Vec<String> {
    let mut v = vec![
        "timeout".to_string(),
        "-s".into(),
        "KILL".into(),
        format!("{}s", bound.as_secs().max(1)),
    ];
    v.extend(argv.iter().map(|s| s.to_string()));
    v
}

pub struct Load {
    child: Child,
}

impl Load {
    /// `argv` under `timeout` (so [`Load::pid`] is timeout's pid, not the command's).
    pub fn start(bound: Duration, argv: &[&str]) -> Load {
        Self::self_bounded(&bounded_argv(bound, argv))
    }

    /// A command that bounds its own run time (ping -w, a script with a deadline): no `timeout` in between, so
    /// [`Load::pid`] is the command's own pid. Still a process group that Drop kills whole.
    pub fn self_bounded(argv: &[String]) -> Load {
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {argv:?}: {e}"));
        Load { child }
    }

    /// [`SCHED_PIPE`] for at most [`LOAD_BOUND`].
    pub fn sched_pipe() -> Load {
        Self::start(LOAD_BOUND, SCHED_PIPE)
    }

    /// [`SCHED_PIPE`] at nice -15: its pair keeps its rate on two CPUs shared with a flood and the decoder that
    /// drains it, so a threshold on that rate is crossed as soon as it starts.
    pub fn sched_pipe_favoured() -> Load {
        let argv: Vec<&str> = ["nice", "-n", "-15"]
            .into_iter()
            .chain(SCHED_PIPE.iter().copied())
            .collect();
        Self::start(LOAD_BOUND, &argv)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process calls itself `comm` (a script that renames itself may start through a wrapper
    /// such as a pyenv shim, and its first wakeups would carry the wrapper's name). Panics after 20 s.
    pub fn wait_for_comm(&self, comm: &str) {
        let path = format!("/proc/{}/comm", self.pid());
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&path).unwrap_or_default().trim() != comm {
            assert!(
                std::time::Instant::now() < end,
                "process {} never took the name {comm}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the whole group and reaps the leader; idempotent.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Processes whose command line contains `needle` (to check that a load really ended).
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Field case A's noisy neighbour: a raw ICMP socket whose task is named `isc-socket`, woken by every ICMP
/// packet on the host; ends by itself after [`LOAD_BOUND`]. It names itself after the socket is open, so once
/// [`Load::wait_for_comm`] returns, every wakeup it gets from ICMP carries the name.
pub fn isc_socket_argv() -> Vec<String> {
    let script = format!(
        "import ctypes,socket,time\n\
         s=socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\ns.settimeout(1)\n\
         ctypes.CDLL(None).prctl(15, b'isc-socket', 0, 0, 0)\n\
         end=time.time()+{}\nwhile time.time()<end:\n  try: s.recv(2048)\n  except socket.timeout: pass\n",
        LOAD_BOUND.as_secs()
    );
    vec!["python3".into(), "-c".into(), script]
}

/// `ping -i 0.002 127.0.0.1` (500 packets/s) for at most [`LOAD_BOUND`], by ping's own deadline. It is
/// busybox's ping through a link named `ping` (so the task's comm is `ping`): iputils ping busy-waits between
/// packets at intervals under 10 ms and would take a whole core of this 2-core machine.
pub fn fast_ping_argv() -> Vec<String> {
    let dir = std::env::temp_dir().join("sonde-test-bin");
    let link = dir.join("ping");
    if !link.exists() {
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Another test binary may make it at the same moment: either link is the same.
        let _ = std::os::unix::fs::symlink("/bin/busybox", &link);
    }
    let w = LOAD_BOUND.as_secs().to_string();
    let ping = link.to_string_lossy().into_owned();
    [ping.as_str(), "-q", "-i", "0.002", "-w", &w, "127.0.0.1"]
        .map(String::from)
        .to_vec()
}

/// A busy program (`spin_here` in a loop) whose compressed `.debug_*` sections claim to inflate to 4 EiB: built
/// with `gcc -g -gz=zlib` into `dir`, then each compression header's `ch_size` rewritten. It runs like any other
/// binary (debug sections are not loaded); a symbolizer that trusts the header allocates 4 EiB and aborts.
pub fn crafted_debug_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("spin.c");
    let bin = dir.join("spin-crafted");
    std::fs::write(
        &src,
        "volatile unsigned long sink;\n\
         __attribute__((noinline)) void spin_here(void) { for (unsigned long i = 0; i < 100000000UL; i++) sink += i; }\n\
         int main(void) { for (;;) spin_here(); }\n",
    )
    .expect("writing spin.c");
    let ok = Command::new("gcc")
        .args(["-O1", "-g", "-gz=zlib", "-fno-omit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc runs")
        .success();
    assert!(ok, "gcc -gz=zlib failed");
    let mut elf = std::fs::read(&bin).expect("reading the binary");
    let u16_at = |d: &[u8], o: usize| u16::from_le_bytes([d[o], d[o + 1]]) as usize;
    let u64_at = |d: &[u8], o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap()) as usize;
    let u32_at = |d: &[u8], o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&elf, 0x28),
        u16_at(&elf, 0x3a),
        u16_at(&elf, 0x3c),
        u16_at(&elf, 0x3e),
    );
    let names = u64_at(&elf, shoff + shstrndx * shentsize + 24);
    let mut patched = 0;
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        let name_at = names + u32_at(&elf, sh);
        let name: Vec<u8> = elf[name_at..]
            .iter()
            .take_while(|b| **b != 0)
            .copied()
            .collect();
        const SHF_COMPRESSED: usize = 0x800;
        if name.starts_with(b".debug_") && u64_at(&elf, sh + 8) & SHF_COMPRESSED != 0 {
            // Elf64_Chdr: ch_type (4), ch_reserved (4), ch_size (8), ch_addralign (8).
            let chdr = u64_at(&elf, sh + 24);
            elf[chdr + 8..chdr + 16].copy_from_slice(&(1u64 << 62).to_le_bytes());
            patched += 1;
        }
    }
    assert!(patched > 0, "no compressed .debug_* section to craft");
    std::fs::write(&bin, elf).expect("writing the crafted binary");
    bin
}
