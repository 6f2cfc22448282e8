use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

/// This host's name, which is also its Node's name (as the kubelet would register it).
pub fn this_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "sonde-e2e-node".into())
}

/// Registers this host as a Ready Node (idempotent) and returns its name.
pub async fn register_this_node(client: &Client) -> Result<String> {
    let name = this_node_name();
    let api: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::apply("sonde-e2e-kubelet").force();
    let node = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
    });
    api.patch(&name, &pp, &Patch::Apply(node))
        .await
        .context("registering the node")?;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "sonde e2e host", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        },
    });
    api.patch_status(&name, &pp, &Patch::Apply(status))
        .await
        .context("node status")?;
    Ok(name)
}

/// How the kubelet names pod cgroups: the two drivers it supports.
#[derive(Clone, Copy, Debug)]
pub enum CgroupDriver {
    /// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope`
    Systemd,
    /// `kubepods/besteffort/pod<uid>/<id>`
    Cgroupfs,
}

/// A Pod bound to this node whose one container is a real process in a kubelet-named cgroup (BestEffort QoS),
/// with the Pod's status patched to Running and the container id. Dropping it kills the process, removes the
/// cgroups it made and deletes the Pod.
pub struct RealPod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub container_id: String,
    pub cgroup: PathBuf,
    pub child: Child,
    made: Vec<PathBuf>,
    client: Client,
}

impl RealPod {
    pub async fn start(
        client: &Client,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        driver: CgroupDriver,
        argv: &[impl AsRef<str>],
    ) -> Result<RealPod> {
        let argv: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
        let node = this_node_name();
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "sonde.dev/e2e-fixture:real-process", "command": argv}],
            },
        }))?;
        let pod = api
            .create(&PostParams::default(), &pod)
            .await
            .context("creating the pod")?;
        let uid = pod.uid().context("pod without uid")?;
        let container_id = random_hex(32);

        let root = sonde_cgroup_root();
        let rel: Vec<String> = match driver {
            CgroupDriver::Systemd => vec![
                "kubepods.slice".into(),
                "kubepods-besteffort.slice".into(),
                format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
                format!("cri-containerd-{container_id}.scope"),
            ],
            CgroupDriver::Cgroupfs => vec![
                "kubepods".into(),
                "besteffort".into(),
                format!("pod{uid}"),
                container_id.clone(),
            ],
        };
        let mut made = Vec::new();
        let mut dir = root.clone();
        for part in &rel {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                made.push(dir.clone());
            }
        }
        // The shell joins the cgroup before exec, so the process and anything it forks start inside it.
        let script = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", dir.display());
        let child = Command::new("sh")
            .args(["-c", &script, "sh"])
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the container process")?;
        let mut real = RealPod {
            name: name.into(),
            namespace: namespace.into(),
            uid,
            container_id,
            cgroup: dir,
            child,
            made,
            client: client.clone(),
        };
        real.wait_in_cgroup()?;
        real.set_running().await?;
        Ok(real)
    }

    fn wait_in_cgroup(&mut self) -> Result<()> {
        let pid = self.child.id();
        for _ in 0..200 {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let want = self
                .cgroup
                .strip_prefix(sonde_cgroup_root())
                .expect("under the root");
            if cg
                .lines()
                .any(|l| l.strip_prefix("0::/").is_some_and(|p| Path::new(p) == want))
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("container process exited early: {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        anyhow::bail!("process {pid} never joined {}", self.cgroup.display())
    }

    async fn set_running(&self) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "status": {
                "phase": "Running", "qosClass": "BestEffort", "hostIP": "127.0.0.1", "startTime": now,
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                "containerStatuses": [{
                    "name": "main", "ready": true, "started": true, "restartCount": 0,
                    "image": "sonde.dev/e2e-fixture:real-process", "imageID": "",
                    "containerID": format!("containerd://{}", self.container_id),
                    "state": {"running": {"startedAt": now}},
                }],
            },
        });
        api.patch_status(
            &self.name,
            &PatchParams::apply("sonde-e2e-kubelet").force(),
            &Patch::Apply(status),
        )
        .await
        .context("patching pod status")?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RealPod {
    fn drop(&mut self) {
        // Everything in the container's cgroup goes, forked children included, as when a kubelet stops a pod.
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in self.made.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = self.name.clone();
        // The namespace going away deletes the Pod anyway; this is for tests that check pods leaving mid-run.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = api
                    .delete(&name, &DeleteParams::background().grace_period(0))
                    .await;
            });
        }
    }
}

/// The cgroup v2 mount (unified hosts: /sys/fs/cgroup; hybrid: /sys/fs/cgroup/unified), found independently of
/// the agent so the test checks the agent's own resolution.
fn sonde_cgroup_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        || !hybrid.join("cgroup.procs").exists()
    {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        hybrid.to_path_buf()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
