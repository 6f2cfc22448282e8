//! Who may read what a route names, checked before its handler runs: [`Authorized`] takes the objects a route's
//! path names, reviews the request's token and asks whether its user may read them (`auth`), so that no handler
//! can forget to, and each gets what it was granted.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sonde_crds::results::OwnerKind;

use crate::Ctx;
use crate::auth::Access;
use crate::limit::Peer;
use crate::owner::Owner;

/// What a route's path names of one kind's objects, and the access reading it takes.
pub trait Target: DeserializeOwned + Send {
    fn access(&self, kind: OwnerKind) -> Access;
}

/// A namespace (`{namespace}`): listing its objects of a kind.
#[derive(Deserialize)]
pub struct NamespacePath {
    pub namespace: String,
}

impl Target for NamespacePath {
    fn access(&self, kind: OwnerKind) -> Access {
        Access::list(&self.namespace, kind.folder())
    }
}

/// One object (`{namespace}`, `{name}`): reading its results, whatever the route reads of them.
#[derive(Deserialize)]
pub struct ObjectPath {
    pub namespace: String,
    pub name: String,
}

impl Target for ObjectPath {
    fn access(&self, kind: OwnerKind) -> Access {
        Access::results(&self.namespace, kind.folder(), &self.name)
    }
}

/// A request whose token was accepted and whose user may read `target`, of kind `K`. Refused otherwise, as the
/// review answered (401, 403, 429), before the handler runs; a path that does not parse is refused first (400),
/// before the token costs a review.
pub struct Authorized<K, T> {
    pub target: T,
    /// What was granted: a request that outlives its review (a live tail) asks for it again.
    pub access: Access,
    kind: PhantomData<fn() -> K>,
}

impl<K: Owner, T: Target> FromRequestParts<Ctx> for Authorized<K, T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, Response> {
        let Path(target) = Path::<T>::from_request_parts(parts, ctx)
            .await
            .map_err(IntoResponse::into_response)?;
        let peer = Peer::from_request_parts(parts, ctx)
            .await
            .map_err(IntoResponse::into_response)?;
        let access = target.access(K::KIND);
        ctx.auth
            .check(&parts.headers, peer, access.clone())
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Authorized {
            target,
            access,
            kind: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures::future::BoxFuture;

    use super::*;
    use crate::auth::{Auth, Reviewer, User};
    use crate::error::Result;
    use crate::routes::Listener;
    use crate::routes::tests::{send, serve_on_loopback};

    /// Accepts every token, refuses every access, and keeps what it was asked.
    #[derive(Default)]
    struct Refusing(Mutex<Vec<Access>>);

    impl Reviewer for Arc<Refusing> {
        fn authenticate(&self, _: String) -> BoxFuture<'static, Result<Result<User, String>>> {
            Box::pin(async {
                Ok(Ok(User {
                    name: "reader".into(),
                    uid: "1".into(),
                    groups: vec![],
                    extra: Default::default(),
                }))
            })
        }

        fn authorize(
            &self,
            _: User,
            access: Access,
        ) -> BoxFuture<'static, Result<Result<(), String>>> {
            self.0.lock().unwrap().push(access);
            Box::pin(async { Ok(Err("not this".into())) })
        }
    }

    /// Every API route asks, before its handler runs, for what its path names of its kind: a list for a
    /// namespace, an object's results for anything below it (its events, its tail, a node's file, a window's).
    /// Refused, it answers 403; without a token, 401 with `WWW-Authenticate`, before any access is asked.
    #[tokio::test]
    async fn each_route_asks_for_what_its_path_names() {
        let reviewer = Arc::new(Refusing::default());
        let ctx = Arc::new(crate::Context {
            client: kube::Client::new(axum::Router::new(), "default"),
            auth: Auth::new(Arc::new(reviewer.clone()), Duration::from_secs(30)),
            stores: crate::store::Stores::parse("file:///nonexistent".into(), "", 1 << 20).unwrap(),
            intake: None,
            requests: crate::request_histogram(),
            stopping: tokio::sync::watch::channel(false).1,
        });
        let (addr, server) = serve_on_loopback(&ctx, Listener::Readers).await;
        let job = Access::results("a", "tracejobs", "j");
        let policy = Access::results("a", "probepolicies", "p");
        let routes = [
            ("tracejobs", Access::list("a", "tracejobs")),
            ("tracejobs/j", job.clone()),
            ("tracejobs/j/events", job.clone()),
            ("tracejobs/j/events/tail", job.clone()),
            ("tracejobs/j/nodes/n/summary.json", job),
            ("probepolicies", Access::list("a", "probepolicies")),
            ("probepolicies/p", policy.clone()),
            ("probepolicies/p/windows/w/events", policy.clone()),
            ("probepolicies/p/windows/w/nodes/n/summary.json", policy),
        ];
        // A token per route: the review cache would answer a second route of the same access itself.
        for (n, (route, access)) in routes.into_iter().enumerate() {
            let request = |auth: &str| {
                format!(
                    "GET /api/v1/namespaces/a/{route} HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n"
                )
            };
            let answer = send(addr, [127, 0, 0, 1], request("")).await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{route}: {answer}");
            assert!(
                answer.contains("\r\nwww-authenticate: Bearer realm=\"sonde\"\r\n"),
                "{route}: {answer}"
            );
            let answer = send(
                addr,
                [127, 0, 0, 1],
                request(&format!("authorization: Bearer t{n}\r\n")),
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 403"), "{route}: {answer}");
            assert_eq!(*reviewer.0.lock().unwrap(), [access], "{route}");
            reviewer.0.lock().unwrap().clear();
        }
        server.abort();
    }
}
