//! The REST API (`/api/v1`), its OpenAPI document (`/openapi.json`), the web page (`web`) and the request
//! metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sonde_crds::{ProbePolicy, TraceJob};
use utoipa::OpenApi;

use crate::authorized::{Authorized, NamespacePath, ObjectPath};
use crate::error::{Error, Problem, Result};
use crate::events::{self, Cursor, Filter};
use crate::owner::{self, JobRow, JobView, Owner, PolicyRow, PolicyView, Window};
use crate::store::Folder;
use crate::{Context, Ctx};

/// Events per page unless the request says; and at most.
const DEFAULT_LIMIT: usize = 500;
const MAX_LIMIT: usize = 5000;
/// How often a live tail looks for new chunks.
const TAIL_EVERY: Duration = Duration::from_millis(500);
/// How often a tail asks whether its job still exists (one GET of the TraceJob per tail).
const JOB_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Files of a node's results that can be fetched, and their media types.
const FILES: [(&str, &str); 5] = sonde_crds::results::RUN_FILES;

/// Which listener a router serves: the readers' (the API, its OpenAPI document, the web page) or the agents'
/// uploads. Each has a port of its own, so the chart's NetworkPolicy can let only the agent pods reach the intake
/// while readers reach the API from anywhere; an upload sent to the readers' port is not found (404).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Readers,
    Intake,
}

/// The router as served: with each connection's TCP peer (`ConnectInfo<SocketAddr>`), which `limit::Peer`
/// limits requests by. That peer is the client: the chart exposes the server through its own Service, with no
/// proxy in front that could be trusted to say who the client is, so `X-Forwarded-For` is never read.
pub fn app(ctx: Ctx, which: Listener) -> IntoMakeServiceWithConnectInfo<axum::Router, SocketAddr> {
    router(ctx, which).into_make_service_with_connect_info::<SocketAddr>()
}

/// [`app`] for connections the server took over HTTPS (`tls::TlsListener`): requests carry `web::OverTls`.
pub fn app_over_tls(
    ctx: Ctx,
    which: Listener,
) -> IntoMakeServiceWithConnectInfo<axum::Router, SocketAddr> {
    router(ctx, which)
        .layer(axum::Extension(crate::web::OverTls))
        .into_make_service_with_connect_info::<SocketAddr>()
}

/// Serves `which` app on `listener` until `shutdown` (then lets requests under way finish): over HTTPS with
/// `tls` (each connection's peer given as for HTTP), else plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    ctx: Ctx,
    which: Listener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    match tls {
        None => {
            let listener = listener.tap_io(|tcp| hold_little_unsent(tcp));
            axum::serve(listener, app(ctx, which))
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            // Through `tap_io`, axum gives a listener's own address (the TCP peer) as `ConnectInfo`.
            let listener = crate::tls::TlsListener::new(listener, config)?.tap_io(|_| {});
            axum::serve(listener, app_over_tls(ctx, which))
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// What a connection may hold of a response not yet sent, in bytes (`TCP_NOTSENT_LOWAT`).
pub const UNSENT_AT_MOST: u32 = 16 << 10;

/// Keeps the kernel from holding more than [`UNSENT_AT_MOST`] of a response this server has not sent yet. Linux
/// grows a connection's send buffer to megabytes when its reader is slow (the window, not the congestion, limits
/// it): a live tail would then pour that much into the buffer ahead of its reader, who would go on reading it
/// long after the server has refused to send more (a revoked RoleBinding, an ended tail). With the limit the
/// server writes as the reader reads; a fast reader still has a full window in flight. Best effort: a socket
/// that refuses the option is served as it is.
pub(crate) fn hold_little_unsent(tcp: &tokio::net::TcpStream) {
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(UNSENT_AT_MOST) {
        tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT");
    }
}

/// The routes of `which` listener. Served through [`app`]: without the peer address every route that
/// authenticates answers 500 (`Error::NoPeer`), except in this crate's tests.
pub fn router(ctx: Ctx, which: Listener) -> axum::Router {
    let routes = match which {
        Listener::Readers => readers(),
        Listener::Intake => axum::Router::new().route(
            "/agent/v1/objects/{*key}",
            axum::routing::put(crate::intake::put_object),
        ),
    };
    routes
        .fallback(move || async move {
            Error::NotFound(match which {
                Listener::Readers => "no such route (see /openapi.json)".into(),
                Listener::Intake => {
                    "no such route: this port takes the agents' uploads only".into()
                }
            })
        })
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), track))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(axum::extract::DefaultBodyLimit::max(16 << 10))
        .with_state(ctx)
}

/// The readers' routes: the REST API, its OpenAPI document and the web page.
fn readers() -> axum::Router<Ctx> {
    axum::Router::new()
        .route(
            "/api/v1/namespaces/{namespace}/tracejobs",
            get(list_objects::<TraceJob>),
        )
        .route(
            "/api/v1/namespaces/{namespace}/tracejobs/{name}",
            get(get_object::<TraceJob>),
        )
        .route(
            "/api/v1/namespaces/{namespace}/tracejobs/{name}/events",
            get(events_page::<TraceJob>),
        )
        .route(
            "/api/v1/namespaces/{namespace}/tracejobs/{name}/events/tail",
            get(tail),
        )
        .route(
            "/api/v1/namespaces/{namespace}/tracejobs/{name}/nodes/{node}/{file}",
            get(node_file::<TraceJob>),
        )
        .route(
            "/api/v1/namespaces/{namespace}/probepolicies",
            get(list_objects::<ProbePolicy>),
        )
        .route(
            "/api/v1/namespaces/{namespace}/probepolicies/{name}",
            get(get_object::<ProbePolicy>),
        )
        .route(
            "/api/v1/namespaces/{namespace}/probepolicies/{name}/windows/{window}/events",
            get(events_page::<ProbePolicy>),
        )
        .route(
            "/api/v1/namespaces/{namespace}/probepolicies/{name}/windows/{window}/nodes/{node}/{file}",
            get(node_file::<ProbePolicy>),
        )
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .merge(crate::web::router())
}

async fn track(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let res = next.run(req).await;
    ctx.requests
        .get_or_create(&vec![
            ("route", route),
            ("method", method),
            ("status", res.status().as_u16().to_string()),
        ])
        .observe(started.elapsed().as_secs_f64());
    res
}

/// A page of events.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    /// Events as the probe wrote them, each with the `node` that stored it.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    /// Pass as `cursor` for the next page; also valid for `events/tail`.
    pub next: String,
    /// Nothing more is stored now (a running job may store more: ask again with `next`).
    pub caught_up: bool,
    /// Every node's events are complete and read: there will be no more.
    pub complete: bool,
}

/// A TraceJob, in its namespace.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(
    dead_code,
    reason = "documents the path; handlers take it as `authorized::ObjectPath`"
)]
struct JobPath {
    /// Kubernetes namespace
    namespace: String,
    /// TraceJob name
    name: String,
}

/// Which events, from where.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(
    dead_code,
    reason = "documents the query; handlers parse it with repeated `filter`s"
)]
struct EventsQuery {
    /// Events per page, 1 to 5000 (default 500); ignored by the tail
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<usize>,
    /// `next` of the previous page, or an event's `id` from the tail
    cursor: Option<String>,
    /// `field<op>value`, op one of `==` `!=` `>=` `<=` `>` `<` `~` (contains); repeatable
    filter: Option<Vec<String>>,
    /// Only events this node stored
    node: Option<String>,
    /// Only events with a `comm` or `*_comm` field equal to this
    comm: Option<String>,
}

/// Why a request was refused.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "documents responses; errors are `Error`s")]
enum Refused {
    /// No token, or one the API server did not accept for this audience
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// Not allowed (also for jobs of namespaces the caller may not read, whether or not they exist)
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such job, node or file
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// Too many requests from this client with tokens not yet reviewed (each costs the API server a
    /// TokenReview); requests with a token already accepted are not limited
    #[response(
        status = 429,
        content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "seconds to wait"))
    )]
    TooManyReviews(Problem),
}

/// A request that makes no sense (a bad filter, cursor or limit).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "documents responses; errors are `Error`s")]
enum BadRequest {
    #[response(status = 400, content_type = "application/problem+json")]
    Bad(Problem),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sonde results",
        description = "TraceJob results: status, summaries, events (paged or live), histograms and flame graphs. \
                       Authenticate with `Authorization: Bearer <token>` (`kubectl create token <account> \
                       --audience sonde-results`); access is `get tracejobs/results` in the job's namespace."
    ),
    components(schemas(JobRow, JobView, EventsPage, PolicyRow, PolicyView, Window, Problem)),
    modifiers(&Routes, &Bearer)
)]
pub struct ApiDoc;

/// The paths of the document, one per route. A handler generic over the owner kind serves a route of each kind,
/// so a route's document cannot be its handler's own (as `paths(..)` of the derive would take it): each is a
/// type of its own, below, the `impl_for` of a `#[utoipa::path]` on the handler serving the route.
struct Routes;

struct ListJobs;
struct ListPolicies;
struct GetJob;
struct GetPolicy;
struct JobEvents;
struct WindowEvents;
struct Tail;
struct JobFile;
struct WindowFile;

impl utoipa::Modify for Routes {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        api.paths = utoipa::openapi::path::PathsBuilder::new()
            .path_from::<ListJobs>()
            .path_from::<GetJob>()
            .path_from::<JobEvents>()
            .path_from::<Tail>()
            .path_from::<JobFile>()
            .path_from::<ListPolicies>()
            .path_from::<GetPolicy>()
            .path_from::<WindowEvents>()
            .path_from::<WindowFile>()
            .build();
    }
}

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        api.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// Which run of an object's results a route reads: a policy's window (`{window}`), or, in a job's routes, which
/// name none, the job's own.
#[derive(Deserialize)]
struct RunPath {
    window: Option<String>,
}

/// The folder of `run` of the object of kind `K` at `object`. The window is checked first: a name that is not
/// one is refused without asking the API server for the object.
async fn run_folder<K: Owner>(ctx: &Context, object: &ObjectPath, run: RunPath) -> Result<Folder> {
    let window = run.window.as_deref().map(window_name).transpose()?;
    let found: K = owner::fetch(ctx, &object.namespace, &object.name).await?;
    let folder = owner::folder(ctx, &found)?;
    Ok(match window {
        Some(w) => folder.window(w),
        None => folder,
    })
}

/// A window name as the agents write them, and nothing that could leave the policy's folder.
fn window_name(window: &str) -> Result<&str> {
    let plain = matches!(
        sonde_crds::results::Below::parse(window),
        Some(sonde_crds::results::Below::Window(_))
    );
    match plain {
        true => Ok(window),
        false => Err(Error::NotFound(format!(
            "{window:?} is not a window (window-<end time>, as the policy lists them)"
        ))),
    }
}

/// The objects of kind `K` in a namespace, a row each.
#[utoipa::path(
    get,
    path = "/api/v1/namespaces/{namespace}/tracejobs",
    impl_for = ListJobs,
    operation_id = "list_jobs",
    summary = "The TraceJobs of a namespace.",
    params(("namespace" = String, Path, description = "Kubernetes namespace")),
    responses(
        (status = 200, body = [JobRow]),
        Refused,
    )
)]
#[utoipa::path(
    get,
    path = "/api/v1/namespaces/{namespace}/probepolicies",
    impl_for = ListPolicies,
    operation_id = "list_policies",
    summary = "The ProbePolicies of a namespace.",
    params(("namespace" = String, Path, description = "Kubernetes namespace")),
    responses((status = 200, body = [PolicyRow]), Refused)
)]
async fn list_objects<K: Owner>(
    State(ctx): State<Ctx>,
    Authorized { target, .. }: Authorized<K, NamespacePath>,
) -> Result<Json<Vec<K::Row>>> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &target.namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?;
    Ok(Json(list.items.into_iter().map(K::row).collect()))
}

/// One object of kind `K`: its status and what it stored.
#[utoipa::path(
    get,
    path = "/api/v1/namespaces/{namespace}/tracejobs/{name}",
    impl_for = GetJob,
    operation_id = "get_job",
    summary = "One TraceJob: status, merged summary, per-node results and where they stand.",
    params(JobPath),
    responses(
        (status = 200, body = JobView),
        Refused,
    )
)]
#[utoipa::path(
    get,
    path = "/api/v1/namespaces/{namespace}/probepolicies/{name}",
    impl_for = GetPolicy,
    operation_id = "get_policy",
    summary = "One ProbePolicy: status and the windows stored so far.",
    params(
        ("namespace" = String, Path, description = "Kubernetes namespace"),
        ("name" = String, Path, description = "ProbePolicy name"),
    ),
    responses((status = 200, body = PolicyView), Refused)
)]
async fn get_object<K: Owner>(
    State(ctx): State<Ctx>,
    Authorized {
        target: ObjectPath { namespace, name },
        ..
    }: Authorized<K, ObjectPath>,
) -> Result<Json<K::View>> {
    let found: K = owner::fetch(&ctx, &namespace, &name).await?;
    let folder = owner::folder(&ctx, &found)?;
    Ok(Json(found.view(namespace, name, &folder).await?))
}

/// `limit`, `cursor` and any number of `filter`s of a query string.
fn query(raw: Option<&str>) -> Result<(usize, Cursor, Vec<Filter>)> {
    let (mut limit, mut cursor, mut filters) = (DEFAULT_LIMIT, Cursor::default(), Vec::new());
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        Error::BadRequest(format!(
                            "limit {v:?} is not a number from 1 to {MAX_LIMIT}"
                        ))
                    })?
            }
            // Empty: from the start (a client's first `cursor=`).
            "cursor" if v.is_empty() => {}
            "cursor" => cursor = Cursor::decode(&v)?,
            "filter" => filters.push(Filter::parse(&v)?),
            "node" => filters.push(Filter::parse(&format!("node=={v}"))?),
            "comm" => filters.push(Filter::parse(&format!("comm=={v}"))?),
            other => {
                return Err(Error::BadRequest(format!(
                    "unknown query parameter {other:?} (limit, cursor, filter, node, comm)"
                )));
            }
        }
    }
    Ok((limit, cursor, filters))
}

fn with_node(node: String, mut ev: Value) -> Value {
    if let Some(obj) = ev.as_object_mut() {
        obj.insert("node".into(), Value::String(node));
    }
    ev
}

/// Events of one run of an object of kind `K` (a job's, a policy's window), read from the stored chunks a page
/// at a time.
#[utoipa::path(
    get,
    path = "/api/v1/namespaces/{namespace}/tracejobs/{name}/events",
    impl_for = JobEvents,
    operation_id = "events_page",
    summary = "Events read from the stored chunks, a page at a time.",
    params(JobPath, EventsQuery),
    responses(
        (status = 200, body = EventsPage),
        BadRequest,
        Refused,
    )
)]
#[utoipa::path(
    get,
    path = "/api/v1/namespaces/{namespace}/probepolicies/{name}/windows/{window}/events",
    impl_for = WindowEvents,
    operation_id = "window_events",
    summary = "The events of one window, a page at a time (as for a TraceJob's events).",
    params(PolicyPath, EventsQuery),
    responses((status = 200, body = EventsPage), BadRequest, Refused)
)]
async fn events_page<K: Owner>(
    State(ctx): State<Ctx>,
    Authorized { target, .. }: Authorized<K, ObjectPath>,
    Path(run): Path<RunPath>,
    RawQuery(raw): RawQuery,
) -> Result<Json<EventsPage>> {
    let (limit, cursor, filters) = query(raw.as_deref())?;
    let folder = run_folder::<K>(&ctx, &target, run).await?;
    let page = events::page(&folder, &cursor, limit, &filters).await?;
    Ok(Json(EventsPage {
        events: page
            .events
            .into_iter()
            .map(|(n, e, _)| with_node(n, e))
            .collect(),
        next: page.next.encode(),
        caught_up: page.caught_up,
        complete: page.complete,
    }))
}

enum Tailed {
    Event {
        id: String,
        body: Value,
    },
    End,
    Trouble(String),
    /// The reader's token or grant no longer holds: the tail ends (the review cache bounds how late).
    Refused(String),
    /// The job is gone: the tail ends.
    Gone(String),
}

/// Follows a job's events as they are stored: Server-Sent Events (each event's `id` resumes after it, as
/// `Last-Event-ID`), or NDJSON for `Accept: application/x-ndjson`. Ends once every node's events are complete.
#[utoipa::path(
    get,
    path = "/api/v1/namespaces/{namespace}/tracejobs/{name}/events/tail",
    impl_for = Tail,
    params(JobPath, EventsQuery),
    responses(
        (status = 200, description = "a stream of events", content_type = "text/event-stream"),
        BadRequest,
        Refused,
    )
)]
async fn tail(
    State(ctx): State<Ctx>,
    Authorized {
        target: ObjectPath {
            namespace: ns,
            name,
        },
        access,
        ..
    }: Authorized<TraceJob, ObjectPath>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let (_, mut cursor, filters) = query(raw.as_deref())?;
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        cursor = Cursor::decode(last)?;
    }
    let job: TraceJob = owner::fetch(&ctx, &ns, &name).await?;
    let folder = owner::folder(&ctx, &job)?;
    let mut stopping = ctx.stopping.clone();
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    let uid = job.metadata.uid.clone();
    let stream = async_stream::stream! {
        let mut job_checked = tokio::time::Instant::now();
        let mut reviewed = tokio::time::Instant::now();
        'tail: loop {
            // A tail outlives its first review: it is asked again on a clock, before each event once TAIL_EVERY
            // has passed (a slow reader of a busy job never catches up, and a page of events can take it
            // minutes), through the cache any request's review goes through, so a revoked RoleBinding or an
            // expired token ends it as it would refuse a new request.
            if reviewed.elapsed() >= TAIL_EVERY {
                if let Err(e) = ctx.auth.check_again(&headers, access.clone()).await {
                    yield Tailed::Refused(e.to_string());
                    break;
                }
                reviewed = tokio::time::Instant::now();
            }
            // A tail of a job that is gone (deleted, or re-created under the same name) ends.
            if job_checked.elapsed() >= JOB_CHECK_EVERY {
                job_checked = tokio::time::Instant::now();
                match owner::fetch::<TraceJob>(&ctx, &ns, &name).await {
                    Err(Error::NotFound(why)) => {
                        yield Tailed::Gone(why);
                        break;
                    }
                    Ok(j) if j.metadata.uid != uid => {
                        yield Tailed::Gone(format!("TraceJob {name} was deleted and created again"));
                        break;
                    }
                    _ => {}
                }
            }
            match events::page(&folder, &cursor, 1000, &filters).await {
                Ok(p) => {
                    for (node, ev, after) in p.events {
                        if reviewed.elapsed() >= TAIL_EVERY {
                            if let Err(e) = ctx.auth.check_again(&headers, access.clone()).await {
                                yield Tailed::Refused(e.to_string());
                                break 'tail;
                            }
                            reviewed = tokio::time::Instant::now();
                        }
                        yield Tailed::Event { id: after.encode(), body: with_node(node, ev) };
                    }
                    cursor = p.next;
                    if !p.caught_up {
                        continue;
                    }
                    if p.complete {
                        let finished = owner::fetch::<TraceJob>(&ctx, &ns, &name)
                            .await
                            .is_ok_and(|j| j.status.is_some_and(|s| s.phase.is_finished()));
                        if finished {
                            yield Tailed::End;
                            break;
                        }
                    }
                }
                Err(e) => yield Tailed::Trouble(e.to_string()),
            }
            tokio::select! {
                _ = tokio::time::sleep(TAIL_EVERY) => {}
                _ = stopping.changed() => break,
            }
        }
    };
    if ndjson {
        // NDJSON has no place for a refusal: the stream is cut short (no final chunk), so a client sees an
        // error, not a clean end.
        let lines = stream.filter_map(|t| async move {
            match t {
                Tailed::Event { body, .. } => Some(Ok(format!("{body}\n"))),
                Tailed::Refused(why) | Tailed::Gone(why) => Some(Err(std::io::Error::other(why))),
                _ => None,
            }
        });
        return Ok((
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(lines),
        )
            .into_response());
    }
    let events = stream.map(|t| {
        Ok::<_, Infallible>(match t {
            Tailed::Event { id, body } => Event::default().id(id).data(body.to_string()),
            Tailed::End => Event::default().event("end").data("complete"),
            Tailed::Trouble(why) => Event::default().event("trouble").data(why),
            Tailed::Refused(why) => Event::default().event("refused").data(why),
            Tailed::Gone(why) => Event::default().event("gone").data(why),
        })
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// A node's file, as a route names it after the run.
#[derive(Deserialize)]
struct NodeFilePath {
    node: String,
    file: String,
}

/// A node's file of one run of an object of kind `K` (a job's, a policy's window).
#[utoipa::path(
    get,
    path = "/api/v1/namespaces/{namespace}/tracejobs/{name}/nodes/{node}/{file}",
    impl_for = JobFile,
    operation_id = "node_file",
    summary = "A node's end-of-trace file: `summary.json`, `histograms.json`, `histograms.txt`, `folded.txt` or\n\
               `flamegraph.svg` (served with a sandboxing Content-Security-Policy).",
    params(
        ("namespace" = String, Path, description = "Kubernetes namespace"),
        ("name" = String, Path, description = "TraceJob name"),
        ("node" = String, Path, description = "node name, as in `nodes` of the job"),
        ("file" = String, Path, description = "summary.json, histograms.json, histograms.txt, folded.txt or flamegraph.svg"),
    ),
    responses(
        (status = 200, description = "the file"),
        Refused,
    )
)]
#[utoipa::path(
    get,
    path = "/api/v1/namespaces/{namespace}/probepolicies/{name}/windows/{window}/nodes/{node}/{file}",
    impl_for = WindowFile,
    operation_id = "window_file",
    summary = "A node's file of one window.",
    params(
        PolicyPath,
        ("node" = String, Path, description = "node name, as the window lists it"),
        ("file" = String, Path, description = "summary.json, histograms.json, histograms.txt, folded.txt or flamegraph.svg"),
    ),
    responses((status = 200, description = "the file"), Refused)
)]
async fn node_file<K: Owner>(
    State(ctx): State<Ctx>,
    Authorized { target, .. }: Authorized<K, ObjectPath>,
    Path(run): Path<RunPath>,
    Path(NodeFilePath { node, file }): Path<NodeFilePath>,
) -> Result<Response> {
    serve_file(&run_folder::<K>(&ctx, &target, run).await?, &node, &file).await
}

/// A node's result file, with headers that keep a browser from running it.
async fn serve_file(folder: &Folder, node: &str, file: &str) -> Result<Response> {
    let Some((_, kind)) = FILES.iter().find(|(f, _)| *f == file) else {
        let names: Vec<&str> = FILES.iter().map(|(f, _)| *f).collect();
        return Err(Error::NotFound(format!(
            "{file:?} is not a result file ({})",
            names.join(", ")
        )));
    };
    if !folder.nodes().await?.iter().any(|n| n == node) {
        return Err(Error::NotFound(format!(
            "node {node:?} stored no results here"
        )));
    }
    let body = folder.file(node, file).await?;
    let mut res = ([(header::CONTENT_TYPE, *kind)], body).into_response();
    // SVGs come from results: shown as images, never run as documents.
    crate::web::confine(
        res.headers_mut(),
        "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    );
    Ok(res)
}

/// A ProbePolicy, in its namespace.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(
    dead_code,
    reason = "documents the path; handlers take it as `authorized::ObjectPath` and `RunPath`"
)]
struct PolicyPath {
    /// Kubernetes namespace
    namespace: String,
    /// ProbePolicy name
    name: String,
    /// A window, as `windows` of the policy lists it (`window-<end time>`)
    window: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::tests::Fake;
    use std::net::IpAddr;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request over a connection from address `from`; the answer as received.
    pub(crate) async fn send(server: SocketAddr, from: [u8; 4], request: String) -> String {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
        let mut conn = socket.connect(server).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// A server that takes agents' uploads, whose reviews `fake` answers; its API client is never asked (every
    /// request of these tests ends at its review or before).
    fn with_intake(fake: &Arc<Fake>) -> Ctx {
        Arc::new(Context {
            client: kube::Client::new(axum::Router::new(), "default"),
            auth: crate::auth::Auth::new(Arc::new(fake.clone()), Duration::from_secs(30)),
            stores: crate::store::Stores::parse("file:///nonexistent".into(), "", 1 << 20).unwrap(),
            intake: Some(crate::intake::Intake::new(
                "system:serviceaccount:sonde:sonde-agent".into(),
                crate::share::Share::new(0, crate::share::LIST_EVERY),
            )),
            requests: crate::request_histogram(),
            stopping: tokio::sync::watch::channel(false).1,
        })
    }

    /// `which` app of `ctx` served on a loopback port, as main.rs serves it (with each connection's peer).
    pub(crate) async fn serve_on_loopback(
        ctx: &Ctx,
        which: Listener,
    ) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, app(ctx.clone(), which)).into_future());
        (addr, server)
    }

    /// Every accepted connection holds at most [`UNSENT_AT_MOST`] unsent (a slow reader is not sent megabytes
    /// ahead): the option as the kernel reads it back.
    #[tokio::test]
    async fn a_connection_holds_little_unsent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (conn, _) = listener.accept().await.unwrap();
        let before = socket2::SockRef::from(&conn).tcp_notsent_lowat().unwrap();
        hold_little_unsent(&conn);
        let after = socket2::SockRef::from(&conn).tcp_notsent_lowat().unwrap();
        assert_eq!(after, UNSENT_AT_MOST, "was {before}");
        assert_ne!(before, UNSENT_AT_MOST);
    }

    /// The agents' uploads and the readers' API are on ports of their own (the NetworkPolicy the chart ships lets
    /// only agents reach the intake's): an upload on the readers' port and a reader's request on the intake's are
    /// not found, whoever sends them, before any token is looked at.
    #[tokio::test]
    async fn uploads_are_taken_on_the_intake_port_only() {
        let fake = Arc::new(Fake::default());
        let ctx = with_intake(&fake);
        let (readers, readers_server) = serve_on_loopback(&ctx, Listener::Readers).await;
        let (intake, intake_server) = serve_on_loopback(&ctx, Listener::Intake).await;
        let upload = "PUT /agent/v1/objects/tracejobs/a/j-0a1b2c3d/node-1/summary.json HTTP/1.1\r\nhost: x\r\n\
                      authorization: Bearer some-token\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        let answer = send(readers, [127, 0, 0, 1], upload.into()).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(answer.contains("no such route"), "{answer}");
        for request in [
            get("some-token"),
            "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(),
        ] {
            let answer = send(intake, [127, 0, 0, 1], request).await;
            assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
            assert!(
                answer.contains("takes the agents' uploads only"),
                "{answer}"
            );
        }
        // The same upload on the intake's port is reviewed (and refused for its token).
        let answer = send(intake, [127, 0, 0, 1], upload.into()).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert_eq!(fake.authn.load(Ordering::SeqCst), 1, "reviews");
        readers_server.abort();
        intake_server.abort();
    }

    fn get(token: &str) -> String {
        format!(
            "GET /api/v1/namespaces/a/tracejobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             x-forwarded-for: 10.9.9.9\r\nconnection: close\r\n\r\n"
        )
    }

    /// The server as main.rs serves it, on a real socket: a client sending unknown tokens is refused with 429,
    /// `Retry-After` and why, on the API, the login and the agents' upload alike, without a review; it is known
    /// by its TCP peer (not the `X-Forwarded-For` it sends), so another address is still reviewed.
    #[tokio::test]
    async fn a_client_of_the_served_app_past_its_burst_gets_429_and_no_review() {
        let fake = Arc::new(Fake::default());
        let ctx = with_intake(&fake);
        let (addr, server) = serve_on_loopback(&ctx, Listener::Readers).await;
        let (intake, intake_server) = serve_on_loopback(&ctx, Listener::Intake).await;
        // Real time passes here (each review takes the fake 20 ms; a bucket gains 5 tokens a second): each kind
        // of request is sent with fresh tokens until refused, and the reviews answered meanwhile are counted.
        /// A request with the `n`th token.
        type Nth = fn(u32) -> String;
        let kinds: [(&str, SocketAddr, Nth); 3] = [
            ("the API", addr, |n| get(&format!("random-{n}"))),
            ("the login", addr, |n| {
                let body = format!("{{\"token\":\"random-{n}\"}}");
                format!(
                    "POST /login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            }),
            ("an upload", intake, |n| {
                format!(
                    "PUT /agent/v1/objects/tracejobs/a/j-0a1b2c3d/node-1/summary.json HTTP/1.1\r\nhost: x\r\n\
                     authorization: Bearer random-{n}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                )
            }),
        ];
        let mut reviewed = 0;
        let mut n = 0;
        for (kind, to, request) in kinds {
            let refused = loop {
                n += 1;
                assert!(n < 2 * crate::limit::BURST, "{kind}: never refused");
                let answer = send(to, [127, 0, 0, 1], request(n)).await;
                match answer.starts_with("HTTP/1.1 401") {
                    true => reviewed += 1,
                    false => break answer,
                }
            };
            assert!(reviewed >= crate::limit::BURST, "refused after {reviewed}");
            assert!(refused.starts_with("HTTP/1.1 429"), "{kind}: {refused}");
            assert!(
                refused
                    .to_ascii_lowercase()
                    .contains("\r\nretry-after: 1\r\n"),
                "{kind}: {refused}"
            );
            assert!(
                refused.contains(
                    "\"detail\":\"too many requests with tokens not yet reviewed from 127.0.0.1: "
                ),
                "{kind}: {refused}"
            );
        }
        assert_eq!(
            fake.authn.load(Ordering::SeqCst),
            reviewed,
            "reviewed when refused"
        );
        assert_eq!(ctx.auth.rate_limited().get(), 3);
        // Another address is reviewed (and refused for its token, not its rate).
        let answer = send(addr, [127, 0, 0, 2], get("random-other")).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert_eq!(fake.authn.load(Ordering::SeqCst), reviewed + 1);
        server.abort();
        intake_server.abort();
    }

    /// The document generated from the handlers names every route, its parameters and its refusals.
    #[test]
    fn the_openapi_document_covers_the_routes() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 9, "{:?}", paths.keys());
        let events = &doc["paths"]["/api/v1/namespaces/{namespace}/tracejobs/{name}/events"]["get"];
        let params: Vec<&str> = events["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for p in [
            "namespace",
            "name",
            "limit",
            "cursor",
            "filter",
            "node",
            "comm",
        ] {
            assert!(params.contains(&p), "{p} missing: {params:?}");
        }
        for code in ["200", "400", "401", "403", "404", "429"] {
            assert!(
                events["responses"][code].is_object(),
                "{code}: {}",
                events["responses"]
            );
        }
        assert!(
            events["responses"]["403"]["content"]["application/problem+json"].is_object(),
            "{}",
            events["responses"]["403"]
        );
        assert!(
            events["responses"]["429"]["headers"]["Retry-After"].is_object(),
            "{}",
            events["responses"]["429"]
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
