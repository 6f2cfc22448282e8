//! Where a trace's results go: written, sealed in the spool and put to the store once (the uploader retries
//! what the store does not take), and chunks streamed while the trace runs. The session's side of
//! [`crate::results`], which holds the layers below it.

use super::*;
use crate::results::{status, store, streaming};
use sonde_crds::results::Below;

/// What became of a finished trace's (or window's) results.
pub(super) struct Published {
    /// Their URLs, once the store has them.
    pub(super) urls: Vec<String>,
    /// What could not even be written on the node (those results are lost).
    pub(super) problems: Vec<String>,
    /// Where this session's result sets stand, this one and any earlier still spooled.
    pub(super) upload: Upload,
}

/// Writes the results, seals them in the spool (durable, marked for upload) and tries the store once. A set the
/// store does not take now stays sealed for the uploader (`crate::results::uploader`), which retries it.
pub(super) async fn publish(
    job: &SessionJob,
    mut writer: ResultsWriter,
    findings: &Findings,
    title: &str,
    report: &mut RunReport,
    prefix: &str,
    last: bool,
) -> Published {
    let mut problems = Vec::new();
    let mut files = writer.finish(findings, title).unwrap_or_else(|e| {
        problems.push(format!("writing results: {e}"));
        Vec::new()
    });
    match writer.write_summary(report, &files) {
        Ok(p) => files.push(p),
        Err(e) => problems.push(format!("writing summary.json: {e}")),
    }
    let dir = writer.dir().to_path_buf();
    let to = job.destination(prefix);
    // fsyncs can wait behind other writes for seconds: off the async workers.
    let sealed = tokio::task::block_in_place(|| spool::seal(&dir, &to, &files, last, false));
    let delivered = match sealed {
        Ok(parcel) => spool::deliver(&dir, &parcel, &parcel.to.store_url).await,
        Err(e) => {
            // Not durable on the node: the store is the only copy there can be.
            problems.push(format!("spooling results in {}: {e}", dir.display()));
            store::upload(&to.store_url, &to.prefix, &dir, &files).await
        }
    };
    let (mut urls, error) = match delivered {
        Ok(urls) => (urls, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    // Chunks are listed in the manifest, not in status (a day-long trace has tens of thousands).
    urls.retain(|u| !u.ends_with(".ndjson.gz"));
    let mut upload = status::state_of(&job.spool, &job.namespace, &job.name, error.as_deref());
    if !problems.is_empty() {
        upload.state = UploadState::Incomplete;
        upload.message = Some(problems.join("; "));
    }
    Published {
        urls,
        problems,
        upload,
    }
}

/// Where a window's results go: named by its end time, so windows of a reloaded session never collide.
pub(super) fn window_prefix(result_prefix: &str) -> String {
    let end = k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    Below::Window(end.to_string()).under(result_prefix)
}

/// A running trace's chunk streamer ([`streaming::stream`]).
pub(super) struct Streaming {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    state: std::sync::Arc<std::sync::Mutex<streaming::Streamed>>,
}

impl Streaming {
    pub(super) fn start(dir: &std::path::Path, to: &spool::Destination) -> Streaming {
        let (stop, stopped) = watch::channel(false);
        let state = std::sync::Arc::default();
        let task = tokio::spawn(streaming::stream(
            dir.to_path_buf(),
            to.clone(),
            stopped,
            std::sync::Arc::clone(&state),
        ));
        Streaming { stop, task, state }
    }

    /// Puts the chunks' state in the heartbeat: pending while the store refuses them, else streaming (once
    /// it has been pending: a trace whose store never failed says nothing until its end).
    pub(super) fn report(&self, rep: &mut Reporter) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if st.error.is_none() && rep.status.upload.is_none() {
            return;
        }
        let upload = match st.error {
            None => Upload::default(),
            Some(error) => Upload {
                state: UploadState::Pending,
                pending: st.waiting,
                oldest_pending: st
                    .oldest
                    .map(|t| Time(k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or_default())),
                message: Some(error),
            },
        };
        let (ok, reason, message) = upload.condition(true, false, "on the node");
        rep.condition(types::RESULTS_COMPLETE, ok, reason, message);
        rep.status.upload = Some(upload);
    }

    /// Stops sending (a put under way finishes): what is left goes with the sealed set.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
