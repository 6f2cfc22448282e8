//! Reading stored results. A job's folder is `<location>/tracejobs/<namespace>/<name>-<uid first 8>/`, one
//! folder per node below it, each with `events/` (chunks and, once the trace ended, `manifest.json`) and the
//! end-of-trace files (ARCHITECTURE.md, "Layout in a store"). The server reads the locations the agents write
//! to; a location is named by the job (`spec.storage.location`) and resolved here, never a URL from a user.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme};
use sha2::{Digest, Sha256};
use sonde_crds::results;

use crate::chunk_cache::{ChunkCache, Lines};
use crate::error::{Error, Result};

/// The admin's storage locations (as given to the agents): the default URL and named ones.
pub struct Stores {
    default: String,
    named: BTreeMap<String, String>,
    opened: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    chunks: Arc<ChunkCache>,
}

/// One job's results in a store (or one window of a policy's).
#[derive(Clone)]
pub struct Folder {
    pub store: Arc<dyn ObjectStore>,
    /// The store's URL: with a chunk's key, what names it in `chunks`.
    pub origin: Arc<str>,
    pub chunks: Arc<ChunkCache>,
    /// `<base>/<tracejobs|probepolicies>/<namespace>/<name>-<uid8>`.
    pub path: Path,
    /// Below each node's folder: a policy's window (`window-<end time>`).
    pub inner: Option<String>,
}

/// A chunk of a node's events: from the manifest (checked when read) or, while the trace runs, from a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkRef {
    pub seq: u64,
    pub key: Path,
    pub lines: Option<u64>,
    pub sha256: Option<String>,
}

/// What a node's folder holds of events now.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub chunks: Vec<ChunkRef>,
    /// The manifest is there and says it is complete: no chunk will be added.
    pub complete: bool,
}

impl Stores {
    /// `named` is `name=url,name=url`, as the agents' `--storage-locations`; decoded chunks are kept up to
    /// `cache_bytes`.
    pub fn parse(default: String, named: &str, cache_bytes: usize) -> Result<Stores, String> {
        Ok(Stores {
            default,
            named: sonde_telemetry::parse_locations(named)?,
            opened: Mutex::new(HashMap::new()),
            chunks: Arc::new(ChunkCache::new(cache_bytes)),
        })
    }

    /// The folder of a job's results. `location` is the job's `spec.storage.location`.
    pub fn folder(
        &self,
        kind: sonde_crds::results::OwnerKind,
        namespace: &str,
        name: &str,
        uid: &str,
        location: Option<&str>,
    ) -> Result<Folder> {
        let url = match location {
            None => self.default.clone(),
            Some(l) => self.named.get(l).cloned().ok_or_else(|| {
                Error::NotFound(format!(
                    "the job's storage location {l:?} is not one this server reads (Helm value storage.locations)"
                ))
            })?,
        };
        let (store, base) = self.open(&url)?;
        let path = Path::from(
            format!(
                "{}/{}",
                base.as_ref(),
                kind.object_folder(namespace, name, uid)
            )
            .trim_start_matches('/'),
        );
        Ok(Folder {
            store,
            origin: url.into(),
            chunks: self.chunks.clone(),
            path,
            inner: None,
        })
    }

    /// The default location: where agents' uploads through this server go.
    pub fn default_store(&self) -> Result<(Arc<dyn ObjectStore>, Path)> {
        self.open(&self.default)
    }

    fn open(&self, url: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let parsed = url::Url::parse(url)
            .map_err(|e| Error::NotFound(format!("storage URL {url:?}: {e}")))?;
        let (_, base) = ObjectStoreScheme::parse(&parsed)
            .map_err(|e| Error::NotFound(format!("storage URL {url:?}: {e}")))?;
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = opened.get(url) {
            return Ok((s.clone(), base));
        }
        let aws_env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
        let (store, _) = object_store::parse_url_opts(&parsed, aws_env).map_err(Error::Store)?;
        let store: Arc<dyn ObjectStore> = Arc::from(store);
        opened.insert(url.to_string(), store.clone());
        Ok((store, base))
    }
}

impl Folder {
    /// One window of a policy's results.
    pub fn window(&self, window: &str) -> Folder {
        Folder {
            inner: Some(window.to_string()),
            ..self.clone()
        }
    }

    /// A node's folder (its window's, for a window).
    fn node_path(&self, node: &str) -> Path {
        let p = self.path.clone().join(node);
        match &self.inner {
            Some(w) => p.join(w.as_str()),
            None => p,
        }
    }

    /// A policy's windows (`window-<end time>`, in time order) and the nodes that stored each.
    pub async fn windows(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for node in self.nodes().await? {
            for w in self.folders(&self.path.clone().join(node.as_str())).await? {
                if matches!(results::Below::parse(&w), Some(results::Below::Window(_))) {
                    out.entry(w).or_default().push(node.clone());
                }
            }
        }
        Ok(out)
    }

    /// The nodes that stored something for this job (for a window: for that window), sorted.
    pub async fn nodes(&self) -> Result<Vec<String>> {
        let mut nodes = self.folders(&self.path).await?;
        if let Some(w) = &self.inner {
            let mut with = Vec::new();
            for n in nodes {
                if self
                    .folders(&self.path.clone().join(n.as_str()))
                    .await?
                    .contains(w)
                {
                    with.push(n);
                }
            }
            nodes = with;
        }
        nodes.sort();
        Ok(nodes)
    }

    /// The folders directly below `path`.
    async fn folders(&self, path: &Path) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(path))
            .await
            .map_err(Error::Store)?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(String::from))
            .collect())
    }

    /// A node's chunks: the manifest's list once it is there, else the chunks stored so far, up to the first
    /// gap (a reader must never skip a chunk that is still on its way).
    pub async fn series(&self, node: &str) -> Result<Series> {
        let events = self.node_path(node).join(results::EVENTS_DIR);
        match self
            .store
            .get(&events.clone().join(results::MANIFEST))
            .await
        {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(Error::Store)?;
                let m = results::Manifest::from_json(&bytes).map_err(|e| {
                    Error::Damaged(format!("{}/{}: {e}", events.as_ref(), results::MANIFEST))
                })?;
                let chunks = m
                    .chunks
                    .into_iter()
                    .map(|c| ChunkRef {
                        seq: c.seq,
                        key: events.clone().join(c.file.as_str()),
                        lines: Some(c.lines),
                        sha256: Some(c.sha256),
                    })
                    .collect();
                return Ok(Series {
                    chunks,
                    complete: m.complete,
                });
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::Store(e)),
        }
        let listed: Vec<_> = self
            .store
            .list(Some(&events))
            .try_collect()
            .await
            .map_err(Error::Store)?;
        let mut seqs: Vec<u64> = listed
            .iter()
            .filter_map(|o| o.location.filename())
            .filter_map(results::chunk_seq)
            .collect();
        seqs.sort();
        let chunks = seqs
            .into_iter()
            .enumerate()
            .take_while(|(i, s)| *i as u64 == *s)
            .map(|(_, seq)| ChunkRef {
                seq,
                key: events.clone().join(results::chunk_file(seq).as_str()),
                lines: None,
                sha256: None,
            })
            .collect();
        Ok(Series {
            chunks,
            complete: false,
        })
    }

    /// A chunk's lines, checked against the manifest when it lists the chunk (a chunk read before its manifest
    /// was there is checked again once it is).
    pub async fn lines(&self, c: &ChunkRef) -> Result<Lines> {
        let key = format!(
            "{}\n{}\n{}",
            self.origin,
            c.key.as_ref(),
            c.sha256.as_deref().unwrap_or("-")
        );
        if let Some(lines) = self.chunks.get(&key) {
            return Ok(lines);
        }
        let lines = Arc::new(self.read_lines(c).await?);
        self.chunks.put(key, lines.clone());
        Ok(lines)
    }

    async fn read_lines(&self, c: &ChunkRef) -> Result<Vec<String>> {
        let raw = self
            .store
            .get(&c.key)
            .await
            .map_err(Error::Store)?
            .bytes()
            .await
            .map_err(Error::Store)?;
        let name = c.key.as_ref().to_string();
        let (sha256, lines) = (c.sha256.clone(), c.lines);
        // Hashing and gunzipping 8 MiB is CPU work: on the blocking pool, not on the workers every other
        // request is served from.
        tokio::task::spawn_blocking(move || decode_chunk(&name, &raw, sha256.as_deref(), lines))
            .await
            .map_err(|e| Error::Damaged(format!("{}: decoding stopped: {e}", c.key.as_ref())))?
    }

    /// One of a node's end-of-trace files.
    pub async fn file(&self, node: &str, name: &str) -> Result<bytes::Bytes> {
        let key = self.node_path(node).join(name);
        match self.store.get(&key).await {
            Ok(got) => got.bytes().await.map_err(Error::Store),
            Err(object_store::Error::NotFound { .. }) => Err(Error::NotFound(format!(
                "node {node} has no {name} for this job (yet)"
            ))),
            Err(e) => Err(Error::Store(e)),
        }
    }
}

/// The most NDJSON one chunk may inflate to: an agent cuts chunks at 8 MiB, so anything far larger is not one of
/// its chunks (a compressed bomb from a forged upload) and is refused rather than held in memory.
const MAX_CHUNK_BYTES: u64 = 64 << 20;

/// A chunk's lines, checked against its manifest entry (SHA-256 of the stored bytes, line count).
fn decode_chunk(
    name: &str,
    raw: &[u8],
    sha256: Option<&str>,
    lines: Option<u64>,
) -> Result<Vec<String>> {
    use std::io::{BufRead, Read};
    let damaged = |why: String| Error::Damaged(format!("{name}: {why}"));
    if let Some(want) = sha256 {
        let got: String = Sha256::digest(raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != want {
            return Err(damaged("SHA-256 differs from the manifest".into()));
        }
    }
    let mut inflated = flate2::read::GzDecoder::new(raw).take(MAX_CHUNK_BYTES + 1);
    let mut text = Vec::new();
    inflated
        .read_to_end(&mut text)
        .map_err(|e| damaged(e.to_string()))?;
    if text.len() as u64 > MAX_CHUNK_BYTES {
        return Err(damaged(format!(
            "inflates past {} MiB, more than any chunk an agent writes",
            MAX_CHUNK_BYTES >> 20
        )));
    }
    let out = text
        .lines()
        .collect::<std::io::Result<Vec<String>>>()
        .map_err(|e| damaged(e.to_string()))?;
    if let Some(n) = lines
        && n != out.len() as u64
    {
        return Err(damaged(format!(
            "{} lines, the manifest says {n}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gz(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_chunk_that_inflates_past_any_agents_is_refused_not_held() {
        // 72 MiB of one repeated line: 70 KiB compressed.
        let bomb = gz(&b"{}\n".repeat(24 << 20));
        let err = decode_chunk("000000.ndjson.gz", &bomb, None, None).unwrap_err();
        assert!(
            matches!(&err, Error::Damaged(m) if m.contains("inflates past 64 MiB")),
            "{err}"
        );
        let ok = decode_chunk(
            "000001.ndjson.gz",
            &gz(b"{\"a\":1}\n{\"a\":2}\n"),
            None,
            Some(2),
        )
        .unwrap();
        assert_eq!(ok, ["{\"a\":1}", "{\"a\":2}"]);
    }
}
