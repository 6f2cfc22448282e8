//! `#[repr(C)]` twins of the structs in `probe-library/bpf/sonde_abi.h`. Each names its C twin; both sides assert
//! the size, so a layout change on one side fails the build on the other.
#![allow(
    unsafe_code,
    reason = "aya's Pod marker and reading kernel-written bytes need it; nothing else here does"
)]

pub const TASK_COMM_LEN: usize = 16;
pub const HIST_SLOTS: usize = 64;
pub const MAX_PORTS: usize = 16;
pub const EV_BREACH: u32 = 1;

/// Slots of the `stats` per-CPU array (C `enum sonde_stat`).
pub mod stat {
    pub const SEEN: u32 = 0;
    pub const EMITTED: u32 = 1;
    pub const DROPPED: u32 = 2;
    pub const BREACHES: u32 = 3;
}

/// C `struct wakeup_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WakeupEvent {
    pub ts_ns: u64,
    pub waker_pid: u32,
    pub waker_tid: u32,
    pub wakee_pid: u32,
    pub wakee_tid: u32,
    pub wakee_cgroup: u64,
    pub window_count: u32,
    pub flags: u32,
    pub cpu: u32,
    pub _pad: u32,
    pub waker_comm: [u8; TASK_COMM_LEN],
    pub wakee_comm: [u8; TASK_COMM_LEN],
}

/// C `struct wakeup_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WakeupKey {
    pub waker_tid: u32,
    pub wakee_tid: u32,
}

/// C `struct wakeup_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WakeupVal {
    pub count: u64,
    pub window_start_ns: u64,
    pub window_count: u32,
    pub breached_windows: u32,
    pub waker_pid: u32,
    pub wakee_pid: u32,
    pub waker_comm: [u8; TASK_COMM_LEN],
    pub wakee_comm: [u8; TASK_COMM_LEN],
}

/// C `enum pkt_stage`.
pub mod stage {
    pub const XMIT: u8 = 0;
    pub const NETIF_RECEIVE: u8 = 1;
    pub const TCP_RCV_ESTABLISHED: u8 = 2;
    pub const TCP_RCV_STATE_PROCESS: u8 = 3;
    pub const NAMES: [&str; 4] = [
        "dev_queue_xmit",
        "__netif_receive_skb",
        "tcp_rcv_established",
        "tcp_rcv_state_process",
    ];
}

/// C `struct pkt_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PktEvent {
    pub ts_ns: u64,
    pub delta_ns: u64,
    pub stage_delta_ns: u64,
    pub netns: u32,
    pub ifindex: u32,
    pub pid: u32,
    pub cpu: u32,
    pub seq: u32,
    pub ack: u32,
    pub family: u32,
    pub win: u16,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub stage: u8,
    pub flags: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub ifname: [u8; 16],
    pub comm: [u8; TASK_COMM_LEN],
}

/// C `struct stack_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub pid: u32,
    pub kstack: i32,
    pub ustack: i32,
    pub comm: [u8; TASK_COMM_LEN],
    pub _pad: u32,
    /// When the process started: its thread group leader's `start_boottime`, in ns after boot.
    pub start_ns: u64,
}

/// C `struct latency_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LatencyEvent {
    pub ts_ns: u64,
    pub latency_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub id: u32,
    pub flags: u32,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub family: u32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// C `struct note_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NoteEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub ppid: u32,
    pub cpu: u32,
    pub value: u32,
    pub family: u32,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; TASK_COMM_LEN],
    pub text: [u8; 128],
}

/// C `MAX_COMMS`: entries of the `cfg_comms` filter.
pub const MAX_COMMS: usize = 8;

/// C `struct comm_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CommKey {
    pub comm: [u8; TASK_COMM_LEN],
}

const _: () = {
    assert!(size_of::<WakeupEvent>() == 80);
    assert!(size_of::<WakeupKey>() == 8);
    assert!(size_of::<WakeupVal>() == 64);
    assert!(size_of::<PktEvent>() == 128);
    assert!(size_of::<StackKey>() == 40);
    assert!(size_of::<LatencyEvent>() == 96);
    assert!(size_of::<NoteEvent>() == 208);
};

// SAFETY: plain-old-data: #[repr(C)], integer and byte-array fields only, every bit pattern valid.
unsafe impl aya::Pod for WakeupKey {}
unsafe impl aya::Pod for WakeupVal {}
unsafe impl aya::Pod for StackKey {}
unsafe impl aya::Pod for CommKey {}

/// A struct every bit pattern of which is valid, so it can be read from bytes the kernel wrote.
pub trait Plain: Copy {}
impl Plain for WakeupEvent {}
impl Plain for PktEvent {}
impl Plain for LatencyEvent {}
impl Plain for NoteEvent {}

/// Reads `T` from the start of a ring-buffer record; `None` when the record is too short.
pub fn read<T: Plain>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked above; T is Plain (any bit pattern valid); read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A kernel `char[N]` up to its first NUL, lossily as UTF-8.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A comm as the kernel stores it (NUL-padded, truncated to 15 bytes).
pub fn comm_key(comm: &str) -> CommKey {
    let mut k = CommKey::default();
    let b = comm.as_bytes();
    let n = b.len().min(TASK_COMM_LEN - 1);
    k.comm[..n].copy_from_slice(&b[..n]);
    k
}
