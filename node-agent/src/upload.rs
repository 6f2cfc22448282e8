//! Results leave the node through the `object_store` crate: `file://` (the default, a directory on the node or a
//! shared volume) or `s3://bucket/prefix`, configured by the usual `AWS_*` environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...).
//! Files are written under `<url>/<resultPrefix>/`.

use std::path::PathBuf;

use object_store::{ObjectStoreExt, PutPayload};
use url::Url;

use crate::error::{Error, Result};

/// Uploads `files` and returns their URLs.
pub async fn upload(store_url: &str, prefix: &str, files: &[PathBuf]) -> Result<Vec<String>> {
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
    let mut urls = Vec::with_capacity(files.len());
    for file in files {
        let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let key = object_store::path::Path::from(
            format!("{}/{}/{}", base.as_ref(), prefix.trim_matches('/'), name)
                .trim_start_matches('/'),
        );
        let bytes = tokio::fs::read(file).await?;
        store
            .put(&key, PutPayload::from(bytes))
            .await
            .map_err(|e| err(format!("{key}: {e}")))?;
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
    #[tokio::test]
    async fn uploads_to_a_local_directory() {
        let spool = tempfile::tempdir().unwrap();
        let f = spool.path().join("summary.json");
        std::fs::write(&f, b"{}").unwrap();
        let dest = tempfile::tempdir().unwrap();
        let url = format!("file://{}/results", dest.path().display());
        let urls = super::upload(&url, "tracejobs/ns/job/node-a", &[f])
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
        let bad = super::upload("nope://x", "p", &[]).await.unwrap_err();
        assert!(bad.to_string().contains("nope://x"), "{bad}");
    }
}
