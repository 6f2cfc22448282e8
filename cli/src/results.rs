//! `sonde results`: a client of the results server (`sonde-results`), for people and scripts. The server's URL
//! comes from `--server` or `SONDE_RESULTS_URL`; the bearer token from `--token`, `SONDE_TOKEN` or the current
//! kubeconfig user's token (`kubectl create token <account> --audience sonde-results` makes one).

use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

#[derive(Args)]
pub(crate) struct ResultsArgs {
    /// The results server, e.g. http://sonde-results.sonde-system (or SONDE_RESULTS_URL).
    #[arg(long, env = "SONDE_RESULTS_URL", global = true)]
    server: Option<String>,
    /// Bearer token (or SONDE_TOKEN; else the kubeconfig user's token).
    #[arg(long, env = "SONDE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Namespace (else the kubeconfig context's, else default).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// The namespace's TraceJobs, one line each.
    List,
    /// One job: phase, counts, where its results stand, its nodes (JSON with --json).
    Show {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Every stored event of a job as NDJSON, page by page.
    Events {
        job: String,
        /// `field<op>value` (== != >= <= > < ~); repeatable.
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Follow a job's events as NDJSON until every node's events are complete (like `kubectl logs -f`).
    Tail {
        job: String,
        #[arg(long)]
        filter: Vec<String>,
    },
    /// One of a node's result files (summary.json, histograms.json/.txt, folded.txt, flamegraph.svg) to stdout.
    File {
        job: String,
        node: String,
        file: String,
    },
}

/// The kubeconfig's current context: its namespace and its user's token, where it has them.
fn kubeconfig() -> (Option<String>, Option<String>) {
    let path = std::env::var_os("KUBECONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".kube/config"))
        });
    let Some(doc) = path
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_yaml::from_slice::<serde_yaml::Value>(&b).ok())
    else {
        return (None, None);
    };
    let current = doc["current-context"].as_str().unwrap_or_default();
    let named = |list: &str, name: &str| {
        doc[list]
            .as_sequence()
            .and_then(|s| s.iter().find(|e| e["name"].as_str() == Some(name)))
            .cloned()
            .unwrap_or_default()
    };
    let ctx = named("contexts", current);
    let ns = ctx["context"]["namespace"].as_str().map(String::from);
    let user = named("users", ctx["context"]["user"].as_str().unwrap_or_default());
    (ns, user["user"]["token"].as_str().map(String::from))
}

struct Client {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
}

impl Client {
    fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
        accept: &str,
    ) -> Result<reqwest::blocking::Response> {
        let url = format!("{}{path}", self.base);
        let res = self
            .http
            .get(&url)
            .query(query)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .with_context(|| format!("GET {url}"))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let body: serde_json::Value = res.json().unwrap_or_default();
        bail!(
            "{status}: {}",
            body["detail"].as_str().unwrap_or("(no detail)")
        )
    }

    fn json(&self, path: &str, query: &[(&str, &str)]) -> Result<serde_json::Value> {
        Ok(self.get(path, query, "application/json")?.json()?)
    }
}

pub(crate) fn run(args: ResultsArgs) -> Result<()> {
    let (kube_ns, kube_token) = kubeconfig();
    let Some(server) = args.server else {
        bail!("no results server: pass --server or set SONDE_RESULTS_URL");
    };
    let Some(token) = args.token.or(kube_token) else {
        bail!(
            "no token: pass --token, set SONDE_TOKEN, or use a kubeconfig user with a token \
             (`kubectl create token <account> --audience sonde-results`)"
        );
    };
    let ns = args
        .namespace
        .or(kube_ns)
        .unwrap_or_else(|| "default".into());
    let client = Client {
        http: reqwest::blocking::Client::builder().timeout(None).build()?,
        base: format!(
            "{}/api/v1/namespaces/{ns}/tracejobs",
            server.trim_end_matches('/')
        ),
        token,
    };
    let mut out = std::io::stdout().lock();
    match args.what {
        What::List => {
            writeln!(
                out,
                "{:<32} {:<16} {:<10} {:>10} {:>8}  RESULTS",
                "NAME", "PROBE", "PHASE", "CAPTURED", "BREACHES"
            )?;
            for j in client.json("", &[])?.as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{:<32} {:<16} {:<10} {:>10} {:>8}  {}",
                    j["name"].as_str().unwrap_or_default(),
                    j["probe"].as_str().unwrap_or_default(),
                    j["phase"].as_str().unwrap_or_default(),
                    j["captured"],
                    j["breaches"],
                    j["upload"].as_str().unwrap_or("-"),
                )?;
            }
        }
        What::Show { job, json } => {
            let v = client.json(&format!("/{job}"), &[])?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                let st = &v["status"];
                writeln!(
                    out,
                    "{}/{}  {}  {}",
                    ns,
                    job,
                    v["probe"].as_str().unwrap_or_default(),
                    st["phase"].as_str().unwrap_or_default()
                )?;
                writeln!(out, "counts:  {}", st["counts"])?;
                writeln!(
                    out,
                    "results: {}",
                    st["upload"]["state"].as_str().unwrap_or("-")
                )?;
                writeln!(out, "nodes:   {}", v["nodes"])?;
                for row in st["summary"]["rows"].as_array().into_iter().flatten() {
                    writeln!(out, "  {row}")?;
                }
            }
        }
        What::Events { job, filter } => {
            let mut cursor = String::new();
            loop {
                let mut q: Vec<(&str, &str)> = vec![("limit", "5000"), ("cursor", &cursor)];
                q.extend(filter.iter().map(|f| ("filter", f.as_str())));
                let page = client.json(&format!("/{job}/events"), &q)?;
                for e in page["events"].as_array().into_iter().flatten() {
                    writeln!(out, "{e}")?;
                }
                cursor = page["next"].as_str().unwrap_or_default().to_string();
                if page["caughtUp"] == true {
                    break;
                }
            }
        }
        What::Tail { job, filter } => {
            let q: Vec<(&str, &str)> = filter.iter().map(|f| ("filter", f.as_str())).collect();
            let res = client.get(&format!("/{job}/events/tail"), &q, "application/x-ndjson")?;
            for line in std::io::BufReader::new(res).lines() {
                writeln!(out, "{}", line?)?;
                out.flush()?;
            }
        }
        What::File { job, node, file } => {
            let mut res = client.get(&format!("/{job}/nodes/{node}/{file}"), &[], "*/*")?;
            res.copy_to(&mut out)?;
        }
    }
    Ok(())
}
