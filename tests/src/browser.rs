//! Headless Chromium (Debian's `chromium`) driven over W3C WebDriver by `chromedriver` (`chromium-driver`): a real
//! browser for the web page's tests, with nothing between the test and the protocol but HTTP.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    session: String,
    _profile: tempfile::TempDir,
}

/// Where screenshots go: kept after the run (CI keeps `target/artifacts`).
pub fn artifacts_dir() -> PathBuf {
    let dir = crate::repo_root().join("target/artifacts/web");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

impl Browser {
    /// chromedriver on a free port, and one headless Chromium session with an empty profile. Chromium's own
    /// network chatter is turned off: this machine refuses it, and a test must not depend on it.
    pub async fn start() -> Browser {
        let port = crate::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/deps.sh installs it)");
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let up = crate::wait_for(Duration::from_secs(20), || async {
            http.get(format!("{root}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "chromedriver did not start on port {port}");
        let profile = tempfile::tempdir().expect("a profile dir");
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1800",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let answer: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await
            .expect("POST /session")
            .json()
            .await
            .expect("a session answer");
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_string();
        Browser {
            driver,
            http,
            session: format!("{root}/session/{id}"),
            _profile: profile,
        }
    }

    /// One WebDriver command; its `value`, or a panic naming the command and the driver's error.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let answer: Value = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if answer["value"]["error"].is_string() {
            panic!("{method} {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// Clears a field and types `text` into it, key by key.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Runs `script` (a function body: `return ...`) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Runs `script` every 250 ms until it returns something other than null, false, 0, "" or []; that value,
    /// or None after `limit`.
    pub async fn wait_for(&self, limit: Duration, script: &str) -> Option<Value> {
        let until = Instant::now() + limit;
        loop {
            let v = self.eval(script).await;
            let empty = match &v {
                Value::Null => true,
                Value::Bool(b) => !b,
                Value::Number(n) => n.as_f64() == Some(0.0),
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(_) => false,
            };
            if !empty {
                return Some(v);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A PNG of the page as it stands, into `dir`; its path.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let b64 = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("a screenshot"))
            .expect("base64 PNG");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing the screenshot");
        path
    }

    /// Ends the session (the browser exits) and the driver.
    pub async fn quit(mut self) {
        let _ = self
            .http
            .delete(&self.session)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        self.stop_driver();
    }

    fn stop_driver(&mut self) {
        // The driver leads its process group; the browser it started is in it too.
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_child(&self.driver),
            rustix::process::Signal::KILL,
        );
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop_driver();
    }
}
