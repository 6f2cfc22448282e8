//! Writing a trace's results to a folder: events as they arrive, in gzip NDJSON chunks with a manifest
//! (`events/`, see [`crate::chunks`]), then summary.json, histograms (JSON and text), folded stacks and a flame
//! graph SVG. The node agent uploads the same files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sonde_vocab::results as layout;

use crate::aggregate::{Event, Findings};
use crate::chunks::{ChunkLimits, ChunkWriter};
use crate::error::{Error, Result};
use crate::report::RunReport;

pub struct ResultsWriter {
    dir: PathBuf,
    events: Option<ChunkWriter>,
    max_events: u64,
    /// Bytes of events (NDJSON, before compression) the caller lets a trace keep (the node agent's limit); unlimited by default.
    max_bytes: u64,
    pub written: u64,
    pub bytes: u64,
    /// Events the caps kept out of the results (aggregates still count them).
    pub not_kept: u64,
    /// Closed by the caller while events must not be kept (the node agent's spool is full), with the reason.
    gate: Option<Gate>,
    /// Of `not_kept`, those the closed gate refused.
    pub refused: u64,
    /// Of `not_kept`, those past `max_events`.
    over_max_events: u64,
    /// Of `not_kept`, the event whose write failed and every one after it: a failed write leaves the events
    /// file as it was, and nothing more is written to it.
    write_failed: u64,
    /// What [`ResultsWriter::take_not_kept`] reported so far: refused, over max events, write failed, over max
    /// bytes.
    reported: [u64; 4],
    line: Vec<u8>,
}

/// Closed by its owner while events must not be kept, with why; shared by the writers it gates. The reason is
/// read only when a status is written, the flag on every event.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    closed: Arc<AtomicBool>,
    why: Arc<Mutex<String>>,
}

impl Gate {
    /// Closes the gate, saying why.
    pub fn close(&self, why: impl Into<String>) {
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why.into();
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Opens it again; the last reason stays for the notes of events it refused meanwhile.
    pub fn open(&self) {
        self.closed.store(false, Ordering::Relaxed);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Why it was last closed.
    pub fn why(&self) -> String {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether anything but this handle still holds the gate.
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.closed) > 1
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

impl ResultsWriter {
    pub fn create(dir: &Path, keep_events: bool, max_events: u64) -> Result<Self> {
        Self::open(dir, keep_events, max_events, ChunkWriter::create)
    }

    /// Like [`ResultsWriter::create`], but continues the event series a killed process left in `dir`
    /// ([`ChunkWriter::resume`]). The caps count from zero again.
    pub fn resume(dir: &Path, keep_events: bool, max_events: u64) -> Result<Self> {
        Self::open(dir, keep_events, max_events, ChunkWriter::resume)
    }

    fn open(
        dir: &Path,
        keep_events: bool,
        max_events: u64,
        chunks: fn(&Path, ChunkLimits) -> Result<ChunkWriter>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let events = match keep_events {
            true => Some(chunks(dir, ChunkLimits::default())?),
            false => None,
        };
        Ok(ResultsWriter {
            dir: dir.to_path_buf(),
            events,
            max_events,
            max_bytes: u64::MAX,
            written: 0,
            bytes: 0,
            not_kept: 0,
            gate: None,
            refused: 0,
            over_max_events: 0,
            write_failed: 0,
            reported: [0; 4],
            line: Vec::new(),
        })
    }

    /// Keeps at most `max_bytes` of events; later events are counted in `not_kept`, not written.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// While `gate` is closed, events are counted (in `not_kept` and `refused`) and not written; the gate says
    /// why.
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Why events stopped being kept, once a cap was reached: one sentence for a status message.
    pub fn cap_note(&self) -> Option<String> {
        if self.refused > 0 {
            let why = self.gate.as_ref().map(Gate::why).unwrap_or_default();
            return Some(format!(
                "{} events were counted but not kept: {why}; the {} kept before are intact",
                self.refused, self.written
            ));
        }
        (self.not_kept > 0).then(|| {
            let cap = if self.written >= self.max_events {
                format!("output.maxEvents ({})", self.max_events)
            } else {
                format!("this node's limit of {} MiB of events per trace", self.max_bytes >> 20)
            };
            format!(
                "kept the first {} events ({:.1} MiB) and counted {} more without keeping them: {cap} was reached",
                self.written,
                self.bytes as f64 / 1048576.0,
                self.not_kept
            )
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Events not kept since the last call, by reason (`SpoolFull`, `MaxEvents`, `MaxEventBytes`; only those
    /// with some), for a caller that counts them as they happen.
    pub fn take_not_kept(&mut self) -> Vec<(&'static str, u64)> {
        let now = [
            self.refused,
            self.over_max_events,
            self.write_failed,
            self.not_kept - self.refused - self.over_max_events - self.write_failed,
        ];
        let reasons = ["SpoolFull", "MaxEvents", "WriteFailed", "MaxEventBytes"];
        let out = (0..4)
            .filter(|&i| now[i] > self.reported[i])
            .map(|i| (reasons[i], now[i] - self.reported[i]))
            .collect();
        self.reported = now;
        out
    }

    /// Appends one event; past `max_events` events are counted by the caller but no longer written.
    /// An event sink for `Running::drain`/`finish`/`roll`: writes each event and keeps the first error, to be
    /// reported once the drain is done.
    pub fn sink<'a>(&'a mut self, err: &'a mut Option<Error>) -> impl FnMut(&Event) + 'a {
        move |ev| {
            if let Err(e) = self.event(ev) {
                err.get_or_insert(e);
            }
        }
    }

    pub fn event(&mut self, ev: &Event) -> Result<()> {
        let Some(w) = self.events.as_mut() else {
            return Ok(());
        };
        if self.write_failed > 0 {
            self.not_kept += 1;
            self.write_failed += 1;
            return Ok(());
        }
        if self.gate.as_ref().is_some_and(Gate::is_closed) {
            self.not_kept += 1;
            self.refused += 1;
            return Ok(());
        }
        if self.written >= self.max_events {
            self.not_kept += 1;
            self.over_max_events += 1;
            return Ok(());
        }
        if self.bytes >= self.max_bytes {
            self.not_kept += 1;
            return Ok(());
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, &ev.json).map_err(|e| Error::Io {
            context: "writing event".into(),
            source: e.into(),
        })?;
        let len = self.line.len() as u64 + 1;
        if self.bytes + len > self.max_bytes {
            self.bytes = self.max_bytes;
            self.not_kept += 1;
            return Ok(());
        }
        let ts = ev.json.get("ts_ns").and_then(serde_json::Value::as_u64);
        if let Err(e) = w.line(&self.line, ts) {
            self.not_kept += 1;
            self.write_failed += 1;
            return Err(e);
        }
        self.written += 1;
        self.bytes += len;
        Ok(())
    }

    /// Closes the open chunk once it is old enough (2 s), so what was written is complete on disk (an agent
    /// killed mid-trace loses at most that much; its successor uploads the rest). Call it now and then.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.events.as_mut() {
            w.tick()?;
        }
        Ok(())
    }

    /// Writes the end-of-trace files and returns every result file, summary.json included: the caller writes
    /// that last with `write_summary`, so the summary can list them all.
    /// Every chunk is listed, then the manifest.
    pub fn finish(&mut self, findings: &Findings, title: &str) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        if let Some(events) = self.events.take() {
            let (manifest, _) = events.finish()?;
            let dir = manifest.parent().unwrap_or(&self.dir).to_path_buf();
            for entry in
                std::fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))?
            {
                let path = entry
                    .map_err(io(format!("listing {}", dir.display())))?
                    .path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if name.ends_with(layout::CHUNK_SUFFIX) && !name.starts_with('.') {
                    files.push(path);
                }
            }
            files.sort();
            files.push(manifest);
        }
        files.push(self.dir.join(layout::SUMMARY));
        if !findings.histograms.is_empty() {
            files.push(self.write_json(layout::HISTOGRAMS, &findings.histograms)?);
            let text: String = findings
                .histograms
                .iter()
                .map(|h| h.render() + "\n")
                .collect();
            files.push(self.write(layout::HISTOGRAMS_TEXT, text.as_bytes())?);
        }
        if !findings.folded.is_empty() {
            files.push(self.write(
                layout::FOLDED,
                (findings.folded.join("\n") + "\n").as_bytes(),
            )?);
            let svg =
                crate::profile::flamegraph_svg(&findings.folded, title).map_err(|e| Error::Io {
                    context: "rendering flame graph".into(),
                    source: std::io::Error::other(e),
                })?;
            files.push(self.write(layout::FLAMEGRAPH, &svg)?);
        }
        Ok(files)
    }

    /// Writes `summary.json`, naming the set's other files (`files`, as [`ResultsWriter::finish`] returned
    /// them) relative to the folder; the chunks are left to the manifest, which lists them.
    pub fn write_summary(&self, report: &mut RunReport, files: &[PathBuf]) -> Result<PathBuf> {
        report.results = files
            .iter()
            .filter(|f| {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name != layout::SUMMARY && !name.ends_with(layout::CHUNK_SUFFIX)
            })
            .map(|f| f.strip_prefix(&self.dir).unwrap_or(f).display().to_string())
            .collect();
        self.write_json(layout::SUMMARY, report)
    }

    fn write_json(&self, name: &str, value: &impl Serialize) -> Result<PathBuf> {
        let body = serde_json::to_vec_pretty(value).map_err(|e| Error::Io {
            context: format!("encoding {name}"),
            source: e.into(),
        })?;
        self.write(name, &body)
    }

    fn write(&self, name: &str, body: &[u8]) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, body).map_err(io(format!("writing {}", path.display())))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn event(i: u64) -> Event {
        Event {
            json: serde_json::json!({"seq": i, "comm": "w-mine"}),
            breach: false,
            value: None,
        }
    }

    #[test]
    fn the_byte_cap_keeps_whole_lines_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ResultsWriter::create(dir.path(), true, 1_000_000)
            .unwrap()
            .with_max_bytes(1000);
        for i in 0..200 {
            w.event(&event(i)).unwrap();
        }
        let files = w.finish(&Findings::default(), "t").unwrap();
        assert!(
            files.iter().any(|f| f.ends_with("events/000000.ndjson.gz")),
            "{files:?}"
        );
        let (manifest, events) = crate::chunks::read_events(dir.path()).unwrap();
        assert!(manifest.complete && events.len() as u64 == w.written);
        let bytes: u64 = manifest.chunks.iter().map(|c| c.bytes).sum();
        assert!(bytes <= 1000 && bytes > 900, "{bytes}");
        assert!(events.iter().all(Value::is_object));
        assert_eq!(w.written + w.not_kept, 200);
        assert!(
            w.cap_note().unwrap().contains("MiB of events"),
            "{:?}",
            w.cap_note()
        );
    }

    #[test]
    fn a_closed_gate_refuses_events_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate::default();
        let mut w = ResultsWriter::create(dir.path(), true, 1_000)
            .unwrap()
            .with_gate(gate.clone());
        w.event(&event(0)).unwrap();
        gate.close("the spool is full");
        w.event(&event(1)).unwrap();
        w.event(&event(2)).unwrap();
        assert_eq!((w.written, w.refused, w.not_kept), (1, 2, 2));
        let note = w.cap_note().unwrap();
        assert!(
            note.contains("2 events were counted but not kept: the spool is full"),
            "{note}"
        );
    }

    #[test]
    fn events_not_kept_are_told_once_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate::default();
        let mut w = ResultsWriter::create(dir.path(), true, 3)
            .unwrap()
            .with_gate(gate.clone());
        for i in 0..5 {
            w.event(&event(i)).unwrap();
        }
        assert_eq!(w.take_not_kept(), vec![("MaxEvents", 2)]);
        assert_eq!(w.take_not_kept(), vec![]);
        gate.close("full");
        w.event(&event(6)).unwrap();
        assert_eq!(w.take_not_kept(), vec![("SpoolFull", 1)]);
    }

    #[test]
    fn max_events_is_named_when_it_is_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ResultsWriter::create(dir.path(), true, 5).unwrap();
        assert_eq!(w.cap_note(), None);
        for i in 0..8 {
            w.event(&event(i)).unwrap();
        }
        assert_eq!((w.written, w.not_kept), (5, 3));
        assert!(w.cap_note().unwrap().contains("output.maxEvents (5)"));
    }
}
