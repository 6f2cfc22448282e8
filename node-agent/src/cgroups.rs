//! Pods to cgroup v2 ids, the way the kubelet lays cgroups out. Both kubelet cgroup drivers and the three QoS
//! classes are tried, so the agent needs no configuration beyond the cgroup root:
//!
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/<runtime>-<id>.scope`;
//!   Guaranteed pods sit directly under `kubepods.slice/kubepods-pod<uid_>.slice`.
//! - cgroupfs: `kubepods/<qos>/pod<uid>/<id>`; Guaranteed: `kubepods/pod<uid>/<id>`.
//!
//! `<runtime>` is `cri-containerd`, `crio` or `docker`. The filter admits the whole pod subtree (every
//! container, including ones started later, once the pod is resolved again).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

/// How deep below the cgroup2 hierarchy's root `dir` (a cgroup2 mount point) is: the mount's root field in
/// /proc/self/mountinfo (`/` for a host mount; deeper inside a cgroup namespace or a bind mount of a subtree).
fn mount_root_depth(dir: &Path) -> u32 {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter(|l| l.contains(" - cgroup2 "))
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4).map(Path::new) == Some(dir))
                .then(|| f[3].split('/').filter(|c| !c.is_empty()).count() as u32)
        })
        .unwrap_or(0)
}

#[derive(Clone, Debug)]
pub struct PodCgroups {
    root: PathBuf,
}

/// What resolving one pod found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    /// The pod's cgroup directory, when present on this node.
    pub dir: Option<PathBuf>,
    /// Ids of the pod cgroup and everything below it.
    pub ids: Vec<u64>,
    /// Running containers whose own cgroup was not found under the pod (a runtime naming we do not know).
    pub missing_containers: Vec<String>,
}

const QOS: [&str; 3] = ["besteffort", "burstable", "guaranteed"];

impl PodCgroups {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PodCgroups { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cgroup holding every pod (`kubepods.slice` or `kubepods` under the root) as (cgroup id, level below
    /// the v2 root). The root may itself sit below the v2 mount's root (a nested cgroup namespace), so the level
    /// counts from the mount, read from /proc/self/mountinfo; on the usual layout it is 1.
    pub fn pods_root(&self, a_pod: Option<&Path>) -> Option<(u64, u32)> {
        use std::os::unix::fs::MetadataExt;
        // The hierarchy a resolved pod actually lives in: a node can carry both names (one left behind by an
        // earlier kubelet or test with the other cgroup driver), and the wrong one hides nothing.
        let from_pod = a_pod
            .and_then(|d| d.strip_prefix(&self.root).ok())
            .and_then(|rel| rel.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        let names: Vec<String> = match from_pod {
            Some(n) => vec![n],
            None => vec!["kubepods.slice".into(), "kubepods".into()],
        };
        names.iter().find_map(|name| {
            let dir = self.root.join(name);
            let ino = std::fs::metadata(&dir).ok()?.ino();
            Some((ino, 1 + mount_root_depth(&self.root)))
        })
    }

    /// Where the pod's cgroup can be, most likely first (its QoS class when known).
    pub fn candidates(&self, uid: &str, qos: Option<&str>) -> Vec<PathBuf> {
        let underscored = uid.replace('-', "_");
        let mut classes: Vec<String> = qos.map(|q| q.to_lowercase()).into_iter().collect();
        classes.extend(
            QOS.iter()
                .map(|q| q.to_string())
                .filter(|q| Some(q.as_str()) != qos.map(|q| q.to_lowercase()).as_deref()),
        );
        let mut out = Vec::new();
        for class in &classes {
            if class == "guaranteed" {
                out.push(
                    self.root
                        .join(format!("kubepods.slice/kubepods-pod{underscored}.slice")),
                );
                out.push(self.root.join(format!("kubepods/pod{uid}")));
            } else {
                out.push(self.root.join(format!(
                    "kubepods.slice/kubepods-{class}.slice/kubepods-{class}-pod{underscored}.slice"
                )));
                out.push(self.root.join(format!("kubepods/{class}/pod{uid}")));
            }
        }
        out
    }

    pub fn resolve(&self, pod: &Pod) -> Resolved {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return Resolved::default();
        };
        let status = pod.status.as_ref();
        let qos = status.and_then(|s| s.qos_class.as_deref());
        let Some(dir) = self.candidates(uid, qos).into_iter().find(|d| d.is_dir()) else {
            return Resolved::default();
        };
        let mut ids = Vec::new();
        if sonde_probes::cgroup::subtree_ids(&dir, &mut ids).is_err() {
            // The pod went away between the lookup and the walk.
            return Resolved::default();
        }
        let children: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let missing_containers = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.container_id.as_deref())
            .filter_map(|id| id.split_once("://").map(|(_, id)| id))
            .filter(|id| !children.iter().any(|name| container_dir_matches(name, id)))
            .map(String::from)
            .collect();
        Resolved {
            dir: Some(dir),
            ids,
            missing_containers,
        }
    }
}

fn container_dir_matches(name: &str, id: &str) -> bool {
    name == id
        || ["cri-containerd-", "crio-", "docker-"]
            .iter()
            .any(|p| name.strip_prefix(p).and_then(|r| r.strip_suffix(".scope")) == Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_root_is_the_hierarchy_a_resolved_pod_lives_in() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let pod = root.path().join("kubepods/burstable/podx");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::create_dir_all(root.path().join("kubepods.slice")).unwrap();
        let ino = |d: &str| std::fs::metadata(root.path().join(d)).unwrap().ino();
        let c = PodCgroups::new(root.path());
        assert_eq!(c.pods_root(Some(&pod)).unwrap().0, ino("kubepods"));
        assert_eq!(c.pods_root(None).unwrap().0, ino("kubepods.slice"));
    }

    fn pod(uid: &str, qos: &str, container: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": uid},
            "status": {"qosClass": qos, "containerStatuses": [{
                "name": "c", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                "containerID": container}]},
        }))
        .unwrap()
    }

    #[test]
    fn finds_systemd_and_cgroupfs_layouts_and_reports_unknown_containers() {
        let root = tempfile::tempdir().unwrap();
        let uid = "0a1b-2c3d";
        let sys = root
            .path()
            .join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b_2c3d.slice");
        std::fs::create_dir_all(sys.join("cri-containerd-abc.scope")).unwrap();
        let cg = PodCgroups::new(root.path());
        let r = cg.resolve(&pod(uid, "Burstable", "containerd://abc"));
        assert_eq!(r.dir.as_deref(), Some(sys.as_path()));
        assert_eq!(r.ids.len(), 2);
        assert!(r.missing_containers.is_empty());
        let r = cg.resolve(&pod(uid, "Burstable", "cri-o://zzz"));
        assert_eq!(r.missing_containers, vec!["zzz".to_string()]);

        let root = tempfile::tempdir().unwrap();
        let fs = root.path().join("kubepods/pod0a1b-2c3d");
        std::fs::create_dir_all(fs.join("abc")).unwrap();
        let r = PodCgroups::new(root.path()).resolve(&pod(uid, "Guaranteed", "containerd://abc"));
        assert_eq!(r.dir.as_deref(), Some(fs.as_path()));
        assert!(r.missing_containers.is_empty());
        // A pod whose cgroup is not on this node resolves to nothing.
        let r =
            PodCgroups::new(root.path()).resolve(&pod("ffff", "BestEffort", "containerd://abc"));
        assert_eq!(r, Resolved::default());
    }
}
