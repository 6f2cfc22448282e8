//! Results leave the node through the `object_store` crate: `file://` (the default, a directory on the node or a
//! shared volume) or `s3://bucket/prefix`, configured by the usual `AWS_*` environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...).
//! Files are written under `<url>/<resultPrefix>/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::error::{Error, Result};

/// Uploads `files` (below `dir`, whose relative paths they keep: `events/000001.ndjson.gz`) under `prefix` and
/// returns their URLs.
pub async fn upload(
    store_url: &str,
    prefix: &str,
    dir: &Path,
    files: &[PathBuf],
) -> Result<Vec<String>> {
    let err = |message: String| Error::Store {
        url: store_url.into(),
        message,
    };
    let url = Url::parse(store_url).map_err(|e| err(e.to_string()))?;
    if url.scheme() == "file" {
        // LocalFileSystem writes below an existing root only.
        std::fs::create_dir_all(url.path())?;
    }
    let aws_env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
    let (store, base) =
        object_store::parse_url_opts(&url, aws_env).map_err(|e| err(e.to_string()))?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    let mut urls = Vec::with_capacity(files.len());
    for file in files {
        let relative = file
            .strip_prefix(dir)
            .ok()
            .or_else(|| file.file_name().map(Path::new));
        let Some(name) = relative.and_then(|n| n.to_str()) else {
            continue;
        };
        let key = object_store::path::Path::from(
            format!("{}/{}/{}", base.as_ref(), prefix.trim_matches('/'), name)
                .trim_start_matches('/'),
        );
        // Streamed: one put for a small file, a multipart upload in 10 MiB parts past that, so the memory of
        // the upload path does not grow with the file (a trace may keep hundreds of MiB of events).
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
        done.map_err(|e| err(format!("{key}: {e}")))?;
        urls.push(format!(
            "{}/{}/{}",
            store_url.trim_end_matches('/'),
            prefix.trim_matches('/'),
            name
        ));
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
}
