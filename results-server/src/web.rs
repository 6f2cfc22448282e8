//! The web page: one HTML document with its script and style, compiled into the binary (no external assets, so
//! it works in an air-gapped cluster), and a login in the Kubernetes Dashboard's manner: the user pastes a token
//! (`kubectl create token`), the server checks it with a TokenReview and keeps it in an HttpOnly, SameSite=Strict
//! cookie, which the API routes accept like a bearer token (an `EventSource` cannot send a header).
//!
//! The page draws everything from the API with DOM text nodes, never markup, and shows result SVGs only as
//! images; its Content-Security-Policy allows nothing but this server's own script, style, images and data.

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use crate::Ctx;
use crate::auth::TOKEN_COOKIE;
use crate::error::{Error, Result};
use crate::limit::Peer;

const INDEX: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/app.css");

/// The page runs only its own script and style, loads images and data only from this server, posts forms only
/// here and is never framed.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                        connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// How long the browser keeps the token; the token's own expiry still applies.
const SESSION_SECONDS: u32 = 8 * 3600;

pub fn router() -> axum::Router<Ctx> {
    axum::Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/login", post(login))
        .route("/logout", post(logout))
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut res = ([(header::CONTENT_TYPE, kind)], body).into_response();
    let h = res.headers_mut();
    confine(h, PAGE_CSP);
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// What a browser may do with a response: take its type as sent (`nosniff`), under the given policy.
pub fn confine(h: &mut HeaderMap, csp: &'static str) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

#[derive(Serialize)]
struct LoggedIn {
    user: String,
}

/// Checks the token and keeps it in the cookie. Only JSON bodies from this server's own page are taken: a form
/// on another site can send neither (no CORS), so nobody can log a browser in as someone else.
async fn login(
    State(ctx): State<Ctx>,
    peer: Peer,
    tls: Option<Extension<OverTls>>,
    headers: HeaderMap,
    body: std::result::Result<Json<Login>, JsonRejection>,
) -> Result<Response> {
    same_origin(&headers)?;
    let Json(Login { token }) = body.map_err(|e| Error::BadRequest(e.body_text()))?;
    let token = token.trim();
    let plain = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && b != b';');
    if !plain {
        return Err(Error::BadToken("that is not a bearer token".into()));
    }
    let user = ctx.auth.authenticate(token, peer).await?;
    let cookie = cookie(&headers, tls.is_some(), token, SESSION_SECONDS);
    Ok((
        [(header::SET_COOKIE, cookie), no_store()],
        Json(LoggedIn { user: user.name }),
    )
        .into_response())
}

async fn logout(tls: Option<Extension<OverTls>>, headers: HeaderMap) -> Result<Response> {
    same_origin(&headers)?;
    Ok((
        axum::http::StatusCode::NO_CONTENT,
        [
            (header::SET_COOKIE, cookie(&headers, tls.is_some(), "", 0)),
            no_store(),
        ],
    )
        .into_response())
}

fn no_store() -> (header::HeaderName, HeaderValue) {
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

/// Set on requests the server itself took over HTTPS (`--tls-cert`; `routes::serve`).
#[derive(Clone, Copy, Debug)]
pub struct OverTls;

/// The token cookie; `Secure` when the request came over HTTPS (`over_tls`: to this server, else through an
/// ingress or a proxy).
fn cookie(headers: &HeaderMap, over_tls: bool, token: &str, max_age: u32) -> HeaderValue {
    let https = over_tls
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let secure = if https { "; Secure" } else { "" };
    // The token was checked to be visible ASCII without `;`, so the value is a valid header.
    HeaderValue::from_str(&format!(
        "{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("sonde_token=; Path=/; Max-Age=0"))
}

/// A request a browser sent from another site names it in `Origin`: refused.
fn same_origin(headers: &HeaderMap) -> Result<()> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let from = origin.split_once("://").map(|(_, h)| h);
    match (from, host) {
        (Some(from), Some(host)) if from.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(Error::Forbidden(format!(
            "a request from another site ({origin}) is refused"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_https() {
        let plain = cookie(&HeaderMap::new(), false, "abc.def", 60);
        assert_eq!(
            plain.to_str().unwrap(),
            "sonde_token=abc.def; Path=/; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        let tls = cookie(
            &headers(&[(
                header::HeaderName::from_static("x-forwarded-proto"),
                "https",
            )]),
            false,
            "t",
            60,
        );
        assert!(tls.to_str().unwrap().ends_with("; Secure"), "{tls:?}");
        let tls = cookie(&HeaderMap::new(), true, "t", 60);
        assert!(tls.to_str().unwrap().ends_with("; Secure"), "{tls:?}");
    }

    #[test]
    fn only_this_sites_pages_may_log_in() {
        let ok = headers(&[
            (header::ORIGIN, "http://results.example:8080"),
            (header::HOST, "results.example:8080"),
        ]);
        assert!(same_origin(&ok).is_ok());
        assert!(same_origin(&headers(&[(header::HOST, "results.example:8080")])).is_ok());
        let other = headers(&[
            (header::ORIGIN, "https://evil.example"),
            (header::HOST, "results.example:8080"),
        ]);
        assert!(matches!(same_origin(&other), Err(Error::Forbidden(m)) if m.contains("evil")));
    }
}
