//! Who is asking, and may they: bearer tokens checked with a TokenReview for the server's own audience, access
//! with a SubjectAccessReview on the job's namespace and name, for a `results` subresource of `tracejobs` or
//! `probepolicies` (`get tracejobs/results`), so that ordinary Roles grant it. Reviews are cached briefly,
//! keyed by a hash of the token (never the token), successes longer than failures; concurrent identical
//! reviews wait for one call. A request whose token is not cached as accepted (it costs a review, or was
//! refused) is first let through by its client's limit (`limit`), so that nobody without a valid token can make
//! the server load the API server with reviews.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::limit::{self, Limiter, Peer};

/// The cookie the web page keeps a token in.
pub const TOKEN_COOKIE: &str = "sonde_token";
/// How long a refusal is kept (an allowance is kept for `Auth`'s `allowed_for`, 30 s by default, as the API
/// server's own webhook authorizer does; never shorter than this).
const REFUSED_FOR: Duration = Duration::from_secs(3);
/// At most this many answers are kept: past it, expired ones are swept (once a second at most), and while it is
/// still full a new answer is not kept. So a flood of random tokens costs one review each (what it would cost
/// anyway: no two are alike) but neither memory without bound nor a sweep of the whole cache on every request
/// under its lock, which once made every reader wait on an attacker.
const CACHE_ENTRIES: usize = 10_000;
/// How often a full cache is swept of expired answers at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// An authenticated user, as the TokenReview named them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request needs: `verb` on `resource[/subresource]` (group sonde.dev) in `namespace`, by `name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    pub namespace: String,
    pub verb: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub name: Option<String>,
}

impl Access {
    /// `get <resource>/results` of one object: reading its results.
    pub fn results(namespace: &str, resource: &'static str, name: &str) -> Access {
        Access {
            namespace: namespace.into(),
            verb: "get",
            resource,
            subresource: Some("results"),
            name: Some(name.into()),
        }
    }

    /// `list <resource>` in a namespace.
    pub fn list(namespace: &str, resource: &'static str) -> Access {
        Access {
            namespace: namespace.into(),
            verb: "list",
            resource,
            subresource: None,
            name: None,
        }
    }
}

/// The two reviews, as calls that may fail (the outer error: not cached) or answer (the verdict: cached).
pub trait Reviewer: Send + Sync {
    fn authenticate(&self, token: String) -> BoxFuture<'static, Result<Result<User, String>>>;
    fn authorize(
        &self,
        user: User,
        access: Access,
    ) -> BoxFuture<'static, Result<Result<(), String>>>;
}

/// Reviews by the Kubernetes API server.
pub struct KubeReviewer {
    pub client: Client,
    pub audience: String,
    /// API calls made, by kind (`TokenReview`, `SubjectAccessReview`).
    pub calls: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl Reviewer for KubeReviewer {
    fn authenticate(&self, token: String) -> BoxFuture<'static, Result<Result<User, String>>> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let audience = self.audience.clone();
        self.calls
            .get_or_create(&vec![("kind", "TokenReview")])
            .inc();
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token,
                    audiences: Some(vec![audience.clone()]),
                },
                ..Default::default()
            };
            let st = submit(&api, &review).await?.status.unwrap_or_default();
            let for_us = st.audiences.as_ref().is_none_or(|a| a.contains(&audience));
            match (st.authenticated, st.user) {
                (Some(true), Some(u)) if for_us => Ok(Ok(User {
                    name: u.username.unwrap_or_default(),
                    uid: u.uid.unwrap_or_default(),
                    groups: u.groups.unwrap_or_default(),
                    extra: u.extra.unwrap_or_default(),
                })),
                (Some(true), _) => Ok(Err(format!("the token is not for audience {audience}"))),
                _ => Ok(Err(st.error.unwrap_or_else(|| {
                    format!("not a valid token for audience {audience} (`kubectl create token <account> --audience {audience}`)")
                }))),
            }
        })
    }

    fn authorize(
        &self,
        user: User,
        access: Access,
    ) -> BoxFuture<'static, Result<Result<(), String>>> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        self.calls
            .get_or_create(&vec![("kind", "SubjectAccessReview")])
            .inc();
        Box::pin(async move {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.name.clone()),
                    uid: Some(user.uid.clone()),
                    groups: Some(user.groups.clone()),
                    extra: Some(user.extra.clone()),
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(access.namespace.clone()),
                        verb: Some(access.verb.into()),
                        group: Some("sonde.dev".into()),
                        resource: Some(access.resource.into()),
                        subresource: access.subresource.map(String::from),
                        name: access.name.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let st = submit(&api, &review).await?.status.unwrap_or_default();
            if st.allowed {
                return Ok(Ok(()));
            }
            let what = match (access.subresource, &access.name) {
                (Some(sub), Some(name)) => {
                    format!("{} {}/{sub} {name:?}", access.verb, access.resource)
                }
                _ => format!("{} {}", access.verb, access.resource),
            };
            Ok(Err(format!(
                "{} may not {what} in namespace {} (sonde.dev; the chart's aggregated view role grants it)",
                user.name, access.namespace
            )))
        })
    }
}

/// An answer and until when it holds; empty while its review is under way.
type Slot<V> = Arc<tokio::sync::OnceCell<(Instant, V)>>;

/// Creates a review object; the API server answers in its status.
async fn submit<K>(api: &Api<K>, review: &K) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), review)
        .await
        .map_err(Error::Kube)
}

/// Answers kept until they expire; a key being reviewed is reviewed once, whoever else asks meanwhile.
struct Cache<K, V> {
    slots: Mutex<Slots<K, V>>,
    capacity: usize,
}

struct Slots<K, V> {
    map: HashMap<K, Slot<V>>,
    swept: Instant,
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Self::with_capacity(CACHE_ENTRIES)
    }

    fn with_capacity(capacity: usize) -> Self {
        Cache {
            slots: Mutex::new(Slots {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
            capacity,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    /// The answer for `key` at `now`: cached, or from `review` (called only when there is none and none under
    /// way). `admit` is asked first, under the cache's lock, with whether a review is to start and the answer
    /// kept for the key (fresh, or the expired one a review will replace); joining a review under way costs
    /// nothing and is not asked. Its error is the request's, and no review is made.
    async fn get<F: Future<Output = Result<V>>>(
        &self,
        key: K,
        now: Instant,
        ttl: impl FnOnce(&V) -> Duration,
        admit: impl FnOnce(bool, Option<&V>) -> Result<()>,
        review: impl FnOnce() -> F,
    ) -> Result<V> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = |s: &Slot<V>| s.get().is_none_or(|(until, _)| *until > now);
            match slots.map.get(&key) {
                Some(s) if fresh(s) => {
                    if let Some((_, v)) = s.get() {
                        admit(false, Some(v))?;
                    }
                    s.clone()
                }
                kept => {
                    admit(true, kept.and_then(|s| s.get()).map(|(_, v)| v))?;
                    if slots.map.len() >= self.capacity && now >= slots.swept + SWEEP_EVERY {
                        slots.map.retain(|_, s| fresh(s));
                        slots.swept = now;
                    }
                    let s = Arc::new(tokio::sync::OnceCell::new());
                    // Full of answers that still hold: this one is not kept (an expired entry of its key is
                    // replaced in place).
                    if slots.map.len() < self.capacity || slots.map.contains_key(&key) {
                        slots.map.insert(key, s.clone());
                    }
                    s
                }
            }
        };
        let (_, v) = slot
            .get_or_try_init(|| async {
                // Kept for `ttl` from the answer, on the clock of `now`.
                let started = Instant::now();
                let v = review().await?;
                Ok::<_, Error>((now + started.elapsed() + ttl(&v), v))
            })
            .await?;
        Ok(v.clone())
    }
}

pub struct Auth {
    reviewer: Arc<dyn Reviewer>,
    allowed_for: Duration,
    users: Cache<[u8; 32], Result<User, String>>,
    grants: Cache<([u8; 32], Access), Result<(), String>>,
    /// What each client may make the server review (TokenReviews of tokens not cached as accepted).
    limiter: Limiter,
}

impl Auth {
    /// Allowances are kept for `allowed_for` (it bounds how late a revoked grant takes effect, live tails
    /// included); refusals for 3 s at most.
    pub fn new(reviewer: Arc<dyn Reviewer>, allowed_for: Duration) -> Auth {
        Auth {
            reviewer,
            allowed_for,
            users: Cache::new(),
            grants: Cache::new(),
            limiter: Limiter::new(limit::BURST, limit::PER_SECOND, limit::CLIENTS),
        }
    }

    /// Requests refused by the limit, for `sonde_results_rate_limited_total`.
    pub fn rate_limited(&self) -> Counter {
        self.limiter.refused.clone()
    }

    fn ttl<T>(&self, verdict: &Result<T, String>) -> Duration {
        match verdict {
            Ok(_) => self.allowed_for,
            Err(_) => REFUSED_FOR.min(self.allowed_for),
        }
    }

    /// The caller, if their token is good and grants `access`; a token not cached as accepted only within the
    /// limit of `peer`, the request's client.
    pub async fn check(&self, headers: &HeaderMap, peer: Peer, access: Access) -> Result<User> {
        self.check_at(headers, Some(peer), access, Instant::now())
            .await
    }

    /// [`Auth::check`] for a request that passed it before with the same headers: a live tail's, on its clock.
    /// Not limited: its token was accepted when it started (and counted then), so this costs a review per
    /// `allowed_for` at most; and a tail is not ended because others behind the same address (a NAT, a proxy)
    /// flood the server.
    pub async fn check_again(&self, headers: &HeaderMap, access: Access) -> Result<User> {
        self.check_at(headers, None, access, Instant::now()).await
    }

    async fn check_at(
        &self,
        headers: &HeaderMap,
        peer: Option<Peer>,
        access: Access,
        now: Instant,
    ) -> Result<User> {
        let token = token(headers).ok_or(Error::NoToken)?;
        let (key, user) = self.user(token, peer, now).await?;
        self.grants
            .get(
                (key, access.clone()),
                now,
                |v| self.ttl(v),
                // A new review of a grant costs the client (each namespace and job in a URL is one); an answer
                // kept, or the renewal of an allowance that expired, does not.
                |review, kept| match (review, kept, peer) {
                    (false, _, _) | (_, Some(Ok(())), _) | (_, _, None) => Ok(()),
                    (true, _, Some(peer)) => self.limiter.take(peer, now),
                },
                || self.reviewer.authorize(user.clone(), access),
            )
            .await?
            .map_err(Error::Forbidden)?;
        Ok(user)
    }

    /// Who `token` belongs to, if the API server accepts it for this audience (the web page's login, an agent's
    /// upload); within `peer`'s limit unless cached as accepted.
    pub async fn authenticate(&self, token: &str, peer: Peer) -> Result<User> {
        Ok(self.user(token, Some(peer), Instant::now()).await?.1)
    }

    /// The token's cache key and its user. Unless its answer is cached as accepted, or its review is under way,
    /// `peer` (if any) takes one from its limit first, or the request is refused without a review.
    async fn user(
        &self,
        token: &str,
        peer: Option<Peer>,
        now: Instant,
    ) -> Result<([u8; 32], User)> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // A token accepted before, fresh or expired, costs nothing (an agent's or reader's token renewed every
        // `allowed_for` must not wait behind a flood from its address); an unknown or refused one does.
        let admit = |_review: bool, kept: Option<&Result<User, String>>| match (kept, peer) {
            (Some(Ok(_)), _) | (_, None) => Ok(()),
            (_, Some(peer)) => self.limiter.take(peer, now),
        };
        let user = self
            .users
            .get(
                key,
                now,
                |v| self.ttl(v),
                admit,
                || self.reviewer.authenticate(token.to_string()),
            )
            .await?
            .map_err(Error::BadToken)?;
        Ok((key, user))
    }
}

/// The bearer token of a request: `Authorization: Bearer`, else the web page's cookie.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim()).filter(|t| !t.is_empty());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == TOKEN_COOKIE)
        .map(|(_, v)| v)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Users by token: `good-a` may read namespace a, `good-b` namespace b.
    #[derive(Default)]
    pub(crate) struct Fake {
        /// TokenReviews made.
        pub(crate) authn: AtomicU32,
        authz: AtomicU32,
        /// Every grant withdrawn (a RoleBinding deleted).
        revoked: std::sync::atomic::AtomicBool,
    }

    impl Reviewer for Arc<Fake> {
        fn authenticate(&self, token: String) -> BoxFuture<'static, Result<Result<User, String>>> {
            self.authn.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(match token.strip_prefix("good-") {
                    Some(ns) => Ok(User {
                        name: format!("user-{ns}"),
                        uid: ns.into(),
                        groups: vec![],
                        extra: BTreeMap::new(),
                    }),
                    None => Err("unknown token".into()),
                })
            })
        }

        fn authorize(
            &self,
            user: User,
            access: Access,
        ) -> BoxFuture<'static, Result<Result<(), String>>> {
            self.authz.fetch_add(1, Ordering::SeqCst);
            let revoked = self.revoked.load(Ordering::SeqCst);
            Box::pin(async move {
                Ok(match !revoked && user.uid == access.namespace {
                    true => Ok(()),
                    false => Err(format!("{} may not read {}", user.name, access.namespace)),
                })
            })
        }
    }

    /// Client 10.0.0.`n`.
    pub(crate) fn peer(n: u8) -> Peer {
        Peer::of(std::net::Ipv4Addr::new(10, 0, 0, n).into())
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn tokens_and_grants_are_reviewed_once_and_refusals_say_why() {
        let fake = Arc::new(Fake::default());
        let auth = Arc::new(Auth::new(Arc::new(fake.clone()), Duration::from_secs(30)));
        let read_a = Access::results("a", "tracejobs", "job");
        // Ten identical requests at once: one TokenReview, one SubjectAccessReview.
        let calls = (0..10).map(|_| {
            let auth = auth.clone();
            let access = read_a.clone();
            async move { auth.check(&bearer("good-a"), peer(1), access).await }
        });
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap().name, "user-a");
        }
        assert_eq!(fake.authn.load(Ordering::SeqCst), 1);
        assert_eq!(fake.authz.load(Ordering::SeqCst), 1);
        let other = auth
            .check(&bearer("good-b"), peer(1), read_a.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(other, Error::Forbidden(ref m) if m.contains("user-b")),
            "{other}"
        );
        let bad = auth
            .check(&bearer("forged"), peer(1), read_a.clone())
            .await
            .unwrap_err();
        assert!(matches!(bad, Error::BadToken(_)), "{bad}");
        let none = auth
            .check(&HeaderMap::new(), peer(1), read_a)
            .await
            .unwrap_err();
        assert!(matches!(none, Error::NoToken), "{none}");
    }

    #[tokio::test]
    async fn a_withdrawn_grant_is_refused_once_its_allowance_expires() {
        let fake = Arc::new(Fake::default());
        let auth = Auth::new(Arc::new(fake.clone()), Duration::from_millis(200));
        let read_a = Access::results("a", "tracejobs", "job");
        auth.check(&bearer("good-a"), peer(1), read_a.clone())
            .await
            .unwrap();
        fake.revoked.store(true, Ordering::SeqCst);
        // Still allowed from the cache, then asked again and refused.
        auth.check(&bearer("good-a"), peer(1), read_a.clone())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let gone = auth
            .check(&bearer("good-a"), peer(1), read_a)
            .await
            .unwrap_err();
        assert!(matches!(gone, Error::Forbidden(_)), "{gone}");
        assert_eq!(fake.authz.load(Ordering::SeqCst), 2);
    }

    /// Random tokens past the cache's capacity: the cache stays at its capacity (answers past it are not kept),
    /// a good token is still answered, and expired refusals are swept once a second at most, not per request.
    #[tokio::test]
    async fn a_flood_of_random_tokens_keeps_the_cache_bounded() {
        let review = |v: Result<(), String>| async move { Ok(v) };
        let cache: Cache<u32, Result<(), String>> = Cache::with_capacity(100);
        let short = |_: &Result<(), String>| Duration::from_millis(50);
        for key in 0..1_000 {
            cache
                .get(
                    key,
                    Instant::now(),
                    short,
                    |_, _| Ok(()),
                    || review(Err("bad".into())),
                )
                .await
                .unwrap()
                .unwrap_err();
            assert!(cache.len() <= 100, "{} entries after {key}", cache.len());
        }
        assert_eq!(cache.len(), 100);
        // Answers past the capacity are still given, only not kept.
        cache
            .get(
                5_000,
                Instant::now(),
                short,
                |_, _| Ok(()),
                || review(Ok(())),
            )
            .await
            .unwrap()
            .unwrap();
        // Once the kept ones expire, the next request past the capacity sweeps them (after SWEEP_EVERY).
        tokio::time::sleep(SWEEP_EVERY).await;
        cache
            .get(
                6_000,
                Instant::now(),
                short,
                |_, _| Ok(()),
                || review(Ok(())),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cache.len(), 1, "expired answers were not swept");
    }

    fn reviews(fake: &Fake) -> u32 {
        fake.authn.load(Ordering::SeqCst)
    }

    /// A client sending tokens nobody has seen is reviewed up to its burst, then refused (429, how long to wait)
    /// without a review, whatever the token; another client is reviewed as before; one second later the first
    /// may have PER_SECOND more reviewed.
    #[tokio::test]
    async fn a_client_past_its_burst_is_refused_without_a_review() {
        let fake = Arc::new(Fake::default());
        let auth = Auth::new(Arc::new(fake.clone()), Duration::from_secs(30));
        let read_a = Access::results("a", "tracejobs", "job");
        let t0 = Instant::now();
        let check = async |token: &str, client: u8, now: Instant| {
            auth.check_at(&bearer(token), Some(peer(client)), read_a.clone(), now)
                .await
        };
        for i in 0..limit::BURST {
            let e = check(&format!("random-{i}"), 1, t0).await.unwrap_err();
            assert!(matches!(e, Error::BadToken(_)), "{i}: {e}");
        }
        assert_eq!(reviews(&fake), limit::BURST);
        // A refused token again (its refusal cached), a new one, a good one not yet reviewed: all refused.
        for token in ["random-0", "random-new", "good-a"] {
            let e = check(token, 1, t0).await.unwrap_err();
            assert!(
                matches!(e, Error::TooManyReviews { retry_after: 1, .. }),
                "{token}: {e}"
            );
            assert!(
                e.to_string()
                    .starts_with("too many requests with tokens not yet reviewed from 10.0.0.1: "),
                "{e}"
            );
        }
        assert_eq!(reviews(&fake), limit::BURST, "reviewed over the limit");
        // Another client is unaffected; once its token is accepted, the first client's requests with it pass.
        check("random-other", 2, t0).await.unwrap_err();
        check("good-a", 2, t0).await.unwrap();
        check("good-a", 1, t0).await.unwrap();
        assert_eq!(reviews(&fake), limit::BURST + 2);
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..limit::PER_SECOND {
            let e = check(&format!("late-{i}"), 1, t1).await.unwrap_err();
            assert!(matches!(e, Error::BadToken(_)), "{i}: {e}");
        }
        let e = check("late-last", 1, t1).await.unwrap_err();
        assert!(matches!(e, Error::TooManyReviews { .. }), "{e}");
        assert_eq!(reviews(&fake), limit::BURST + 2 + limit::PER_SECOND);
        assert_eq!(auth.rate_limited().get(), 4);
    }

    /// A reader whose client also floods (or shares its address with one that does): requests with its accepted
    /// token are never refused nor reviewed again while the answer is cached, and its live tail's re-checks are
    /// never limited, even when a review is due and a new request would be refused.
    #[tokio::test]
    async fn a_token_already_accepted_is_never_limited() {
        let fake = Arc::new(Fake::default());
        let auth = Auth::new(Arc::new(fake.clone()), Duration::from_secs(30));
        let read_a = Access::results("a", "tracejobs", "job");
        let t0 = Instant::now();
        let flood = async |now: Instant| {
            for i in 0..=limit::BURST {
                let token = format!("random-{now:?}-{i}");
                if let Err(Error::TooManyReviews { .. }) = auth
                    .check_at(&bearer(&token), Some(peer(1)), read_a.clone(), now)
                    .await
                {
                    return;
                }
            }
            panic!("never refused");
        };
        auth.check_at(&bearer("good-a"), Some(peer(1)), read_a.clone(), t0)
            .await
            .unwrap();
        flood(t0).await;
        let reviewed = reviews(&fake);
        // A poll every 10 ms for 29 s.
        for ms in 0..2_900 {
            let now = t0 + Duration::from_millis(ms * 10);
            auth.check_at(&bearer("good-a"), Some(peer(1)), read_a.clone(), now)
                .await
                .unwrap_or_else(|e| panic!("{ms}: {e}"));
        }
        assert_eq!(reviews(&fake), reviewed);
        // Past the allowance the token and its grant are reviewed again, at no cost to the client's limit: the
        // flooding client's own request with it goes through (an agent or a reader behind a flooding neighbour's
        // address is not starved when its allowance renews), a live tail's re-check too.
        let t1 = t0 + Duration::from_secs(31);
        flood(t1).await;
        let (reviewed, authorized) = (reviews(&fake), fake.authz.load(Ordering::SeqCst));
        auth.check_at(&bearer("good-a"), Some(peer(1)), read_a.clone(), t1)
            .await
            .unwrap();
        assert_eq!(reviews(&fake), reviewed + 1, "the token renewed");
        assert_eq!(
            fake.authz.load(Ordering::SeqCst),
            authorized + 1,
            "its grant renewed"
        );
        auth.check_at(&bearer("good-a"), None, read_a.clone(), t1)
            .await
            .unwrap();
        // A grant not reviewed before costs the client like an unknown token: one URL per namespace and job
        // cannot make the server review without limit.
        let e = auth
            .check_at(
                &bearer("good-a"),
                Some(peer(1)),
                Access::results("a", "tracejobs", "other"),
                t1,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::TooManyReviews { .. }), "{e}");
        assert_eq!(
            fake.authz.load(Ordering::SeqCst),
            authorized + 1,
            "no review for a refused request"
        );
    }

    /// An agent's uploads (the intake authenticates each with `authenticate`): one a second for an hour, its
    /// projected token rotated every 10 minutes, and a restart halfway that sends 100 spooled files at once with
    /// a new token. Each token is reviewed once per allowance (concurrent requests wait for one review and take
    /// nothing from the limit): never refused.
    #[tokio::test]
    async fn an_agents_uploads_are_never_limited() {
        let fake = Arc::new(Fake::default());
        let auth = Auth::new(Arc::new(fake.clone()), Duration::from_secs(30));
        let agent = peer(7);
        let t0 = Instant::now();
        for s in 0..3_600u64 {
            let now = t0 + Duration::from_secs(s);
            let restarted = if s >= 1_800 { "restarted" } else { "" };
            let token = format!("good-agent-{}{restarted}", s / 600);
            let at_once = if s == 1_800 { 100 } else { 1 };
            let uploads = (0..at_once).map(|_| auth.user(&token, Some(agent), now));
            for r in futures::future::join_all(uploads).await {
                r.unwrap_or_else(|e| panic!("at {s} s: {e}"));
            }
        }
        assert_eq!(auth.rate_limited().get(), 0);
        // One review per token per 30 s (120 an hour), and one per new token.
        assert!(reviews(&fake) <= 128, "{} reviews", reviews(&fake));
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_cookie() {
        assert_eq!(token(&bearer("t1")), Some("t1"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=b; sonde_token=t2".parse().unwrap());
        assert_eq!(token(&h), Some("t2"));
        assert_eq!(token(&HeaderMap::new()), None);
    }
}
