//! Events read from stored chunks, in pages: node by node (sorted), chunk by chunk, line by line, after an
//! opaque cursor that holds a position per node, so one cursor serves paging (every event exactly once) and the
//! live tail (a node's new chunks are picked up where it left off). Filters select events; the page limit
//! counts the selected ones.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::store::Folder;

/// Chunks read by one request at most: a page that would need more ends early, with a cursor to go on.
pub const MAX_CHUNKS_PER_PAGE: usize = 32;

/// Where a reader is: per node, the next chunk and the line in it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "n")]
    pub nodes: BTreeMap<String, (u64, u64)>,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(s: &str) -> Result<Cursor> {
        URL_SAFE_NO_PAD
            .decode(s.trim())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                Error::BadRequest(format!("cursor {s:?} is not one this server gave out"))
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
    Contains,
}

/// `field<op>value`: `latency_us>=20000`, `wakee_comm==ping`, `comm~isc` (contains). `comm` matches any field
/// named `comm` or ending in `_comm`; `node` the node that stored the event.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    field: String,
    op: Op,
    value: String,
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter> {
        const OPS: [(&str, Op); 8] = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("!=", Op::Ne),
            ("==", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
            ("~", Op::Contains),
            ("=", Op::Eq),
        ];
        let found = OPS
            .iter()
            .filter_map(|(tok, op)| s.find(tok).map(|at| (at, *tok, *op)))
            .min_by_key(|(at, tok, _)| (*at, usize::MAX - tok.len()));
        let Some((at, tok, op)) = found else {
            return Err(Error::BadRequest(format!(
                "filter {s:?} has no operator (one of ==, !=, >=, <=, >, <, ~)"
            )));
        };
        let (field, value) = (s[..at].trim(), s[at + tok.len()..].trim());
        let plain =
            |f: &str| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain(field) {
            return Err(Error::BadRequest(format!(
                "filter {s:?}: {field:?} is not a field name"
            )));
        }
        if matches!(op, Op::Ge | Op::Le | Op::Gt | Op::Lt) && value.parse::<f64>().is_err() {
            return Err(Error::BadRequest(format!(
                "filter {s:?}: {value:?} is not a number to compare with"
            )));
        }
        Ok(Filter {
            field: field.into(),
            op,
            value: value.into(),
        })
    }

    fn holds(&self, node: &str, ev: &Value) -> bool {
        if self.field == "node" {
            return self.test(&Value::String(node.into()));
        }
        let Some(obj) = ev.as_object() else {
            return false;
        };
        if self.field == "comm" {
            return obj
                .iter()
                .filter(|(k, _)| *k == "comm" || k.ends_with("_comm"))
                .any(|(_, v)| self.test(v));
        }
        obj.get(&self.field).is_some_and(|v| self.test(v))
    }

    fn test(&self, v: &Value) -> bool {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let num = || Some((v.as_f64()?, self.value.parse::<f64>().ok()?));
        match self.op {
            Op::Eq => text == self.value,
            Op::Ne => text != self.value,
            Op::Contains => text.contains(&self.value),
            Op::Ge => num().is_some_and(|(a, b)| a >= b),
            Op::Le => num().is_some_and(|(a, b)| a <= b),
            Op::Gt => num().is_some_and(|(a, b)| a > b),
            Op::Lt => num().is_some_and(|(a, b)| a < b),
        }
    }
}

/// A page of events.
#[derive(Debug, Default)]
pub struct Page {
    /// Each event with its node, and the cursor just after it.
    pub events: Vec<(String, Value, Cursor)>,
    /// Where the next page starts.
    pub next: Cursor,
    /// Nothing more is stored now (more may come while the trace runs).
    pub caught_up: bool,
    /// Every node's series is complete and read: there will never be more.
    pub complete: bool,
}

/// Reads up to `limit` events matching every filter, after `from`.
pub async fn page(
    folder: &Folder,
    from: &Cursor,
    limit: usize,
    filters: &[Filter],
) -> Result<Page> {
    let mut cursor = from.clone();
    let mut events = Vec::new();
    let mut scanned = 0;
    let mut all_complete = true;
    for node in folder.nodes().await? {
        let series = folder.series(&node).await?;
        all_complete &= series.complete;
        let (from_seq, from_line) = cursor.nodes.get(&node).copied().unwrap_or((0, 0));
        for c in series.chunks.iter().filter(|c| c.seq >= from_seq) {
            if scanned == MAX_CHUNKS_PER_PAGE || events.len() == limit {
                return Ok(Page {
                    events,
                    next: cursor,
                    caught_up: false,
                    complete: false,
                });
            }
            let lines = folder.lines(c).await?;
            scanned += 1;
            let skip = if c.seq == from_seq {
                from_line as usize
            } else {
                0
            };
            for (i, line) in lines.iter().enumerate().skip(skip) {
                if events.len() == limit {
                    cursor.nodes.insert(node.clone(), (c.seq, i as u64));
                    return Ok(Page {
                        events,
                        next: cursor,
                        caught_up: false,
                        complete: false,
                    });
                }
                let ev: Value = serde_json::from_str(line).map_err(|e| {
                    Error::Damaged(format!("{} line {}: {e}", c.key.as_ref(), i + 1))
                })?;
                let after = if i + 1 == lines.len() {
                    (c.seq + 1, 0)
                } else {
                    (c.seq, i as u64 + 1)
                };
                if filters.iter().all(|f| f.holds(&node, &ev)) {
                    cursor.nodes.insert(node.clone(), after);
                    events.push((node.clone(), ev, cursor.clone()));
                }
            }
            cursor.nodes.insert(node.clone(), (c.seq + 1, 0));
        }
    }
    Ok(Page {
        events,
        next: cursor,
        caught_up: true,
        complete: all_complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_select() {
        let ev = serde_json::json!({"latency_us": 25000, "wakee_comm": "ping", "waker_comm": "isc-socket"});
        let f = |s: &str| Filter::parse(s).unwrap().holds("node-a", &ev);
        assert!(f("latency_us>=20000") && !f("latency_us<20000") && f("latency_us > 24999.5"));
        assert!(f("wakee_comm==ping") && f("wakee_comm=ping") && !f("wakee_comm!=ping"));
        assert!(f("comm~isc") && !f("comm~nginx") && f("node==node-a"));
        assert!(!f("missing==1"));
        for bad in ["latency_us", "a b==1", "latency_us>=fast", "==1"] {
            let e = Filter::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(bad.split(['=', '>']).next().unwrap_or(bad)),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_cursor_goes_round_and_a_forged_one_is_refused() {
        let mut c = Cursor::default();
        c.nodes.insert("node-a".into(), (3, 17));
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(matches!(
            Cursor::decode("not-a-cursor"),
            Err(Error::BadRequest(_))
        ));
    }
}

#[cfg(test)]
mod paging {
    use std::io::Write;
    use std::sync::Arc;

    use object_store::local::LocalFileSystem;
    use object_store::path::Path;
    use sha2::{Digest, Sha256};

    use super::*;

    /// A job folder on disk: node-a finished (manifest, 3 chunks of 4 events), node-b running (chunks 0 and 2
    /// stored, 1 still on its way).
    fn folder(dir: &std::path::Path, damage: bool) -> Folder {
        let gz = |lines: &[String]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            for l in lines {
                e.write_all(l.as_bytes()).unwrap();
                e.write_all(b"\n").unwrap();
            }
            e.finish().unwrap()
        };
        let job = dir.join("tracejobs/ns/job-abcd1234");
        let a = job.join("node-a/events");
        std::fs::create_dir_all(&a).unwrap();
        let mut chunks = Vec::new();
        for seq in 0..3u64 {
            let lines: Vec<String> = (0..4)
                .map(|i| serde_json::json!({"seq": seq * 4 + i, "comm": if i == 0 { "ping" } else { "other" }}).to_string())
                .collect();
            let body = gz(&lines);
            let sha: String = Sha256::digest(&body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let file = format!("{seq:06}.ndjson.gz");
            let stored = if damage && seq == 1 {
                gz(&lines[..1])
            } else {
                body
            };
            std::fs::write(a.join(&file), stored).unwrap();
            chunks.push(serde_json::json!({"seq": seq, "file": file, "lines": 4, "bytes": 0, "compressedBytes": 0, "sha256": sha}));
        }
        let manifest = serde_json::json!({"format": "sonde-events/v1", "compression": "gzip", "complete": true, "chunks": chunks, "lines": 12});
        std::fs::write(a.join("manifest.json"), manifest.to_string()).unwrap();
        let b = job.join("node-b/events");
        std::fs::create_dir_all(&b).unwrap();
        for seq in [0u64, 2] {
            let lines = vec![serde_json::json!({"seq": 100 + seq, "comm": "ping"}).to_string()];
            std::fs::write(b.join(format!("{seq:06}.ndjson.gz")), gz(&lines)).unwrap();
        }
        Folder {
            store: Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap()),
            origin: "file:///test".into(),
            chunks: Arc::new(crate::chunk_cache::ChunkCache::new(1 << 20)),
            path: Path::from("tracejobs/ns/job-abcd1234"),
            inner: None,
        }
    }

    fn seqs(p: &Page) -> Vec<u64> {
        p.events
            .iter()
            .map(|(_, e, _)| e["seq"].as_u64().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn pages_return_every_stored_event_once_and_stop_at_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let f = folder(dir.path(), false);
        let (mut cursor, mut all) = (Cursor::default(), Vec::new());
        loop {
            let p = page(&f, &cursor, 5, &[]).await.unwrap();
            assert!(p.events.len() <= 5);
            all.extend(seqs(&p));
            cursor = p.next;
            if p.caught_up {
                assert!(!p.complete, "node-b is still running");
                break;
            }
        }
        let want: Vec<u64> = (0..12).chain([100]).collect();
        assert_eq!(all, want, "chunk 2 of node-b waits for chunk 1");
        // Chunk 1 arrives: the same cursor picks up both.
        let b = dir.path().join("tracejobs/ns/job-abcd1234/node-b/events");
        std::fs::copy(b.join("000000.ndjson.gz"), b.join("000001.ndjson.gz")).unwrap();
        let p = page(&f, &cursor, 5, &[]).await.unwrap();
        assert_eq!(seqs(&p), vec![100, 102]);
        // Each event's own cursor resumes right after it.
        let first = page(&f, &Cursor::default(), 2, &[]).await.unwrap();
        let resumed = page(&f, &first.events[0].2, 1, &[]).await.unwrap();
        assert_eq!(seqs(&resumed), vec![1]);
        // Filters: only what matches counts against the limit.
        let ping = [Filter::parse("comm==ping").unwrap()];
        let p = page(&f, &Cursor::default(), 100, &ping).await.unwrap();
        assert_eq!(seqs(&p), vec![0, 4, 8, 100, 100, 102]);
        let only_b = [Filter::parse("node==node-b").unwrap()];
        assert_eq!(
            seqs(&page(&f, &Cursor::default(), 100, &only_b).await.unwrap()),
            vec![100, 100, 102]
        );
        // Pages come from the decoded chunks in memory: a chunk read once is not read again.
        assert!(f.chunks.used() > 0);
        std::fs::remove_file(
            dir.path()
                .join("tracejobs/ns/job-abcd1234/node-a/events/000001.ndjson.gz"),
        )
        .unwrap();
        let again = page(&f, &Cursor::default(), 100, &[]).await.unwrap();
        assert_eq!(
            seqs(&again),
            (0..12).chain([100, 100, 102]).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_chunk_that_differs_from_its_manifest_is_an_error_not_data() {
        let dir = tempfile::tempdir().unwrap();
        let f = folder(dir.path(), true);
        let err = page(&f, &Cursor::default(), 100, &[]).await.unwrap_err();
        assert!(
            matches!(err, Error::Damaged(ref m) if m.contains("000001.ndjson.gz")),
            "{err}"
        );
    }
}
