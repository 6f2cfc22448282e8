use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

use crate::{ControlPlane, Identity};

/// A namespace of one test, deleted (without waiting) when the test ends, pass or fail.
pub struct TestNamespace {
    pub name: String,
    plane: &'static ControlPlane,
}

impl TestNamespace {
    pub async fn create(plane: &'static ControlPlane, prefix: &str) -> TestNamespace {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("e2e-{prefix}-{:x}{:x}", std::process::id() & 0xfff, nanos);
        let client = plane.client(Identity::Admin).await;
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"sonde.dev/e2e": "true"}}
        }))
        .unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        // Pods are refused until the controller manager has made the namespace's `default` service account,
        // which takes a moment on a control plane just started.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client, &name);
        let made = crate::wait_for(std::time::Duration::from_secs(30), || async {
            accounts.get_opt("default").await.is_ok_and(|a| a.is_some())
        })
        .await;
        assert!(
            made,
            "namespace {name} has no default service account after 30 s"
        );
        TestNamespace { name, plane }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Async drop does not exist; kubectl is synchronous and does not wait for finalizers.
        let _ = self.plane.kubectl(
            Identity::Admin,
            &[
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ],
        );
    }
}
