//! A trace's events as a series of chunks, each a self-contained gzip NDJSON file written once and never again
//! (`events/<seq>.ndjson.gz`), cut by size or by age so a reader sees events while the trace runs, and a
//! manifest (`events/manifest.json`, rewritten after every chunk and marked complete at the end) that lists
//! each chunk with its line and byte counts, first and last event time and SHA-256. The same layout comes out
//! of `sonde run` and, through the object store, out of the node agents: one reader serves both.
//!
//! gzip rather than zstd: every language's standard library and `zcat | jq` read it; level 1 (fast) is used.
//! Ratio and throughput on real events: `bench/`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The layout's constants and the manifest's types live with the rest of the results layout.
pub use sonde_vocab::results::{Chunk, EVENTS_DIR, FORMAT, MANIFEST, Manifest, chunk_file};

/// When a chunk is cut: at this many bytes of NDJSON, or this long after its first event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChunkLimits {
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            max_bytes: 8 << 20,
            max_age: Duration::from_secs(2),
        }
    }
}

/// Counts the bytes and hashes what goes to the file.
struct Hashing {
    file: BufWriter<File>,
    sha: Sha256,
    n: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.sha.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

struct Open {
    gz: GzEncoder<Hashing>,
    part: PathBuf,
    chunk: Chunk,
    opened: Instant,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Writes events as chunks in `<dir>/events/`.
pub struct ChunkWriter {
    dir: PathBuf,
    limits: ChunkLimits,
    open: Option<Open>,
    manifest: Manifest,
}

impl ChunkWriter {
    /// Starts an empty series in `<dir>/events/` (its manifest says so at once).
    pub fn create(dir: &Path, limits: ChunkLimits) -> Result<ChunkWriter> {
        let dir = dir.join(EVENTS_DIR);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let w = ChunkWriter {
            dir,
            limits,
            open: None,
            manifest: Manifest {
                format: FORMAT.into(),
                compression: "gzip".into(),
                ..Default::default()
            },
        };
        w.write_manifest()?;
        Ok(w)
    }

    /// Continues the series in `<dir>/events/` that a killed process left (or starts one): chunks already listed
    /// keep their numbers (uploaded ones may be gone from the folder: the manifest still lists them), complete
    /// chunks renamed but not yet listed are read back and listed, and the chunk that was being written is
    /// dropped. New chunks continue the sequence, so no name is ever used twice.
    pub fn resume(dir: &Path, limits: ChunkLimits) -> Result<ChunkWriter> {
        let events = dir.join(EVENTS_DIR);
        let manifest = match std::fs::read(events.join(MANIFEST)) {
            Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(format!("reading {}", events.display()))(e)),
        };
        let Some(mut manifest) = manifest else {
            return ChunkWriter::create(dir, limits);
        };
        let listing =
            std::fs::read_dir(&events).map_err(io(format!("listing {}", events.display())))?;
        for e in listing.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".part") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        loop {
            let seq = manifest.chunks.len() as u64;
            let path = events.join(chunk_file(seq));
            if !path.exists() {
                break;
            }
            match describe(&path, seq) {
                Ok(c) => {
                    manifest.lines += c.lines;
                    manifest.chunks.push(c);
                }
                // Renamed only once whole, so this is damage from outside: not ours to list.
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                    break;
                }
            }
        }
        manifest.complete = false;
        manifest.resumed += 1;
        let w = ChunkWriter {
            dir: events,
            limits,
            open: None,
            manifest,
        };
        w.write_manifest()?;
        Ok(w)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Appends one NDJSON line (without its newline). Returns a chunk that this line filled and closed.
    pub fn line(&mut self, line: &[u8], ts_ns: Option<u64>) -> Result<Option<PathBuf>> {
        let o = match self.open.take() {
            Some(o) => o,
            None => self.open_next()?,
        };
        let o = self.open.insert(o);
        o.gz.write_all(line)
            .and_then(|()| o.gz.write_all(b"\n"))
            .map_err(io(format!("writing {}", o.part.display())))?;
        o.chunk.lines += 1;
        o.chunk.bytes += line.len() as u64 + 1;
        if let Some(ts) = ts_ns {
            o.chunk.first_ts_ns.get_or_insert(ts);
            o.chunk.last_ts_ns = Some(ts);
        }
        if o.chunk.bytes >= self.limits.max_bytes {
            return self.close().map(Some);
        }
        Ok(None)
    }

    /// Closes the open chunk if it is older than the age limit (call it now and then while a trace runs).
    pub fn tick(&mut self) -> Result<Option<PathBuf>> {
        match &self.open {
            Some(o) if o.opened.elapsed() >= self.limits.max_age => self.close().map(Some),
            _ => Ok(None),
        }
    }

    /// Closes the last chunk and marks the manifest complete. Returns the manifest's path.
    pub fn finish(mut self) -> Result<(PathBuf, Manifest)> {
        if self.open.is_some() {
            self.close()?;
        }
        self.manifest.complete = true;
        let path = self.write_manifest()?;
        Ok((path, self.manifest))
    }

    fn open_next(&self) -> Result<Open> {
        let seq = self.manifest.chunks.len() as u64;
        let file = chunk_file(seq);
        let part = self.dir.join(format!(".{file}.part"));
        let f = File::create(&part).map_err(io(format!("creating {}", part.display())))?;
        let sink = Hashing {
            file: BufWriter::with_capacity(256 << 10, f),
            sha: Sha256::new(),
            n: 0,
        };
        Ok(Open {
            gz: GzEncoder::new(sink, Compression::fast()),
            part,
            chunk: Chunk {
                seq,
                file,
                ..Default::default()
            },
            opened: Instant::now(),
        })
    }

    /// Finishes the open chunk: compressed, renamed to its final name (so a reader never sees half a chunk), then
    /// listed in the manifest. Not fsynced here, on the drain's path: whoever needs it durable (the agent, when
    /// it seals a result set for upload) syncs it; a killed process loses nothing that was renamed.
    fn close(&mut self) -> Result<PathBuf> {
        let Some(o) = self.open.take() else {
            return Err(Error::Io {
                context: "closing a chunk".into(),
                source: std::io::Error::other("no chunk is open"),
            });
        };
        let ctx = || format!("finishing {}", o.part.display());
        let mut sink = o.gz.finish().map_err(io(ctx()))?;
        sink.flush().map_err(io(ctx()))?;
        sink.file.into_inner().map_err(|e| Error::Io {
            context: ctx(),
            source: e.into_error(),
        })?;
        let mut chunk = o.chunk;
        chunk.compressed_bytes = sink.n;
        chunk.sha256 = hex(&sink.sha.finalize());
        let path = self.dir.join(&chunk.file);
        std::fs::rename(&o.part, &path).map_err(io(ctx()))?;
        self.manifest.lines += chunk.lines;
        self.manifest.chunks.push(chunk);
        self.write_manifest()?;
        Ok(path)
    }

    fn write_manifest(&self) -> Result<PathBuf> {
        let path = self.dir.join(MANIFEST);
        let tmp = self.dir.join(format!(".{MANIFEST}.tmp"));
        let body = serde_json::to_vec_pretty(&self.manifest).map_err(|e| Error::Io {
            context: "encoding the events manifest".into(),
            source: e.into(),
        })?;
        let write = || -> std::io::Result<()> {
            File::create(&tmp)?.write_all(&body)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(io(format!("writing {}", path.display())))?;
        Ok(path)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A closed chunk's manifest entry, from its file.
fn describe(path: &Path, seq: u64) -> Result<Chunk> {
    use std::io::BufRead;
    let raw = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    let mut c = Chunk {
        seq,
        file: chunk_file(seq),
        compressed_bytes: raw.len() as u64,
        sha256: hex(&Sha256::digest(&raw)),
        ..Default::default()
    };
    for line in std::io::BufReader::new(flate2::read::GzDecoder::new(&raw[..])).lines() {
        let line = line.map_err(io(format!("decompressing {}", path.display())))?;
        c.lines += 1;
        c.bytes += line.len() as u64 + 1;
        let ts = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("ts_ns").and_then(serde_json::Value::as_u64));
        if let Some(ts) = ts {
            c.first_ts_ns.get_or_insert(ts);
            c.last_ts_ns = Some(ts);
        }
    }
    Ok(c)
}

/// Reads a results folder's events back, chunk by chunk in sequence order, checking each chunk against the
/// manifest (SHA-256 and line count). For tests, `sonde` and tools.
pub fn read_events(results_dir: &Path) -> Result<(Manifest, Vec<serde_json::Value>)> {
    use std::io::BufRead;
    let dir = results_dir.join(EVENTS_DIR);
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
    let manifest = Manifest::from_json(&bytes).map_err(|e| Error::Io {
        context: format!("parsing {}", path.display()),
        source: std::io::Error::other(e),
    })?;
    let mut events = Vec::new();
    for c in &manifest.chunks {
        let p = dir.join(&c.file);
        let raw = std::fs::read(&p).map_err(io(format!("reading {}", p.display())))?;
        let bad = |why: String| Error::Io {
            context: format!("checking {}", p.display()),
            source: std::io::Error::other(why),
        };
        if hex(&Sha256::digest(&raw)) != c.sha256 {
            return Err(bad("SHA-256 differs from the manifest".into()));
        }
        let mut lines = 0;
        for line in std::io::BufReader::new(flate2::read::GzDecoder::new(&raw[..])).lines() {
            let line = line.map_err(io(format!("decompressing {}", p.display())))?;
            let v =
                serde_json::from_str(&line).map_err(|e| bad(format!("line {}: {e}", lines + 1)))?;
            events.push(v);
            lines += 1;
        }
        if lines != c.lines {
            return Err(bad(format!("{lines} lines, the manifest says {}", c.lines)));
        }
    }
    Ok((manifest, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"ts_ns": 1000 + i, "comm": "w-mine", "seq": i}))
            .unwrap()
    }

    /// Chunks cut by size only.
    fn by_size(max_bytes: u64) -> ChunkLimits {
        ChunkLimits {
            max_bytes,
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn chunks_are_cut_by_size_listed_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let limits = by_size(4096);
        let mut w = ChunkWriter::create(dir.path(), limits).unwrap();
        assert!(!w.manifest().complete);
        let mut closed = 0;
        for i in 0..1000 {
            closed += w.line(&line(i), Some(1000 + i)).unwrap().is_some() as u32;
        }
        let (_, m) = w.finish().unwrap();
        assert!(m.complete && m.lines == 1000);
        assert!(
            m.chunks.len() >= 10 && closed as usize == m.chunks.len() - 1,
            "{}",
            m.chunks.len()
        );
        assert_eq!(m.chunks[0].first_ts_ns, Some(1000));
        assert_eq!(m.chunks.last().unwrap().last_ts_ns, Some(1999));
        assert!(m.chunks.iter().all(|c| c.compressed_bytes < c.bytes));
        let (read, events) = read_events(dir.path()).unwrap();
        assert_eq!(read, m);
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (0..1000).collect::<Vec<_>>());
        // No partial file is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path().join(EVENTS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn a_resumed_series_keeps_its_numbers_lists_unlisted_chunks_and_drops_the_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let limits = by_size(512);
        let mut w = ChunkWriter::create(dir.path(), limits).unwrap();
        for i in 0..40 {
            w.line(&line(i), Some(1000 + i)).unwrap();
        }
        let listed = w.manifest().clone();
        assert!(listed.chunks.len() >= 3, "{listed:?}");
        // Killed here: the open chunk is half written. And as if the last close had not reached the manifest:
        let events = dir.path().join(EVENTS_DIR);
        let unlisted = listed.chunks.last().unwrap().clone();
        let mut shorter = listed.clone();
        shorter.chunks.pop();
        shorter.lines -= unlisted.lines;
        std::fs::write(events.join(MANIFEST), serde_json::to_vec(&shorter).unwrap()).unwrap();
        drop(w);
        // The first chunk already went to the store and left the folder.
        std::fs::remove_file(events.join("000000.ndjson.gz")).unwrap();
        let mut w = ChunkWriter::resume(dir.path(), limits).unwrap();
        assert_eq!(
            w.manifest().chunks,
            listed.chunks,
            "the unlisted chunk is listed again"
        );
        assert_eq!((w.manifest().resumed, w.manifest().complete), (1, false));
        w.line(&line(100), Some(2000)).unwrap();
        let (_, m) = w.finish().unwrap();
        let last = m.chunks.last().unwrap();
        assert_eq!(
            last.seq,
            listed.chunks.len() as u64,
            "the sequence continues"
        );
        assert_eq!(m.lines, listed.lines + 1);
        let names: Vec<String> = std::fs::read_dir(&events)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".part")), "{names:?}");
        // A folder with no series yet starts one.
        let fresh = tempfile::tempdir().unwrap();
        let w = ChunkWriter::resume(fresh.path(), limits).unwrap();
        assert_eq!(w.manifest().resumed, 0);
    }

    #[test]
    fn an_old_chunk_is_closed_by_the_tick_and_a_damaged_one_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ChunkLimits {
            max_bytes: 1 << 30,
            max_age: Duration::ZERO,
        };
        let mut w = ChunkWriter::create(dir.path(), limits).unwrap();
        assert!(w.tick().unwrap().is_none(), "nothing open, nothing closed");
        w.line(&line(1), None).unwrap();
        let first = w.tick().unwrap().expect("closed by age");
        assert!(first.ends_with("000000.ndjson.gz"));
        assert_eq!(w.manifest().chunks.len(), 1);
        w.finish().unwrap();
        let mut raw = std::fs::read(&first).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        std::fs::write(&first, raw).unwrap();
        let err = read_events(dir.path()).unwrap_err().to_string();
        assert!(err.contains("SHA-256"), "{err}");
    }
}
