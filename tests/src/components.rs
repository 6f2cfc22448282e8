//! Sonde's own processes under test: the operator and the node agent, run from the workspace's binaries with
//! the admin kubeconfig, logging into a file that is printed when a test fails.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::{ControlPlane, Identity};

/// Builds the operator and agent binaries once per test process and returns the directory holding them.
fn bin_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--bins",
                "-p",
                "sonde-agent",
                "-p",
                "sonde-operator",
            ])
            .current_dir(crate::repo_root())
            .status()
            .expect("cargo build runs");
        assert!(
            status.success(),
            "building sonde-agent and sonde-operator failed"
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::repo_root().join("target"));
        target.join("debug")
    })
}

/// A running Sonde process; killed (SIGKILL) on drop. Its log is kept in `log`.
pub struct Component {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Component {
    fn spawn(plane: &ControlPlane, name: &'static str, args: &[String], log: PathBuf) -> Component {
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin_dir().join(name))
            .args(args)
            .env("KUBECONFIG", plane.kubeconfig(Identity::Admin))
            .env(
                "RUST_LOG",
                "info,kube=warn,sonde_agent=debug,sonde_operator=debug",
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Component { name, child, log }
    }

    /// The operator, leading through a Lease in `lease_namespace`.
    pub fn operator(
        plane: &ControlPlane,
        lease_namespace: &str,
        dir: &std::path::Path,
    ) -> Component {
        let args = [
            "--metrics-addr=127.0.0.1:0".to_string(),
            format!("--lease-namespace={lease_namespace}"),
            "--identity=e2e-operator".into(),
            "--lease-seconds=4".into(),
        ];
        Self::spawn(plane, "sonde-operator", &args, dir.join("operator.log"))
    }

    /// The agent for this host's Node, writing results to `dir/results`.
    pub fn agent(plane: &ControlPlane, dir: &std::path::Path) -> Component {
        let args = [
            format!("--node-name={}", crate::this_node_name()),
            format!("--spool={}", dir.join("spool").display()),
            format!("--storage-url=file://{}", dir.join("results").display()),
        ];
        Self::spawn(plane, "sonde-agent", &args, dir.join("agent.log"))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}
