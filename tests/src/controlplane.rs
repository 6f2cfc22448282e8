use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

/// Who a client or kubectl call acts as: the two identities up.sh writes kubeconfigs for.
#[derive(Clone, Copy, Debug)]
pub enum Identity {
    /// system:masters.
    Admin,
    /// `sonde-user`: may use Sonde objects and read pods only in namespace `sonde-user`.
    User,
}

/// The running control plane: started by the first test that asks (or reused when `up.sh` finds it healthy).
pub struct ControlPlane {
    pub dir: PathBuf,
}

static PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// Brings the control plane up (once per process; `up.sh` serialises test binaries with a lock and reuses a
    /// healthy plane) and installs the CRDs. Panics with up.sh's own output when it cannot start.
    pub async fn get() -> &'static ControlPlane {
        let plane = PLANE.get_or_init(|| Self::up().map_err(|e| format!("{e:#}")));
        let plane = match plane {
            Ok(p) => p,
            Err(e) => panic!("control plane: {e}"),
        };
        plane
            .install_crds()
            .await
            .expect("Sonde CRDs install and become Established");
        plane
    }

    /// A control plane of the caller's own in `dir` (not the one the e2e binaries share), with the CRDs: the fleet
    /// harness's, whose thousand simulated nodes no other test may see. [`Self::stop`] ends it.
    pub async fn start_in(dir: &std::path::Path) -> Result<ControlPlane> {
        let plane = Self::up_in(Some(dir))?;
        plane.install_crds().await?;
        Ok(plane)
    }

    /// Stops a control plane [`Self::start_in`] started (its directory stays when KEEP_LOGS=1).
    pub fn stop(&self) {
        let _ = Command::new(crate::repo_root().join("tests/controlplane/down.sh"))
            .arg(&self.dir)
            .status();
    }

    fn up() -> Result<ControlPlane> {
        Self::up_in(None)
    }

    /// `up.sh [DIR]`: DIR, or the shared plane's ($SONDE_CP_DIR).
    fn up_in(dir: Option<&std::path::Path>) -> Result<ControlPlane> {
        let script = crate::repo_root().join("tests/controlplane/up.sh");
        let out = Command::new(&script)
            .args(dir)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim());
        Ok(ControlPlane { dir })
    }

    pub fn kubeconfig(&self, who: Identity) -> PathBuf {
        self.dir.join(match who {
            Identity::Admin => "admin.kubeconfig",
            Identity::User => "user.kubeconfig",
        })
    }

    pub async fn client(&self, who: Identity) -> Client {
        let kc = Kubeconfig::read_from(self.kubeconfig(who)).expect("kubeconfig written by up.sh");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("a usable kubeconfig");
        Client::try_from(config).expect("a client")
    }

    /// Stops the API server (etcd and the controller manager keep running) until [`Self::start_apiserver`].
    /// Panics, with the script's output, when it cannot.
    pub fn stop_apiserver(&self) {
        self.apiserver("stop");
    }

    /// Starts the API server [`Self::stop_apiserver`] stopped, with the same command; returns once it is ready.
    pub fn start_apiserver(&self) {
        self.apiserver("start");
    }

    fn apiserver(&self, what: &str) {
        let script = crate::repo_root().join("tests/controlplane/apiserver.sh");
        let out = Command::new(&script)
            .arg(&self.dir)
            .arg(what)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "apiserver.sh {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// kubectl as `who`; returns (success, stdout, stderr).
    pub fn kubectl(&self, who: Identity, args: &[&str]) -> (bool, String, String) {
        kubectl_with(&self.kubeconfig(who), args)
    }

    /// Server-side applies every generated CRD in crds/ and waits until each is Established.
    pub async fn install_crds(&self) -> Result<Vec<String>> {
        let client = self.client(Identity::Admin).await;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(crate::repo_root().join("crds"))? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let crd: CustomResourceDefinition =
                serde_yaml::from_str(&std::fs::read_to_string(&path)?)
                    .with_context(|| format!("parsing {}", path.display()))?;
            let name = crd.metadata.name.clone().context("CRD without a name")?;
            api.patch(
                &name,
                &PatchParams::apply("sonde-e2e").force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("applying {}", path.display()))?;
            names.push(name);
        }
        for name in &names {
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(api.clone(), name, conditions::is_crd_established()),
            )
            .await
            .with_context(|| format!("{name} not Established within 30s"))??;
        }
        Ok(names)
    }
}

/// kubectl with any kubeconfig (a service-account token's, say); returns (success, stdout, stderr).
pub fn kubectl_with(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
