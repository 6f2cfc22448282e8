//! Results leave the node through the `object_store` crate: `file://` (a directory on the node or a shared
//! volume) or `s3://bucket/prefix`, configured by the usual `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...); or, in a cluster without an
//! object store, through the results server (`results+http://<service>:<port>`), which keeps them on its own
//! volume and takes them from an agent with its pod's projected token (audience `sonde-results`, re-read for every
//! upload, as the kubelet rotates it). Files are written under `<url>/<resultPrefix>/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        let err = |message: String| Error::Store {
            url: store_url.into(),
            message,
        };
        let url = Url::parse(store_url).map_err(|e| err(e.to_string()))?;
        if let Some(scheme) = url.scheme().strip_prefix("results+") {
            let host = url
                .host_str()
                .ok_or_else(|| err("no results server host".into()))?;
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            let server = format!("{scheme}://{host}{port}");
            let objects = Url::parse(&format!("{server}/agent/v1/objects/"))
                .map_err(|e| err(e.to_string()))?;
            let http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(120))
                .build()
                .map_err(|e| err(e.to_string()))?;
            let token_file = std::env::var_os("SONDE_RESULTS_TOKEN_FILE")
                .map_or_else(|| PathBuf::from(RESULTS_TOKEN_FILE), PathBuf::from);
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
            // The outbox retries with its own backoff, across restarts, and reports while it does: the client's
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
    name.ends_with(".ndjson.gz")
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
mod tests {
    use std::path::Path;

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
