//! Sonde's own processes under test: the operator and the node agent, run from the workspace's binaries with
//! the admin kubeconfig, logging into a file that is printed when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::{ControlPlane, Identity};

/// Builds the operator and agent binaries once per test process and returns the directory holding them.
fn bin_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Binaries built elsewhere (bench/fleet.sh's release build), taken as they are.
        if let Some(dir) = std::env::var_os("SONDE_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--bins",
                "-p",
                "sonde-agent",
                "-p",
                "sonde-operator",
                "-p",
                "sonde-results",
                "-p",
                "sonde-cli",
            ])
            .current_dir(crate::repo_root())
            .status()
            .expect("cargo build runs");
        assert!(
            status.success(),
            "building sonde-agent, sonde-operator and sonde-results failed"
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::repo_root().join("target"));
        target.join("debug")
    })
}

/// The path of one of the workspace's binaries (`sonde`, `sonde-agent`, ...), built on first use.
pub fn binary(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A running Sonde process; killed (SIGKILL) on drop. Its log is kept in `log`.
pub struct Component {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
    /// Where its /metrics, /healthz and /readyz are (127.0.0.1), when the test chose the port.
    pub metrics_port: Option<u16>,
    /// Where it serves its API (the results server).
    pub api_port: Option<u16>,
    /// Where it takes the agents' uploads (the results server with `SONDE_AGENT_USER`).
    pub intake_port: Option<u16>,
}

impl Component {
    /// Any of the binaries with these arguments and environment (`RUST_LOG` in `env` replaces the tests'
    /// default), logging to `log`.
    pub fn process(
        kubeconfig: &Path,
        name: &'static str,
        args: &[String],
        log: PathBuf,
        env: &[(String, String)],
    ) -> Component {
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin_dir().join(name))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                "info,kube=warn,sonde_agent=debug,sonde_operator=debug",
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Component {
            name,
            child,
            log,
            metrics_port: None,
            api_port: None,
            intake_port: None,
        }
    }

    /// The operator acting as the identity in `kubeconfig`, leading through a Lease in `lease_namespace`.
    pub fn operator(kubeconfig: &Path, lease_namespace: &str, dir: &Path) -> Component {
        Self::operator_named(kubeconfig, lease_namespace, dir, "e2e-operator", 0)
    }

    /// The operator with extra environment (such as `SONDE_NODE_WIDE_NAMESPACES`).
    pub fn operator_with_env(
        kubeconfig: &Path,
        lease_namespace: &str,
        dir: &Path,
        env: &[(String, String)],
    ) -> Component {
        let args = [
            "--metrics-addr=127.0.0.1:0".to_string(),
            format!("--lease-namespace={lease_namespace}"),
            "--identity=e2e-operator".into(),
            "--lease-seconds=4".into(),
        ];
        Self::process(
            kubeconfig,
            "sonde-operator",
            &args,
            dir.join("e2e-operator.log"),
            env,
        )
    }

    /// An operator replica with its own Lease identity and metrics port (0: any free port).
    pub fn operator_named(
        kubeconfig: &Path,
        lease_namespace: &str,
        dir: &Path,
        identity: &str,
        metrics_port: u16,
    ) -> Component {
        let args = [
            format!("--metrics-addr=127.0.0.1:{metrics_port}"),
            format!("--lease-namespace={lease_namespace}"),
            format!("--identity={identity}"),
            "--lease-seconds=4".into(),
        ];
        let log = dir.join(format!("{identity}.log"));
        let mut c = Self::process(kubeconfig, "sonde-operator", &args, log, &[]);
        c.metrics_port = (metrics_port != 0).then_some(metrics_port);
        c
    }

    /// The agent for this host's Node acting as the identity in `kubeconfig`, writing results to `dir/results`.
    pub fn agent(kubeconfig: &Path, dir: &Path) -> Component {
        Self::agent_with_env(kubeconfig, dir, &[])
    }

    /// The agent with extra environment (such as an object store's `AWS_*` settings).
    /// `SONDE_STORAGE_URL` in `env` replaces the default `dir/results`.
    pub fn agent_with_env(kubeconfig: &Path, dir: &Path, env: &[(String, String)]) -> Component {
        let port = free_port();
        let mut args = vec![
            format!("--node-name={}", crate::this_node_name()),
            format!("--spool={}", dir.join("spool").display()),
            format!("--metrics-addr=127.0.0.1:{port}"),
        ];
        args.extend(default_storage(dir, env));
        let log = dir.join("agent.log");
        let mut c = Self::process(kubeconfig, "sonde-agent", &args, log, env);
        c.metrics_port = Some(port);
        c
    }

    /// The results server acting as the identity in `kubeconfig`, with `env` (storage locations, AWS_*;
    /// `SONDE_STORAGE_URL` replaces the default `dir/results`).
    pub fn results(kubeconfig: &Path, dir: &Path, env: &[(String, String)]) -> Component {
        let (api, metrics, intake) = (free_port(), free_port(), free_port());
        let mut args = vec![
            format!("--listen=127.0.0.1:{api}"),
            format!("--metrics-addr=127.0.0.1:{metrics}"),
            format!("--intake-listen=127.0.0.1:{intake}"),
        ];
        args.extend(default_storage(dir, env));
        let log = dir.join("results-server.log");
        let mut c = Self::process(kubeconfig, "sonde-results", &args, log, env);
        c.metrics_port = Some(metrics);
        c.api_port = Some(api);
        c.intake_port = Some(intake);
        c
    }

    /// SIGTERM, as the kubelet stops a container; the exit status if the process ended within `limit`.
    pub fn terminate(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
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

/// The chart's helm binary: $SONDE_HELM (scripts/tools.sh builds it) or `helm` on PATH.
pub fn helm(args: &[&str]) -> (bool, String, String) {
    let bin = std::env::var("SONDE_HELM").unwrap_or_else(|_| "helm".into());
    let out = Command::new(&bin)
        .args(args)
        .current_dir(crate::repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!("{bin}: {e} (scripts/tools.sh builds helm into ~/.cache/sonde)")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Installs the chart's service accounts and RBAC (rendered by helm into `namespace`) and returns kubeconfigs
/// for the operator and agent service accounts, so tests run them with exactly the chart's privileges.
pub fn chart_identities(plane: &ControlPlane, namespace: &str) -> (PathBuf, PathBuf) {
    let (ok, rbac, err) = helm(&[
        "template",
        "--kube-version=1.35.4",
        "sonde",
        "helm/sonde",
        "-n",
        namespace,
        "--show-only",
        "templates/rbac.yaml",
    ]);
    assert!(ok, "helm template: {err}");
    let file = plane.dir.join(format!("chart-rbac-{namespace}.yaml"));
    std::fs::write(&file, rbac).unwrap();
    let _ = plane.kubectl(Identity::Admin, &["create", "namespace", namespace]);
    let (ok, _, err) = plane.kubectl(
        Identity::Admin,
        &["apply", "--server-side", "-f", file.to_str().unwrap()],
    );
    assert!(ok, "applying the chart's RBAC: {err}");
    let admin = std::fs::read_to_string(plane.kubeconfig(Identity::Admin)).unwrap();
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server in kubeconfig")
        .to_string();
    let mut out = Vec::new();
    for sa in ["sonde-operator", "sonde-agent"] {
        let (ok, token, err) = plane.kubectl(
            Identity::Admin,
            &["create", "token", sa, "-n", namespace, "--duration=2h"],
        );
        assert!(ok, "token for {sa}: {err}");
        let kc = plane.dir.join(format!("{sa}-{namespace}.kubeconfig"));
        let ca = plane.dir.join("pki/ca.crt");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{server}', certificate-authority: '{}'}}\nusers:\n- name: {sa}\n  user: {{token: '{}'}}\ncontexts:\n- name: {sa}\n  context: {{cluster: c, user: {sa}}}\ncurrent-context: {sa}\n",
            ca.display(),
            token.trim()
        );
        std::fs::write(&kc, text).unwrap();
        out.push(kc);
    }
    (out.remove(0), out.remove(0))
}

/// `--storage-url=file://<dir>/results`, the agents' and the server's default here, unless `env` names one.
fn default_storage(dir: &Path, env: &[(String, String)]) -> Option<String> {
    match env.iter().any(|(k, _)| k == "SONDE_STORAGE_URL") {
        true => None,
        false => Some(format!(
            "--storage-url=file://{}",
            dir.join("results").display()
        )),
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A GET with a bearer token (if any): status, `Content-Type` and body.
pub async fn http_get_as(port: u16, path: &str, token: Option<&str>) -> (u16, String, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{content_type}",
        &url,
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.output().await.expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or_default();
    let (code, kind) = tail.split_once(' ').unwrap_or((tail, ""));
    (
        code.trim().parse().unwrap_or(0),
        kind.trim().to_string(),
        body.to_string(),
    )
}

/// GET `http://127.0.0.1:<port><path>` with curl: (status, body).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", &url])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

/// `curl -s <args>`, blocking: the status as curl prints it (`000` when no answer came: refused, timed out, a
/// certificate not trusted) and the body. For requests the tests build whole (method, headers, TLS, another
/// host than 127.0.0.1), where [`http_get`] and [`http_get_as`] take a port and a path.
pub fn curl_status(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or_default();
    (code.to_string(), body.to_string())
}
