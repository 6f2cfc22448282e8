//! The client that puts a result file to its store ([`Store`]). Results leave the node through the
//! `object_store` crate: `file://` (a directory on the node or a shared volume) or `s3://bucket/prefix`,
//! configured by the usual `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...); or, in a cluster without an object store, through
//! the results server (`results+https://<service>:<port>`, or `results+http://` where it serves no
//! certificate), which keeps them on its own volume and takes them from an agent with its pod's projected
//! token (audience `sonde-results`, re-read for every upload, as the kubelet rotates it). Over
//! `results+https://` the server's certificate must chain to the CA bundle in `SONDE_RESULTS_CA` (a file:
//! cert-manager's `ca.crt`), else to the system's roots; `SONDE_RESULTS_ADDRESS` (an IP: the Service's) is
//! where the URL's host name is reached, so the name on the certificate is checked without cluster DNS. Files
//! are written under `<url>/<resultPrefix>/`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::{
    ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, RetryConfig,
};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::error::{Error, Result};

/// Where the pod's token for the results server is (a projected volume of the chart).
pub const RESULTS_TOKEN_FILE: &str = "/var/run/secrets/sonde.dev/results/token";

/// How the agent reaches a `results+https://` server: from its environment, read once (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct ServerTls {
    /// `SONDE_RESULTS_CA`: the PEM bundle of the CA(s) the server's certificate must chain to. The system's roots
    /// are then not trusted: the agent's token goes only to a server the cluster's own CA vouches for (and no
    /// public CA certifies an in-cluster name anyway). Read at each opening, so a renewed bundle is taken.
    pub ca_file: Option<PathBuf>,
    /// `SONDE_RESULTS_ADDRESS`: the IP address to connect to for the URL's host (any port: the URL's is used).
    pub address: Option<String>,
}

impl ServerTls {
    /// `SONDE_RESULTS_CA` and `SONDE_RESULTS_ADDRESS`, as the agent started with them (empty counts as unset).
    pub fn from_env() -> &'static ServerTls {
        static FROM_ENV: OnceLock<ServerTls> = OnceLock::new();
        FROM_ENV.get_or_init(|| {
            let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
            ServerTls {
                ca_file: var("SONDE_RESULTS_CA").map(PathBuf::from),
                address: var("SONDE_RESULTS_ADDRESS").map(|a| a.to_string_lossy().into_owned()),
            }
        })
    }

    /// The HTTP client for a results server at `host` (`scheme` `http` or `https`).
    fn client(&self, scheme: &str, host: &str) -> std::result::Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120));
        if scheme == "https" {
            // Never on to plain HTTP, even if redirected: the token goes with each request.
            builder = builder.https_only(true);
            if let Some(ca) = &self.ca_file {
                let what = || {
                    format!(
                        "the results server's CA bundle {} (SONDE_RESULTS_CA)",
                        ca.display()
                    )
                };
                let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", what()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("{}: {e}", what()))?;
                if certs.is_empty() {
                    return Err(format!("{}: no PEM certificate in it", what()));
                }
                builder = builder.tls_certs_only(certs);
            }
        }
        if let Some(address) = &self.address {
            let ip: IpAddr = address.parse().map_err(|e| {
                format!("SONDE_RESULTS_ADDRESS {address:?} is not an IP address: {e}")
            })?;
            builder = builder.resolve(host, SocketAddr::new(ip, 0));
        }
        builder.build().map_err(|e| sonde_probes::error::chain(&e))
    }
}

/// Whether a store URL sends the agent's token in clear over a network: `results+http://` to a host that is not
/// this one's loopback.
pub fn sends_token_in_clear(store_url: &str) -> bool {
    let Ok(url) = Url::parse(store_url) else {
        return false;
    };
    let loopback = match url.host() {
        // `results+http` is not a special scheme: its host is not parsed as an IPv4 address.
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost")
                || d.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    url.scheme() == "results+http" && !loopback
}

/// Says once, at start, that the admin's `results+http://` locations carry the agent's token in clear (they still
/// work: a cluster may have no certificate for the results server).
pub fn warn_of_clear_tokens<'a>(store_urls: impl IntoIterator<Item = &'a str>) {
    let clear: Vec<&str> = store_urls
        .into_iter()
        .filter(|u| sends_token_in_clear(u))
        .collect();
    if !clear.is_empty() {
        tracing::warn!(
            urls = ?clear,
            "results go to the results server over plain HTTP: the agent's token for it crosses the network in \
             clear (serve the results server with a certificate and use results+https://)"
        );
    }
}

/// An object store and the path its URL points into.
pub struct Store {
    url: String,
    backend: Backend,
    base: object_store::path::Path,
}

enum Backend {
    Objects(Arc<dyn ObjectStore>),
    /// The results server's upload route (`<server>/agent/v1/objects/`).
    Server {
        http: reqwest::Client,
        objects: Url,
        token_file: PathBuf,
    },
}

impl Store {
    pub fn open(store_url: &str) -> Result<Store> {
        let token_file = std::env::var_os("SONDE_RESULTS_TOKEN_FILE")
            .map_or_else(|| PathBuf::from(RESULTS_TOKEN_FILE), PathBuf::from);
        Store::open_with(store_url, ServerTls::from_env(), token_file)
    }

    /// [`Store::open`] with the results server's client options and token file given.
    pub fn open_with(store_url: &str, tls: &ServerTls, token_file: PathBuf) -> Result<Store> {
        let err = |message: String| Error::Store {
            url: store_url.into(),
            message,
        };
        let url = Url::parse(store_url).map_err(|e| err(e.to_string()))?;
        if let Some(scheme) = url.scheme().strip_prefix("results+") {
            if scheme != "http" && scheme != "https" {
                return Err(err(format!(
                    "results+{scheme}: the results server is results+https:// or results+http://"
                )));
            }
            let host = url
                .host_str()
                .ok_or_else(|| err("no results server host".into()))?;
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            let server = format!("{scheme}://{host}{port}");
            let objects = Url::parse(&format!("{server}/agent/v1/objects/"))
                .map_err(|e| err(e.to_string()))?;
            // No client, no upload to this server for any set.
            let http = tls
                .client(scheme, host)
                .map_err(|message| Error::StoreDown {
                    url: store_url.trim_end_matches('/').to_string(),
                    message,
                })?;
            return Ok(Store {
                url: store_url.trim_end_matches('/').to_string(),
                backend: Backend::Server {
                    http,
                    objects,
                    token_file,
                },
                base: object_store::path::Path::default(),
            });
        }
        if url.scheme() == "file" {
            // LocalFileSystem writes below an existing root only.
            std::fs::create_dir_all(url.path())?;
        }
        let aws_env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
        let (scheme, base) = ObjectStoreScheme::parse(&url).map_err(|e| err(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match scheme {
            // The uploader retries with its own backoff, across restarts, and reports while it does: the client's
            // own retries (by default for up to 3 minutes per request) would only hide an outage from status.
            ObjectStoreScheme::AmazonS3 => Arc::new(
                aws_env
                    .fold(
                        AmazonS3Builder::new().with_url(store_url),
                        |b, (k, v)| match k.to_ascii_lowercase().parse() {
                            Ok(k) => b.with_config(k, v),
                            Err(_) => b,
                        },
                    )
                    .with_retry(RetryConfig {
                        max_retries: 2,
                        retry_timeout: Duration::from_secs(10),
                        ..Default::default()
                    })
                    .build()
                    .map_err(|e| err(e.to_string()))?,
            ),
            _ => Arc::from(
                object_store::parse_url_opts(&url, aws_env)
                    .map_err(|e| err(e.to_string()))?
                    .0,
            ),
        };
        Ok(Store {
            url: store_url.to_string(),
            backend: Backend::Objects(store),
            base,
        })
    }

    fn err(&self, message: String) -> Error {
        Error::Store {
            url: self.url.clone(),
            message,
        }
    }

    fn key(&self, prefix: &str, name: &str) -> object_store::path::Path {
        object_store::path::Path::from(
            format!(
                "{}/{}/{}",
                self.base.as_ref(),
                prefix.trim_matches('/'),
                name
            )
            .trim_start_matches('/'),
        )
    }

    /// The URL of `<prefix>/<name>` in this store.
    pub fn url_of(&self, prefix: &str, name: &str) -> String {
        format!(
            "{}/{}/{}",
            self.url.trim_end_matches('/'),
            prefix.trim_matches('/'),
            name
        )
    }

    /// Uploads `file` as `<prefix>/<name>`. An event chunk is put create-only (chunks are written once and
    /// never again: a retried put that already landed counts as done, and a name is never reused for other
    /// bytes); other files are streamed, one put for a small file, a multipart upload in 10 MiB parts past
    /// that, so the memory of the upload path does not grow with the file.
    pub async fn put_file(&self, prefix: &str, name: &str, file: &Path) -> Result<()> {
        let key = self.key(prefix, name);
        let store = match &self.backend {
            Backend::Objects(store) => store,
            Backend::Server {
                http,
                objects,
                token_file,
            } => {
                return self
                    .put_to_server(http, objects, token_file, &key, name, file)
                    .await;
            }
        };
        if is_chunk(name) {
            return self.put_chunk(store, &key, file).await;
        }
        let mut from = tokio::fs::File::open(file).await?;
        let mut to = BufWriter::new(store.clone(), key.clone());
        let copied = tokio::io::copy(&mut from, &mut to).await;
        let done = match copied {
            Ok(_) => to.shutdown().await,
            Err(e) => {
                let _ = to.abort().await;
                Err(e)
            }
        };
        done.map_err(|e| self.err(format!("{key}: {e}")))
    }

    /// One create-only put: a chunk is at most 8 MiB of NDJSON before compression, so its bytes are bounded.
    async fn put_chunk(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &object_store::path::Path,
        file: &Path,
    ) -> Result<()> {
        let body = tokio::fs::read(file).await?;
        let len = body.len() as u64;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store.put_opts(key, body.into(), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Landed before (a put retried after its answer was lost, or a set uploaded again after a
                // crash): done, if it is the same object.
                let there = store
                    .head(key)
                    .await
                    .map_err(|e| self.err(format!("{key}: {e}")))?;
                match there.size == len {
                    true => Ok(()),
                    false => Err(self.err(format!(
                        "{key} exists with {} bytes, this chunk has {len}: not overwritten",
                        there.size
                    ))),
                }
            }
            Err(e) => Err(self.err(format!("{key}: {e}"))),
        }
    }
}

impl Store {
    /// One PUT to the results server, the file streamed from the spool. A chunk goes create-only
    /// (`If-None-Match: *`): the server answers 200 for one that landed before with the same size, 409 for other
    /// bytes under its name.
    async fn put_to_server(
        &self,
        http: &reqwest::Client,
        objects: &Url,
        token_file: &Path,
        key: &object_store::path::Path,
        name: &str,
        file: &Path,
    ) -> Result<()> {
        let token = tokio::fs::read_to_string(token_file)
            .await
            .map_err(|e| Error::StoreDown {
                url: self.url.clone(),
                message: format!(
                    "the token for the results server ({}): {e}",
                    token_file.display()
                ),
            })?;
        let to = objects
            .join(key.as_ref())
            .map_err(|e| self.err(format!("{key}: {e}")))?;
        let from = tokio::fs::File::open(file).await?;
        let len = from.metadata().await?.len();
        let mut req = http
            .put(to)
            .bearer_auth(token.trim())
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(
                tokio_util::io::ReaderStream::new(from),
            ));
        if is_chunk(name) {
            req = req.header(reqwest::header::IF_NONE_MATCH, "*");
        }
        // No key in the message: it stands for the store, and is shown on every session waiting for it.
        let res = req.send().await.map_err(|e| Error::StoreDown {
            url: self.url.clone(),
            message: sonde_probes::error::chain(&e.without_url()),
        })?;
        if res.status().is_success() {
            return Ok(());
        }
        let status = res.status();
        let detail = res
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|p| p["detail"].as_str().map(String::from))
            .unwrap_or_default();
        let message = format!("{key}: the results server answered {status}: {detail}");
        match status {
            reqwest::StatusCode::GONE => Err(Error::StoreGone {
                url: self.url.clone(),
                message,
            }),
            _ => Err(self.err(message)),
        }
    }
}

/// Whether a result file is an event chunk (`events/000001.ndjson.gz`).
pub fn is_chunk(name: &str) -> bool {
    name.ends_with(sonde_crds::results::CHUNK_SUFFIX)
}

/// Uploads `files` (below `dir`, whose relative paths they keep: `events/000001.ndjson.gz`) under `prefix` and
/// returns their URLs.
pub async fn upload(
    store_url: &str,
    prefix: &str,
    dir: &Path,
    files: &[PathBuf],
) -> Result<Vec<String>> {
    let store = Store::open(store_url)?;
    let mut urls = Vec::with_capacity(files.len());
    for file in files {
        let relative = file
            .strip_prefix(dir)
            .ok()
            .or_else(|| file.file_name().map(Path::new));
        let Some(name) = relative.and_then(|n| n.to_str()) else {
            continue;
        };
        store.put_file(prefix, name, file).await?;
        urls.push(store.url_of(prefix, name));
    }
    Ok(urls)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::{ServerTls, Store};

    /// A CA (`ca.crt`) and a certificate it signed (`tls.crt`, `tls.key`) for `localhost`, 127.0.0.1 and
    /// `sonde-results.sonde.svc`, made with the openssl command.
    fn make_certs(dir: &Path) {
        sonde_telemetry::test_certs(
            dir,
            "",
            "DNS:localhost,DNS:sonde-results.sonde.svc,IP:127.0.0.1",
        );
    }

    /// A results server over TLS with `dir`'s certificate: answers 200 to each request and reports it (head
    /// and body), or the failed handshake.
    async fn tls_server(
        dir: &Path,
    ) -> (
        u16,
        tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
    ) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = CertificateDer::pem_file_iter(dir.join("tls.crt"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("tls.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let conn = match acceptor.accept(tcp).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        continue;
                    }
                };
                let mut conn = tokio::io::BufReader::new(conn);
                let (head, body) = read_request(&mut conn).await;
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await
                .unwrap();
                conn.shutdown().await.unwrap();
                let _ = tx.send(Ok(head + &String::from_utf8_lossy(&body)));
            }
        });
        (port, rx)
    }

    /// One HTTP/1.1 request from `conn`, read whole: its head (request line and headers) and its body (by
    /// `content-length`). For the test servers here and in `uploader`.
    pub(crate) async fn read_request(
        conn: &mut (impl tokio::io::AsyncBufRead + Unpin),
    ) -> (String, Vec<u8>) {
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            if conn.read_line(&mut head).await.unwrap() == 0 {
                break;
            }
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(String::from)
            })
            .map_or(0, |n| n.trim().parse().unwrap());
        let mut body = vec![0; len];
        conn.read_exact(&mut body).await.unwrap();
        (head, body)
    }

    /// Over `results+https://`: with the CA the file arrives with the token, to the IP or to a name reached at
    /// `SONDE_RESULTS_ADDRESS`; without it (the system's roots) the upload fails naming the certificate problem,
    /// and an unreadable CA file is named.
    #[tokio::test]
    async fn uploads_over_https_to_a_server_the_ca_vouches_for_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_certs(d);
        std::fs::write(d.join("token"), "the-token\n").unwrap();
        std::fs::write(d.join("summary.json"), b"{\"rows\":[]}").unwrap();
        let (port, mut seen) = tls_server(d).await;
        let with_ca = ServerTls {
            ca_file: Some(d.join("ca.crt")),
            address: None,
        };
        let put = |url: String, tls: ServerTls| {
            let token = d.join("token");
            let file = d.join("summary.json");
            async move {
                Store::open_with(&url, &tls, token)?
                    .put_file("tracejobs/ns/job-1/node-a", "summary.json", &file)
                    .await
            }
        };
        put(format!("results+https://127.0.0.1:{port}"), with_ca.clone())
            .await
            .unwrap();
        let got = seen.recv().await.unwrap().unwrap();
        assert!(
            got.starts_with(
                "PUT /agent/v1/objects/tracejobs/ns/job-1/node-a/summary.json HTTP/1.1\r\n"
            ),
            "{got}"
        );
        assert!(got.contains("authorization: Bearer the-token\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n{\"rows\":[]}"), "{got}");

        // The Service's name on the certificate, reached at its address without DNS.
        let named = ServerTls {
            address: Some("127.0.0.1".into()),
            ..with_ca.clone()
        };
        put(
            format!("results+https://sonde-results.sonde.svc:{port}"),
            named,
        )
        .await
        .unwrap();
        assert!(seen.recv().await.unwrap().is_ok());

        let e = put(
            format!("results+https://127.0.0.1:{port}"),
            ServerTls::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
        assert!(seen.recv().await.unwrap().is_err(), "the handshake failed");

        let e = put(
            format!("results+https://127.0.0.1:{port}"),
            ServerTls {
                ca_file: Some(d.join("nope.crt")),
                address: None,
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("nope.crt (SONDE_RESULTS_CA)") && e.contains("down"),
            "{e}"
        );
    }

    #[test]
    fn only_results_http_off_this_host_sends_the_token_in_clear() {
        for url in [
            "results+http://10.0.0.1:80",
            "results+http://sonde-results.sonde.svc",
        ] {
            assert!(super::sends_token_in_clear(url), "{url}");
        }
        for url in [
            "results+https://10.0.0.1:443",
            "results+http://127.0.0.1:8080",
            "results+http://localhost:8080",
            "results+http://[::1]:8080",
            "s3://bucket/x",
            "file:///var/lib/sonde",
        ] {
            assert!(!super::sends_token_in_clear(url), "{url}");
        }
    }

    #[tokio::test]
    async fn uploads_to_a_local_directory() {
        let spool = tempfile::tempdir().unwrap();
        let f = spool.path().join("summary.json");
        std::fs::write(&f, b"{}").unwrap();
        let dest = tempfile::tempdir().unwrap();
        let url = format!("file://{}/results", dest.path().display());
        let urls = super::upload(&url, "tracejobs/ns/job/node-a", spool.path(), &[f])
            .await
            .unwrap();
        assert_eq!(
            urls,
            vec![format!("{url}/tracejobs/ns/job/node-a/summary.json")]
        );
        let written = dest
            .path()
            .join("results/tracejobs/ns/job/node-a/summary.json");
        assert_eq!(std::fs::read(written).unwrap(), b"{}");
        let bad = super::upload("nope://x", "p", Path::new("/"), &[])
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("nope://x"), "{bad}");
    }

    /// A file larger than one part goes up in parts and arrives whole.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_large_file_arrives_whole() {
        let spool = tempfile::tempdir().unwrap();
        let f = spool.path().join("events.ndjson");
        let body: Vec<u8> = (0..23 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&f, &body).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dest.path().display());
        super::upload(&url, "tracejobs/ns/big/node-a", spool.path(), &[f])
            .await
            .unwrap();
        let got = std::fs::read(dest.path().join("tracejobs/ns/big/node-a/events.ndjson")).unwrap();
        assert!(got == body, "{} bytes arrived of {}", got.len(), body.len());
    }

    /// A chunk is put create-only: the same bytes again count as done, other bytes under its name are refused.
    #[tokio::test]
    async fn a_chunk_is_written_once() {
        let spool = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(spool.path().join("events")).unwrap();
        let f = spool.path().join("events/000000.ndjson.gz");
        std::fs::write(&f, b"one").unwrap();
        let dest = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dest.path().display());
        let up = || super::upload(&url, "p", spool.path(), std::slice::from_ref(&f));
        up().await.unwrap();
        up().await.expect("the same chunk again counts as done");
        std::fs::write(&f, b"other bytes").unwrap();
        let err = up().await.unwrap_err().to_string();
        assert!(err.contains("not overwritten"), "{err}");
        let stored = std::fs::read(dest.path().join("p/events/000000.ndjson.gz")).unwrap();
        assert_eq!(stored, b"one");
    }
}
