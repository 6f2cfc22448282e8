//! The results layout: where an object's results are in a storage location, and what its events folder holds.
//! An interface between the operator (which names a session's prefix), the agents and `sonde run` (which write
//! there), the results server (which takes uploads there and reads them back) and any tool reading a bucket:
//!
//! ```text
//! <tracejobs|probepolicies>/<namespace>/<name>-<uid8>/<node>/   ResultsPath: one node's results of one object
//!     summary.json, histograms.json, folded.txt, ...             a run's files
//!     events/manifest.json, events/<seq>.ndjson.gz                its events (Manifest, Chunk)
//!     window-<end>/...                                            a policy's windows, each a run
//!     before-restart-<time>/...                                   what a restarted agent found cut off
//! ```
//!
//! Every segment is plain (ASCII letters, digits, `-`, `_`, `.`; never `.` or `..`), so a key never leaves its
//! object's folder, whoever wrote its parts.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Folder of the chunks and their manifest, in a run's folder.
pub const EVENTS_DIR: &str = "events";
/// The manifest's file name in [`EVENTS_DIR`].
pub const MANIFEST: &str = "manifest.json";
/// The manifest's `format`: bumped when the layout changes incompatibly.
pub const FORMAT: &str = "sonde-events/v1";
/// A run's summary (counts, findings, which other files it wrote).
pub const SUMMARY: &str = "summary.json";
/// A run's histograms, as JSON and as text.
pub const HISTOGRAMS: &str = "histograms.json";
pub const HISTOGRAMS_TEXT: &str = "histograms.txt";
/// A profile's folded stacks and its flame graph.
pub const FOLDED: &str = "folded.txt";
pub const FLAMEGRAPH: &str = "flamegraph.svg";
/// A run's files besides its events, each with its media type: what the results server serves by name.
pub const RUN_FILES: [(&str, &str); 5] = [
    (SUMMARY, "application/json"),
    (HISTOGRAMS, "application/json"),
    (HISTOGRAMS_TEXT, "text/plain; charset=utf-8"),
    (FOLDED, "text/plain; charset=utf-8"),
    (FLAMEGRAPH, "image/svg+xml"),
];

/// How a chunk's file name ends: gzip NDJSON.
pub const CHUNK_SUFFIX: &str = ".ndjson.gz";

/// The file name of chunk `seq` in [`EVENTS_DIR`]: zero-padded, so names sort as their sequence.
pub fn chunk_file(seq: u64) -> String {
    format!("{seq:06}{CHUNK_SUFFIX}")
}

/// The sequence number of a chunk's file name (`000012.ndjson.gz` is 12), if it is one.
pub fn chunk_seq(file: &str) -> Option<u64> {
    file.strip_suffix(CHUNK_SUFFIX)?.parse().ok()
}

/// Whose results: the first segment of every key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    TraceJob,
    ProbePolicy,
}

impl OwnerKind {
    pub const ALL: [OwnerKind; 2] = [OwnerKind::TraceJob, OwnerKind::ProbePolicy];

    /// The folder its results are under (the resource's plural).
    pub const fn folder(self) -> &'static str {
        match self {
            OwnerKind::TraceJob => "tracejobs",
            OwnerKind::ProbePolicy => "probepolicies",
        }
    }

    pub fn from_folder(folder: &str) -> Option<OwnerKind> {
        OwnerKind::ALL.into_iter().find(|k| k.folder() == folder)
    }

    /// `<kind>/<namespace>`: everything of one namespace's objects of this kind.
    pub fn namespace_folder(self, namespace: &str) -> String {
        format!("{}/{namespace}", self.folder())
    }

    /// `<kind>/<namespace>/<name>-<uid8>`: every node's results of one object.
    pub fn object_folder(self, namespace: &str, name: &str, uid: &str) -> String {
        format!("{}/{namespace}/{name}-{}", self.folder(), uid8(uid))
    }
}

/// The first 8 characters of a uid (all of a shorter one): what tells an object from a later one of its name.
pub fn uid8(uid: &str) -> &str {
    uid.get(..8).unwrap_or(uid)
}

/// `<kind>/<namespace>/<name>-<uid8>/<node>`: one node's results of one object (a ProbeSession's
/// `spec.resultPrefix`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResultsPath {
    pub kind: OwnerKind,
    pub namespace: String,
    pub name: String,
    /// The object's uid, its first 8 characters.
    pub uid8: String,
    pub node: String,
}

/// Why a string is not a results path or key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutError {
    pub path: String,
    pub why: &'static str,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not under <tracejobs|probepolicies>/<namespace>/<name>-<uid>/<node>: {}",
            self.path, self.why
        )
    }
}

impl std::error::Error for LayoutError {}

impl ResultsPath {
    pub fn new(kind: OwnerKind, namespace: &str, name: &str, uid: &str, node: &str) -> ResultsPath {
        ResultsPath {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            uid8: uid8(uid).into(),
            node: node.into(),
        }
    }

    /// A results path, exactly four plain segments.
    pub fn parse(path: &str) -> Result<ResultsPath, LayoutError> {
        let (p, rest) = ResultsPath::split(path)?;
        match rest.is_empty() {
            true => Ok(p),
            false => Err(LayoutError {
                path: path.into(),
                why: "it goes on below the node",
            }),
        }
    }

    /// A key below a results path: the path and what follows it (`summary.json`, `events/000000.ndjson.gz`,
    /// `window-.../...`), never empty.
    pub fn parse_key(key: &str) -> Result<(ResultsPath, &str), LayoutError> {
        let (p, rest) = ResultsPath::split(key)?;
        match rest.is_empty() {
            true => Err(LayoutError {
                path: key.into(),
                why: "it names no file below the node",
            }),
            false => Ok((p, rest)),
        }
    }

    fn split(path: &str) -> Result<(ResultsPath, &str), LayoutError> {
        let bad = |why| LayoutError {
            path: path.into(),
            why,
        };
        if !path.split('/').all(plain) {
            return Err(bad(
                "every segment must be plain (letters, digits, - _ .; not . or ..)",
            ));
        }
        let mut segments = path.splitn(5, '/');
        let (Some(kind), Some(namespace), Some(object), Some(node)) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(bad("it has fewer than four segments"));
        };
        let kind = OwnerKind::from_folder(kind)
            .ok_or_else(|| bad("it starts with neither tracejobs nor probepolicies"))?;
        let (name, uid8) = object
            .rsplit_once('-')
            .filter(|(name, uid8)| !name.is_empty() && !uid8.is_empty())
            .ok_or_else(|| bad("its third segment is not <name>-<uid>"))?;
        Ok((
            ResultsPath {
                kind,
                namespace: namespace.into(),
                name: name.into(),
                uid8: uid8.into(),
                node: node.into(),
            },
            segments.next().unwrap_or_default(),
        ))
    }

    /// `<kind>/<namespace>/<name>-<uid8>`: the object's folder, every node's results.
    pub fn object_folder(&self) -> String {
        format!(
            "{}/{}/{}-{}",
            self.kind.folder(),
            self.namespace,
            self.name,
            self.uid8
        )
    }

    /// Whether an object with this uid is the one these results belong to.
    pub fn is_of(&self, uid: &str) -> bool {
        uid8(uid) == self.uid8
    }
}

impl fmt::Display for ResultsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.object_folder(), self.node)
    }
}

/// A folder below a results path holding a run's files of its own (its summary, its events, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Below {
    /// A policy's window, named by its end time (`window-20261207T101000Z`): windows of a reloaded session
    /// never collide.
    Window(String),
    /// A job's trace started again while an earlier run's files of the same session still wait to be sent
    /// (`run-<start, ms since the epoch>`).
    Run(String),
    /// What a restarted agent found of an earlier process's trace (`before-restart-<time>`).
    BeforeRestart(String),
}

impl Below {
    const PREFIXES: [&'static str; 3] = ["window-", "run-", "before-restart-"];

    /// A folder name of one of these, with a plain tail of letters and digits.
    pub fn parse(folder: &str) -> Option<Below> {
        let (i, tail) = Below::PREFIXES
            .iter()
            .enumerate()
            .find_map(|(i, p)| Some((i, folder.strip_prefix(p)?)))?;
        if tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let tail = tail.to_string();
        Some(match i {
            0 => Below::Window(tail),
            1 => Below::Run(tail),
            _ => Below::BeforeRestart(tail),
        })
    }

    /// The folder's key below `prefix` (a results path, or a folder below one).
    pub fn under(&self, prefix: &str) -> String {
        format!("{prefix}/{self}")
    }
}

impl fmt::Display for Below {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (i, tail) = match self {
            Below::Window(t) => (0, t),
            Below::Run(t) => (1, t),
            Below::BeforeRestart(t) => (2, t),
        };
        write!(f, "{}{tail}", Below::PREFIXES[i])
    }
}

/// A path segment that cannot climb out of its folder or be read two ways.
fn plain(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// One chunk in the manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chunk {
    pub seq: u64,
    /// File name in the events folder.
    pub file: String,
    pub lines: u64,
    /// NDJSON bytes before compression.
    pub bytes: u64,
    pub compressed_bytes: u64,
    /// `ts_ns` of its first and last event (kernel monotonic nanoseconds), where events carry one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ts_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ts_ns: Option<u64>,
    /// Of the compressed file, hex.
    pub sha256: String,
}

/// What a reader needs to know what is there and whether it is all there (`events/manifest.json`). Every field
/// but `resumed` and the chunks' times is required: a manifest missing one is damaged, not empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    pub compression: String,
    /// False while the trace runs (more chunks may come); true once the last chunk is in the list.
    pub complete: bool,
    pub chunks: Vec<Chunk>,
    /// Lines over all chunks.
    pub lines: u64,
    /// How many times a restarted node agent resumed this series: each time, the events of the chunk that was
    /// open when the previous process died (at most its age limit, 2 s) are missing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Manifest {
    /// A manifest as JSON, if it is one of this layout's format ([`FORMAT`]): a later format is refused, not read
    /// as this one.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match m.format == FORMAT {
            true => Ok(m),
            false => Err(format!(
                "format {:?}, not {FORMAT:?}: written by another version of Sonde",
                m.format
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_results_path_formats_and_parses_back() {
        let p = ResultsPath::new(
            OwnerKind::ProbePolicy,
            "team-a",
            "ping-wakeups",
            "0a1b2c3d-4e5f-6789",
            "node-1.example",
        );
        let s = p.to_string();
        assert_eq!(
            s,
            "probepolicies/team-a/ping-wakeups-0a1b2c3d/node-1.example"
        );
        assert_eq!(ResultsPath::parse(&s), Ok(p.clone()));
        assert_eq!(
            p.object_folder(),
            "probepolicies/team-a/ping-wakeups-0a1b2c3d"
        );
        assert_eq!(
            OwnerKind::ProbePolicy.object_folder("team-a", "ping-wakeups", "0a1b2c3d-4e5f"),
            p.object_folder()
        );
        assert!(p.is_of("0a1b2c3d-ffff") && !p.is_of("0a1b2c3e-4e5f"));
        let key = format!("{s}/window-20261207t101000z/events/000001.ndjson.gz");
        let (q, rest) = ResultsPath::parse_key(&key).unwrap();
        assert_eq!(
            (q, rest),
            (p, "window-20261207t101000z/events/000001.ndjson.gz")
        );
    }

    #[test]
    fn anything_else_is_refused_saying_why() {
        for (path, why) in [
            ("tracejobs/a/j-0a1b2c3d", "fewer than four"),
            ("jobs/a/j-0a1b2c3d/n", "neither tracejobs"),
            ("tracejobs/a/j/n", "<name>-<uid>"),
            ("tracejobs/a/-0a1b2c3d/n", "<name>-<uid>"),
            ("tracejobs/../j-0a1b2c3d/n", "plain"),
            ("tracejobs/a/j-0a1b2c3d/n/../../b", "plain"),
            ("tracejobs//j-0a1b2c3d/n", "plain"),
            ("tracejobs/a/j-0a1b2c3d/n\\x", "plain"),
            ("tracejobs/a/j-0a1b2c3d/n/summary.json", "below the node"),
        ] {
            let e = ResultsPath::parse(path).unwrap_err();
            assert!(e.why.contains(why), "{path}: {e}");
            assert!(e.to_string().contains(&format!("{path:?}")), "{e}");
        }
        let e = ResultsPath::parse_key("tracejobs/a/j-0a1b2c3d/n").unwrap_err();
        assert!(e.why.contains("no file"), "{e}");
    }

    #[test]
    fn folders_below_a_results_path_format_and_parse_back() {
        for b in [
            Below::Window("20261207T101000Z".into()),
            Below::Run("1765102200000".into()),
            Below::BeforeRestart("20261207T101000Z".into()),
        ] {
            assert_eq!(Below::parse(&b.to_string()), Some(b.clone()));
            assert_eq!(b.under("p"), format!("p/{b}"));
        }
        assert_eq!(
            Below::Window("x1".into()).under("tracejobs/a/j-1/n"),
            "tracejobs/a/j-1/n/window-x1"
        );
        for bad in ["window-", "window-../x", "window-a.b", "events", "run"] {
            assert_eq!(Below::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_manifest_of_another_format_or_missing_a_field_is_refused() {
        let mut m = Manifest {
            format: FORMAT.into(),
            compression: "gzip".into(),
            complete: true,
            ..Default::default()
        };
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::from_json(&json), Ok(m.clone()));
        m.format = "sonde-events/v2".into();
        let e = Manifest::from_json(&serde_json::to_vec(&m).unwrap()).unwrap_err();
        assert!(e.contains("sonde-events/v2"), "{e}");
        for damaged in [
            &b"{}"[..],
            br#"{"format": "sonde-events/v1", "complete": true}"#,
        ] {
            assert!(Manifest::from_json(damaged).is_err());
        }
    }

    #[test]
    fn chunk_files_name_their_sequence() {
        assert_eq!(chunk_file(12), "000012.ndjson.gz");
        assert_eq!(chunk_seq(&chunk_file(1_234_567)), Some(1_234_567));
        assert_eq!(chunk_seq(".000001.ndjson.gz.part"), None);
        assert_eq!(chunk_seq("manifest.json"), None);
    }
}
