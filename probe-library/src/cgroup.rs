//! Where cgroup v2 lives on this host and how a directory becomes the ids the in-kernel filter compares
//! (`bpf_get_current_cgroup_id()` is the inode number of the task's cgroup v2 directory).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The cgroup v2 mount: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones.
pub fn v2_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && unified.join("cgroup.procs").exists()
    {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// The ids of `dir` and every cgroup below it: tasks live in leaves (a pod's containers under its slice).
pub fn subtree_ids(dir: &Path, out: &mut Vec<u64>) -> io::Result<()> {
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    out.push(std::fs::metadata(dir).map_err(with_path)?.ino());
    for entry in std::fs::read_dir(dir).map_err(with_path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            subtree_ids(&entry.path(), out)?;
        }
    }
    Ok(())
}
