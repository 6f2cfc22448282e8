//! The end-to-end harness: a real control plane (tests/controlplane/up.sh, started once and shared by every test
//! binary), the Sonde CRDs installed, a namespace per test, this host registered as a Node and Pods bound to it
//! whose containers are real processes in cgroups named the way the kubelet names them.

mod controlplane;
mod namespace;
mod node;

pub use controlplane::{ControlPlane, Identity};
pub use namespace::TestNamespace;
pub use node::{CgroupDriver, RealPod, register_this_node, this_node_name};

/// The repository root, for examples/ and crds/.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}
