//! The kinds whose results the API serves, TraceJobs and ProbePolicies: what a list shows of each object, what
//! the object's own route shows, and where its results are. The routes are written once, for any [`Owner`] (as
//! the operator's controllers are for its `Owner`).

use std::fmt::Debug;
use std::future::Future;

use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use kube::api::Api;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sonde_crds::results::OwnerKind;
use sonde_crds::{ProbePolicy, TraceJob};

use crate::Context;
use crate::error::{Error, Result};
use crate::store::Folder;

/// A kind whose objects store results: a TraceJob or a ProbePolicy.
pub trait Owner:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Its kind in the results layout: the folder its results are under, and the resource access is asked for.
    const KIND: OwnerKind;
    /// What a list of its namespace's objects shows of one.
    type Row: Serialize;
    /// What its own route shows.
    type View: Serialize;

    fn row(self) -> Self::Row;
    /// The storage location its spec names (`spec.storage.location`); none for the default one.
    fn location(&self) -> Option<&str>;
    /// Its view, named as the route named it, with what `folder` (its results) holds.
    fn view(
        self,
        namespace: String,
        name: String,
        folder: &Folder,
    ) -> impl Future<Output = Result<Self::View>> + Send;
}

/// A job in a list.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRow {
    pub name: String,
    pub probe: String,
    pub phase: String,
    pub created: Option<String>,
    pub completion_time: Option<String>,
    /// Events captured over all nodes.
    pub captured: u64,
    pub breaches: u64,
    /// Where its results stand: Complete, Pending or Incomplete (absent until a node reports).
    pub upload: Option<String>,
}

/// One job: its status as the operator rolled it up over nodes, and the nodes that stored results.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub name: String,
    pub namespace: String,
    pub probe: String,
    /// The TraceJob's status: phase, conditions, counts, the merged summary, per-node results, upload state.
    #[schema(value_type = Object)]
    pub status: Value,
    /// Nodes with results in the object store.
    pub nodes: Vec<String>,
}

impl Owner for TraceJob {
    const KIND: OwnerKind = OwnerKind::TraceJob;
    type Row = JobRow;
    type View = JobView;

    fn row(self) -> JobRow {
        let st = self.status.unwrap_or_default();
        JobRow {
            name: self.metadata.name.unwrap_or_default(),
            probe: self.spec.probe.to_string(),
            phase: format!("{:?}", st.phase),
            created: self.metadata.creation_timestamp.map(|t| t.0.to_string()),
            completion_time: st.completion_time.map(|t| t.0.to_string()),
            captured: st.counts.captured,
            breaches: st.counts.breaches,
            upload: st.upload.map(|u| format!("{:?}", u.state)),
        }
    }

    fn location(&self) -> Option<&str> {
        self.spec.storage.as_ref()?.location.as_deref()
    }

    async fn view(self, namespace: String, name: String, folder: &Folder) -> Result<JobView> {
        Ok(JobView {
            name,
            namespace,
            probe: self.spec.probe.to_string(),
            status: status(self.status),
            nodes: folder.nodes().await?,
        })
    }
}

/// A ProbePolicy in a list.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRow {
    pub name: String,
    pub probe: String,
    /// Its window, e.g. `5m`.
    pub window: String,
    pub suspend: bool,
    pub breaches: u64,
    pub last_breach_time: Option<String>,
}

/// One window of a policy: its name (`window-<end time>`) and the nodes that stored results for it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Window {
    pub window: String,
    pub nodes: Vec<String>,
}

/// One ProbePolicy: its status and its stored windows, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub name: String,
    pub namespace: String,
    pub probe: String,
    #[schema(value_type = Object)]
    pub status: Value,
    pub windows: Vec<Window>,
}

impl Owner for ProbePolicy {
    const KIND: OwnerKind = OwnerKind::ProbePolicy;
    type Row = PolicyRow;
    type View = PolicyView;

    fn row(self) -> PolicyRow {
        let st = self.status.unwrap_or_default();
        PolicyRow {
            name: self.metadata.name.unwrap_or_default(),
            probe: self.spec.probe.to_string(),
            window: self.spec.window,
            suspend: self.spec.suspend,
            breaches: st.counts.breaches,
            last_breach_time: st.last_breach_time.map(|t| t.0.to_string()),
        }
    }

    fn location(&self) -> Option<&str> {
        self.spec.storage.as_ref()?.location.as_deref()
    }

    async fn view(self, namespace: String, name: String, folder: &Folder) -> Result<PolicyView> {
        let windows = folder.windows().await?;
        Ok(PolicyView {
            name,
            namespace,
            probe: self.spec.probe.to_string(),
            status: status(self.status),
            windows: windows
                .into_iter()
                .map(|(window, nodes)| Window { window, nodes })
                .collect(),
        })
    }
}

/// An object's status as a view shows it: as stored, the default one while it has none.
fn status<S: Serialize + Default>(status: Option<S>) -> Value {
    serde_json::to_value(status.unwrap_or_default()).unwrap_or_default()
}

/// The object `name` of kind `K` in namespace `ns`; not found (404) when there is none.
pub async fn fetch<K: Owner>(ctx: &Context, ns: &str, name: &str) -> Result<K> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    api.get_opt(name)
        .await
        .map_err(Error::Kube)?
        .ok_or_else(|| Error::NotFound(format!("no {} {name} in namespace {ns}", K::kind(&()))))
}

/// Where `object`'s results are: its folder in the location its spec names. Keyed by its uid, so an object
/// created again under the same name never reads an earlier one's results.
pub fn folder<K: Owner>(ctx: &Context, object: &K) -> Result<Folder> {
    let meta = object.meta();
    ctx.stores.folder(
        K::KIND,
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default(),
        object.location(),
    )
}
