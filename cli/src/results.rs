//! `sonde results`: a client of the results server (`sonde-results`), for people and scripts. The server's URL
//! comes from `--server` or `SONDE_RESULTS_URL`; the bearer token from `--token`, `SONDE_TOKEN`, or one minted
//! for the audience `sonde-results` (TokenRequest) for the kubeconfig's service account. The kubeconfig's own
//! credentials are never sent to the results server: `--server` may name any host, and the API server's token
//! would let whoever answers there act as the user on the cluster.

use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

#[derive(Args)]
pub(crate) struct ResultsArgs {
    /// The results server, e.g. http://sonde-results.sonde-system (or SONDE_RESULTS_URL).
    #[arg(long, env = "SONDE_RESULTS_URL", global = true)]
    server: Option<String>,
    /// Bearer token for the results server (or SONDE_TOKEN). Without one, a token for the audience
    /// `sonde-results` only, valid 10 minutes, is requested from the API server (TokenRequest) for the
    /// kubeconfig's service account, which needs `create serviceaccounts/token` on itself; `kubectl create token
    /// <account> --audience sonde-results` makes one by hand. The kubeconfig's own token is never sent.
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

/// The kubeconfig's current context's namespace, where it names one.
fn kubeconfig_namespace() -> Option<String> {
    let path = std::env::var_os("KUBECONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".kube/config"))
        })?;
    let doc: serde_yaml::Value = serde_yaml::from_slice(&std::fs::read(path).ok()?).ok()?;
    let current = doc["current-context"].as_str()?;
    let ctx = doc["contexts"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(current))?;
    ctx["context"]["namespace"].as_str().map(String::from)
}

/// The audience of every token sent to the results server.
const AUDIENCE: &str = "sonde-results";

/// A token for [`AUDIENCE`] only, minted by the API server for the service account the kubeconfig acts as.
fn minted_token() -> Result<String> {
    use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::{Api, PostParams};
    let how = "pass --token or set SONDE_TOKEN (`kubectl create token <account> --audience sonde-results`)";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = kube::Client::try_default()
            .await
            .with_context(|| format!("no token and no cluster to mint one from: {how}"))?;
        let me = Api::<SelfSubjectReview>::all(client.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .with_context(|| format!("asking the API server who the kubeconfig is: {how}"))?;
        let user = me
            .status
            .and_then(|s| s.user_info?.username)
            .unwrap_or_default();
        let Some((ns, account)) = user
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'))
        else {
            bail!("the kubeconfig acts as {user:?}, not a service account, so no token can be minted for it: {how}");
        };
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![AUDIENCE.into()]),
                expiration_seconds: Some(600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let minted = Api::<ServiceAccount>::namespaced(client, ns)
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .with_context(|| {
                format!("minting a {AUDIENCE} token for {user} (it needs create serviceaccounts/token on itself): {how}")
            })?;
        minted
            .status
            .and_then(|s| s.token)
            .context("the API server minted no token")
    })
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
    let Some(server) = args.server else {
        bail!("no results server: pass --server or set SONDE_RESULTS_URL");
    };
    let token = match args.token {
        Some(t) => t,
        None => minted_token()?,
    };
    let ns = args
        .namespace
        .or_else(kubeconfig_namespace)
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
