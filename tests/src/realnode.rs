//! A real single-node cluster for the tests that run Sonde the way a cluster user does: a control plane of its
//! own (tests/controlplane/up.sh) and this host as a kubelet node (tests/node/up.sh: containerd, runc, CNI
//! bridge, kube-proxy, kube-scheduler), with the images from scripts/images.sh imported. Its directory is
//! $SONDE_REALNODE_DIR (default target/realnode); scripts/test.sh tears it down with tests/node/down.sh.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

use crate::{ControlPlane, Identity};

pub struct RealNode {
    pub plane: ControlPlane,
    pub dir: PathBuf,
    /// NODEDIR/env: NODE_NAME, NODE_IP, CONTAINERD_SOCK, KUBECTL, ... and the image names.
    pub env: HashMap<String, String>,
    /// scripts/images.sh's images.env: SONDE_IMAGE, SONDE_PING_IMAGE, SONDE_BUSYBOX_IMAGE, ...
    pub images: HashMap<String, String>,
    /// sha256 of the sonde image archive the node imported: a reused node runs a rebuilt image under the same
    /// tag, so the chart's pods carry it as an annotation and roll when it changes.
    pub sonde_image_sum: String,
}

static NODE: OnceLock<Result<RealNode, String>> = OnceLock::new();

fn run(script: &str, args: &[&PathBuf]) -> Result<String> {
    let path = crate::repo_root().join(script);
    let out = Command::new(&path)
        .args(args)
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn read_env(path: &PathBuf) -> Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect())
}

impl RealNode {
    /// Brings the control plane and the node up once per test process (the scripts reuse a healthy pair).
    pub fn get() -> &'static RealNode {
        match NODE.get_or_init(|| Self::up().map_err(|e| format!("{e:#}"))) {
            Ok(n) => n,
            Err(e) => panic!("real node: {e}"),
        }
    }

    fn up() -> Result<RealNode> {
        let root = std::env::var_os("SONDE_REALNODE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::repo_root().join("target/realnode"));
        let cp = root.join("cp");
        let node = root.join("node");
        let images = std::env::var_os("SONDE_IMAGES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::repo_root().join("target/images"));
        if !images.join("images.env").exists() {
            run("scripts/images.sh", &[])?;
        }
        let cp = PathBuf::from(run("tests/controlplane/up.sh", &[&cp])?);
        let dir = PathBuf::from(run("tests/node/up.sh", &[&cp, &node])?);
        let archive = images.join("sonde.oci.tar");
        let sum = Command::new("sha256sum").arg(&archive).output()?;
        let sonde_image_sum = String::from_utf8(sum.stdout)?
            .split_whitespace()
            .next()
            .with_context(|| format!("sha256sum {}", archive.display()))?
            .to_string();
        Ok(RealNode {
            sonde_image_sum,
            env: read_env(&dir.join("env"))?,
            images: read_env(&images.join("images.env"))?,
            plane: ControlPlane { dir: cp },
            dir,
        })
    }

    pub fn name(&self) -> &str {
        &self.env["NODE_NAME"]
    }

    pub fn image(&self, key: &str) -> &str {
        self.images
            .get(key)
            .unwrap_or_else(|| panic!("{key} not in images.env"))
    }

    /// kubectl as the admin of the node's cluster, who every real-node test is unless it says otherwise:
    /// (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.plane.kubectl(Identity::Admin, args)
    }

    /// [`Self::kubectl`]'s stdout; the test fails with kubectl's error when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?}: {err}");
        out
    }

    /// `kubectl <args> -o json` as the admin, parsed; the test fails when kubectl does.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&a)).expect("kubectl -o json")
    }
}
