//! Writing a trace's results to a folder: events as NDJSON while they arrive, then summary.json,
//! histograms (JSON and text), folded stacks and a flame graph SVG. The node agent uploads the same files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::aggregate::{Event, Findings};
use crate::error::{Error, Result};

pub struct ResultsWriter {
    dir: PathBuf,
    events: Option<BufWriter<File>>,
    max_events: u64,
    pub written: u64,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

impl ResultsWriter {
    pub fn create(dir: &Path, keep_events: bool, max_events: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let events = if keep_events {
            let path = dir.join("events.ndjson");
            Some(BufWriter::new(
                File::create(&path).map_err(io(format!("creating {}", path.display())))?,
            ))
        } else {
            None
        };
        Ok(ResultsWriter {
            dir: dir.to_path_buf(),
            events,
            max_events,
            written: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
        if self.written >= self.max_events {
            return Ok(());
        }
        if let Some(w) = self.events.as_mut() {
            serde_json::to_writer(&mut *w, &ev.json).map_err(|e| Error::Io {
                context: "writing event".into(),
                source: e.into(),
            })?;
            w.write_all(b"\n")
                .map_err(io("writing events.ndjson".into()))?;
            self.written += 1;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.events.as_mut() {
            w.flush().map_err(io("flushing events.ndjson".into()))?;
        }
        Ok(())
    }

    /// Writes the end-of-trace files and returns every result file, summary.json included: the caller writes
    /// that last with `write_summary`, so the summary can list them all.
    pub fn finish(&mut self, findings: &Findings, title: &str) -> Result<Vec<PathBuf>> {
        self.flush()?;
        let mut files = Vec::new();
        if self.events.is_some() {
            files.push(self.dir.join("events.ndjson"));
        }
        files.push(self.dir.join("summary.json"));
        if !findings.histograms.is_empty() {
            files.push(self.write_json("histograms.json", &findings.histograms)?);
            let text: String = findings
                .histograms
                .iter()
                .map(|h| h.render() + "\n")
                .collect();
            files.push(self.write("histograms.txt", text.as_bytes())?);
        }
        if !findings.folded.is_empty() {
            files.push(self.write("folded.txt", (findings.folded.join("\n") + "\n").as_bytes())?);
            let svg =
                crate::profile::flamegraph_svg(&findings.folded, title).map_err(|e| Error::Io {
                    context: "rendering flame graph".into(),
                    source: std::io::Error::other(e),
                })?;
            files.push(self.write("flamegraph.svg", &svg)?);
        }
        Ok(files)
    }

    pub fn write_summary(&self, report: &impl Serialize) -> Result<PathBuf> {
        self.write_json("summary.json", report)
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
