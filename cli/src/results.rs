//! `sonde results`: a client of the results server (`sonde-results`), for people and scripts. The server's URL
//! comes from `--server` or `SONDE_RESULTS_URL`; the bearer token from `--token`, `SONDE_TOKEN`, or one minted
//! for the audience `sonde-results` (TokenRequest) for the kubeconfig's service account. The kubeconfig's own
//! credentials are never sent to the results server: `--server` may name any host, and the API server's token
//! would let whoever answers there act as the user on the cluster. Nor does a token go in clear over a network:
//! an `http://` server must be this host's loopback (`kubectl port-forward`) unless `--insecure-http` says so;
//! `https://` servers are checked against `--ca-file` (`SONDE_RESULTS_CA`) when given, else the system's roots.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

#[derive(Args)]
pub(crate) struct ResultsArgs {
    /// The results server, e.g. https://sonde-results.sonde-system (or SONDE_RESULTS_URL). An http:// server
    /// must be on this host (localhost, 127.0.0.1, ::1, as with `kubectl port-forward`) unless --insecure-http.
    #[arg(long, env = "SONDE_RESULTS_URL", global = true)]
    server: Option<String>,
    /// Trust only the CA certificates in this PEM file for an https:// server (or SONDE_RESULTS_CA), e.g. the
    /// `ca.crt` of the server's cert-manager Secret; without it, the system's roots.
    #[arg(long, env = "SONDE_RESULTS_CA", global = true, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Send the token to an http:// server that is not on this host. It then crosses the network in clear:
    /// whoever sees the traffic can read it, and use it against the results server until it expires.
    #[arg(long, global = true)]
    insecure_http: bool,
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

/// Whether the token may go to `server`: over https, or over http to this host's loopback only, unless the
/// user said `--insecure-http`.
fn check_server(server: &str, insecure_http: bool) -> Result<reqwest::Url> {
    let url = reqwest::Url::parse(server)
        .with_context(|| format!("--server {server:?} is not a URL (https://<host>[:<port>])"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback || insecure_http => Ok(url),
        "http" => bail!(
            "refusing to send a token to {server} over plain HTTP: it would cross the network in clear, and \
             whoever sees the traffic could read your results with it until it expires. Use an https:// server \
             (with --ca-file for a private CA), reach it on this host (kubectl port-forward, then \
             http://localhost:<port>), or pass --insecure-http to send it anyway"
        ),
        other => bail!("--server {server}: {other}:// is not http:// or https://"),
    }
}

/// The client for `server`: an https one trusts only `ca_file`'s certificates when given, and is never
/// redirected to plain HTTP.
fn http_client(server: &reqwest::Url, ca_file: Option<&Path>) -> Result<reqwest::blocking::Client> {
    let mut builder = reqwest::blocking::Client::builder().timeout(None);
    if server.scheme() == "https" {
        builder = builder.https_only(true);
        if let Some(ca) = ca_file {
            let what = || format!("--ca-file {}", ca.display());
            let pem = std::fs::read(ca).with_context(what)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(what)?;
            if certs.is_empty() {
                bail!("{}: no PEM certificate in it", what());
            }
            builder = builder.tls_certs_only(certs);
        }
    }
    Ok(builder.build()?)
}

pub(crate) fn run(args: ResultsArgs) -> Result<()> {
    let Some(server) = args.server else {
        bail!("no results server: pass --server or set SONDE_RESULTS_URL");
    };
    // Before a token is minted: none goes where it should not.
    let url = check_server(&server, args.insecure_http)?;
    let http = http_client(&url, args.ca_file.as_deref())?;
    let token = match args.token {
        Some(t) => t,
        None => minted_token()?,
    };
    let ns = args
        .namespace
        .or_else(kubeconfig_namespace)
        .unwrap_or_else(|| "default".into());
    let client = Client {
        http,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Read;
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        results: ResultsArgs,
    }

    #[test]
    fn a_token_goes_in_clear_only_to_this_host_or_with_insecure_http() {
        for server in [
            "http://sonde-results.sonde-system",
            "http://10.96.0.12:80",
            "http://results.example.com:8080/",
        ] {
            let e = format!("{:#}", check_server(server, false).unwrap_err());
            assert!(
                e.contains("refusing to send a token")
                    && e.contains("in clear")
                    && e.contains("--insecure-http"),
                "{e}"
            );
            assert!(check_server(server, true).is_ok(), "{server}");
        }
        for server in [
            "https://sonde-results.sonde-system",
            "https://10.96.0.12:8443",
            "http://localhost:8080",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
        ] {
            assert!(check_server(server, false).is_ok(), "{server}");
        }
        assert!(check_server("ftp://x", true).is_err());
        assert!(check_server("sonde-results:80", true).is_err());
    }

    /// The refusal comes before anything else: no token is minted (here there is no cluster to mint one from,
    /// whose error would show instead).
    #[test]
    fn sonde_results_refuses_a_remote_http_server_before_minting_a_token() {
        let cli = Cli::parse_from([
            "results",
            "--server",
            "http://sonde-results.sonde-system",
            "list",
        ]);
        let e = format!("{:#}", run(cli.results).unwrap_err());
        assert!(
            e.starts_with("refusing to send a token to http://sonde-results.sonde-system"),
            "{e}"
        );
        let help = {
            use clap::CommandFactory;
            Cli::command().render_help().to_string()
        };
        assert!(
            help.contains("--insecure-http") && help.contains("--ca-file <PEM>"),
            "{help}"
        );
    }

    /// A CA (`ca.crt`) and a certificate it signed for `localhost` and 127.0.0.1 (`tls.crt`, `tls.key`).
    fn make_certs(dir: &Path) {
        sonde_telemetry::test_certs(dir, "", "DNS:localhost,IP:127.0.0.1");
    }

    /// An HTTPS server with `dir`'s certificate answering `[]` to every request, on a thread.
    fn tls_server(dir: &Path) -> u16 {
        let chain = CertificateDer::pem_file_iter(dir.join("tls.crt"))
            .unwrap()
            .collect::<std::result::Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("tls.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp.unwrap());
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.ends_with(b"\r\n\r\n") {
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
                          connection: close\r\n\r\n[]",
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        port
    }

    #[test]
    fn an_https_server_is_trusted_through_the_ca_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_certs(d);
        let port = tls_server(d);
        let url = check_server(&format!("https://127.0.0.1:{port}"), false).unwrap();
        let get = |ca: Option<&Path>| -> Result<serde_json::Value> {
            let client = http_client(&url, ca)?;
            Ok(client
                .get(url.join("/api/v1/namespaces/a/tracejobs")?)
                .send()?
                .json()?)
        };
        assert_eq!(get(Some(&d.join("ca.crt"))).unwrap(), serde_json::json!([]));
        let e = format!("{:?}", get(None).unwrap_err());
        assert!(e.contains("UnknownIssuer"), "{e}");
        let e = format!("{:#}", get(Some(&d.join("nope.crt"))).unwrap_err());
        assert!(e.contains("--ca-file") && e.contains("nope.crt"), "{e}");
    }
}
