//! What a session's status says of its results, and the results layer's own write of it.
//!
//! [`state_of`] reads how a session's sets stand from the spool (`status.upload`: Complete, or Pending with the
//! count of sealed sets, the oldest seal time and the store's last error). The session computes it as it ends
//! (and after each policy window) and the uploader after each of its passes, so both say the same of the same
//! spool.
//!
//! # The two writers of a session's status
//!
//! - The session's `Reporter` (`session/reporter.rs`): server-side apply, field manager `sonde-agent`, forced.
//!   It owns all of `status` (phase, conditions, counts, heartbeat, summary, `results`, `upload`, windows,
//!   message, ...) and writes it while the session's task lives: on a refusal or an attach, every heartbeat
//!   (2 s), after each policy window, while publishing, and the final status (retried for 30 s). Never after.
//! - The uploader ([`write_upload`]): a JSON merge patch (an update, not an apply) naming the
//!   `resourceVersion` it read; a conflict (409) reads again, 3 tries. It writes `status.upload`, the
//!   `ResultsComplete` condition and, once a trace's final set is in, `status.results`: after a pass in which
//!   it tried, delivered or gave up a set of that session, and only when its view changed. It leaves a set
//!   alone for its first 20 s (`uploader::FRESH`) unless a restart cut it off, and does not tell a session that
//!   is gone.
//!
//! Their fields overlap (`upload`, `results`, the conditions list): what keeps them from undoing each other is
//! mostly timing, and the resourceVersion; the field managers only decide that the forced apply takes back any
//! field it sends, and that a field the uploader's patch changed is not removed by a later apply that omits it.
//! - A trace's set is sealed only when the trace ends (its chunks stream unsealed), so the uploader has nothing
//!   of a running trace to report (bar sets an earlier run of the same session left). The session then tries
//!   the store once and writes its final status; the uploader leaves the set alone for 20 s, which that
//!   normally takes, and the Reporter never applies again after it, so the uploader's later word stands. A
//!   slower try (a slow store) or an API server away for longer lets the two interleave: the later write wins.
//! - A policy's session runs on: each window recomputes `upload` with [`state_of`], and the heartbeat applies
//!   it again every 2 s, so an uploader's newer word between two windows (a late delivery) holds until the next
//!   heartbeat and is corrected with the next window; the uploader does not repeat it (it writes only when its
//!   own view changes). A window is never a final set: the uploader never writes a policy's `results`.
//! - A merge patch replaces the conditions list whole: the uploader sends the list as it read it, with
//!   `ResultsComplete` set, under that read's resourceVersion, so a condition the session wrote in between is
//!   never dropped (the patch conflicts and is made again from a fresh read).

use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use sonde_crds::conditions::{Conditions, types};
use sonde_crds::{ProbeSession, Upload, UploadState};

use super::spool::{Parcel, find};

/// How a session's sets stand, from the spool: what the uploader (and the session, at its end) reports.
pub fn state_of(spool: &Path, namespace: &str, session: &str, last_error: Option<&str>) -> Upload {
    state_in(&find(spool).0, namespace, session, last_error)
}

/// [`state_of`], from the sealed sets already found.
pub(super) fn state_in(
    sealed: &[(PathBuf, Parcel)],
    namespace: &str,
    session: &str,
    last_error: Option<&str>,
) -> Upload {
    let mine: Vec<&Parcel> = sealed
        .iter()
        .map(|(_, p)| p)
        .filter(|p| p.to.namespace == namespace && p.to.session == session)
        .collect();
    let oldest = mine
        .iter()
        .filter_map(|p| p.sealed.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .min();
    Upload {
        state: if mine.is_empty() {
            UploadState::Complete
        } else {
            UploadState::Pending
        },
        pending: mine.len() as u32,
        oldest_pending: oldest.map(Time),
        message: (!mine.is_empty()).then(|| last_error.unwrap_or("not uploaded yet").to_string()),
    }
}

/// Writes `upload` as the session's `status.upload` and `ResultsComplete` condition (with `urls` as its
/// `status.results`, when given): the uploader's write, beside the session's own (see the module docs). Whether
/// it was written; a session that no longer exists is not told.
pub(super) async fn write_upload(
    client: &Client,
    ns: &str,
    name: &str,
    upload: &Upload,
    urls: Option<&[String]>,
) -> bool {
    let api: Api<ProbeSession> = Api::namespaced(client.clone(), ns);
    // The session may write its own status between this read and the patch: the patch names the version it
    // read (a merge patch replaces the whole conditions list), and a conflict reads again.
    for _ in 0..3 {
        let Ok(Some(session)) = api.get_opt(name).await else {
            return false;
        };
        let mut st = session.status.unwrap_or_default();
        let (ok, reason, message) = upload.condition(false, true, "");
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        Conditions::new(&mut st.conditions, session.metadata.generation, now).set(
            types::RESULTS_COMPLETE,
            ok,
            reason,
            message,
        );
        let mut patch = serde_json::json!({
            "metadata": {"resourceVersion": session.metadata.resource_version},
            "status": {"upload": upload, "conditions": st.conditions},
        });
        if let Some(urls) = urls {
            patch["status"]["results"] = serde_json::json!(urls);
        }
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return true,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => {
                tracing::warn!(session = %name, error = %e, "reporting the upload state");
                return false;
            }
        }
    }
    tracing::warn!(session = %name, "reporting the upload state: the session kept changing under it");
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::spool::{seal, start};
    use crate::results::tests::to;

    #[test]
    fn a_sealed_set_is_found_and_counted_until_delivered() {
        let spool = tempfile::tempdir().unwrap();
        let dir = spool.path().join("ns/job-node/a");
        start(&dir, &to("tracejobs/ns/job-1/node")).unwrap();
        std::fs::write(dir.join("summary.json"), b"{}").unwrap();
        let p = seal(
            &dir,
            &to("tracejobs/ns/job-1/node"),
            &[dir.join("summary.json")],
            true,
            false,
        )
        .unwrap();
        assert_eq!(p.files, vec!["summary.json"]);
        let (sealed, cut) = find(spool.path());
        assert_eq!((sealed.len(), cut.len()), (1, 0));
        let u = state_of(spool.path(), "ns", "job-node", Some("store down"));
        assert_eq!((u.state, u.pending), (UploadState::Pending, 1));
        assert!(u.condition(false, false, "").2.contains("store down"));
        assert_eq!(
            state_of(spool.path(), "ns", "other", None).state,
            UploadState::Complete
        );
    }
}
