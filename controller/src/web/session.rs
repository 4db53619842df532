//! Sign-in with an API token, the session cookie it gives, sign-out, and
//! the checks every page makes (`Viewer`).
//!
//! - The cookie (`__Host-slipway`: Secure, HttpOnly, SameSite=Strict, Path=/)
//!   holds 32 random bytes; the store keeps only their SHA-256
//!   (`web_sessions`), so a copy of the database signs nobody in. A cookie
//!   another controller made is unknown here and refused.
//! - A session lives 12 hours at most and never past its token: every
//!   request reads the token again, so revoking it ends its sessions.
//! - Forms carry a CSRF token bound to the session (to the sign-in cookie
//!   before there is one) and must come from this origin: a forged form, or
//!   one replayed after sign-out, is refused and changes nothing.

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;

use super::layout;
use super::{Peer, WebError};
use crate::auth::{Need, Principal};
use crate::ctx::SharedCtx;

pub const SESSION_COOKIE: &str = "__Host-slipway";
/// Set by the sign-in page: what its form's CSRF field must match.
const SIGN_IN_COOKIE: &str = "__Host-slipway-sign-in";
/// Longest a session lives (shorter when its token expires sooner).
pub const SESSION_SECS: i64 = 12 * 3600;
/// Longest token text read from the form.
const MAX_TOKEN_LEN: usize = 256;

/// The signed-in caller of a page.
pub struct Viewer {
    pub principal: Principal,
    /// What this session's forms must carry.
    pub csrf: String,
    id_hash: String,
}

impl Viewer {
    /// Refuses unless the session's token is for `tenant` and grants `need`
    /// (the same rule, and words, as a gRPC call).
    pub fn check(&self, tenant: &str, need: Need) -> Result<(), WebError> {
        self.principal
            .check(tenant, need)
            .map_err(|s| WebError::new(StatusCode::FORBIDDEN, s.message()))
    }
}

/// Live views (server-sent event streams) one session may hold open.
pub const MAX_LIVE_PER_SESSION: usize = 8;

static LIVE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
    std::sync::LazyLock::new(Default::default);

/// A live view counted against its session until dropped.
pub struct LiveSlot(String);

impl Drop for LiveSlot {
    fn drop(&mut self) {
        let mut live = LIVE.lock().expect("live views lock");
        if let Some(n) = live.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.0);
            }
        }
    }
}

impl Viewer {
    /// Whether the session and its token still hold (a live view asks again
    /// as it runs: signing out or revoking the token ends it).
    pub async fn still_valid(&self, ctx: &SharedCtx) -> bool {
        let Ok(Some(row)) = ctx
            .store
            .web_session(&self.id_hash, crate::store::now())
            .await
        else {
            return false;
        };
        let Ok(Some(token)) = ctx.store.api_token(&row.token_id).await else {
            return false;
        };
        crate::auth::principal(ctx, token).await.is_ok()
    }

    /// A slot for one more live view of this session, or a refusal past
    /// `MAX_LIVE_PER_SESSION`.
    pub fn live_slot(&self) -> Result<LiveSlot, WebError> {
        let mut live = LIVE.lock().expect("live views lock");
        let n = live.entry(self.id_hash.clone()).or_default();
        if *n >= MAX_LIVE_PER_SESSION {
            return Err(WebError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{MAX_LIVE_PER_SESSION} live views are open in this session: close one"),
            ));
        }
        *n += 1;
        Ok(LiveSlot(self.id_hash.clone()))
    }
}

impl FromRequestParts<SharedCtx> for Viewer {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, ctx: &SharedCtx) -> Result<Self, WebError> {
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(WebError::new(
                StatusCode::UNAUTHORIZED,
                "sign in to see the fleet",
            ));
        };
        let ended = || {
            WebError::new(
                StatusCode::UNAUTHORIZED,
                "this session has ended or was not made by this controller: sign in again",
            )
        };
        if !is_session_id(id) {
            return Err(ended());
        }
        let id_hash = trust::secret::hash_secret(id);
        let row = ctx
            .store
            .web_session(&id_hash, crate::store::now())
            .await?
            .ok_or_else(ended)?;
        let token = ctx
            .store
            .api_token(&row.token_id)
            .await?
            .ok_or_else(ended)?;
        let principal = crate::auth::principal(ctx, token)
            .await
            .map_err(|s| WebError::new(StatusCode::UNAUTHORIZED, s.message()))?;
        Ok(Viewer {
            principal,
            csrf: row.csrf,
            id_hash,
        })
    }
}

/// 64 lowercase hex digits: what this controller puts in a cookie.
fn is_session_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .expect("cookie text is ASCII")
}

/// Refuses a form posted from another origin: browsers send `Origin` with
/// every POST, and it must name this listener (the `Host` the browser used).
fn same_origin(headers: &HeaderMap) -> Result<(), WebError> {
    let refused = || {
        WebError::new(
            StatusCode::FORBIDDEN,
            "the form was posted from another site: refused",
        )
    };
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    if origin == format!("https://{host}") {
        Ok(())
    } else {
        Err(refused())
    }
}

fn csrf_matches(expected: &str, got: &str) -> Result<(), WebError> {
    if !expected.is_empty() && trust::ct_eq(expected.as_bytes(), got.as_bytes()) {
        Ok(())
    } else {
        Err(WebError::new(
            StatusCode::FORBIDDEN,
            "the form's CSRF token does not match this session: reload the page and try again",
        ))
    }
}

/// `/`: the caller's fleet, or the sign-in page.
pub async fn home(viewer: Result<Viewer, WebError>) -> Response {
    match viewer {
        Ok(v) => {
            Redirect::to(&format!("/t/{}/", layout::path(&v.principal.tenant))).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub struct SignInQuery {
    #[serde(default)]
    pub signed_out: bool,
}

pub async fn sign_in_page(Query(q): Query<SignInQuery>) -> Response {
    let message = if q.signed_out { "Signed out." } else { "" };
    sign_in_response(StatusCode::OK, message)
}

/// The sign-in page with `message`, and a fresh sign-in CSRF cookie.
pub fn sign_in_response(status: StatusCode, message: &str) -> Response {
    let csrf = trust::secret::random_hex(16);
    let body = layout::bare(
        "Sign in",
        html! {
            @if !message.is_empty() {
                p.refusal role="alert" { (layout::shown(message)) }
            }
            form.sign-in method="post" action="/sign-in" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required
                    placeholder="swt_…" maxlength=(MAX_TOKEN_LEN);
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Sign in" }
            }
            p.hint { "A viewer token is enough to look: " code { "slipctl tokens create NAME --role viewer" } }
        },
    );
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(SIGN_IN_COOKIE, &csrf, 3600));
    response
}

#[derive(Deserialize)]
pub struct SignInForm {
    token: String,
    csrf: String,
}

pub async fn sign_in(
    State(ctx): State<SharedCtx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Result<Response, WebError> {
    same_origin(&headers)?;
    csrf_matches(
        cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default(),
        &form.csrf,
    )?;
    let token = form.token.trim();
    let refused = |message: &str| {
        crate::metrics::METRICS
            .web_sign_ins
            .with_label_values(&["refused"])
            .inc();
        tracing::info!(peer = %peer.0, reason = message, "dashboard sign-in refused");
        WebError::new(StatusCode::UNAUTHORIZED, message)
    };
    if token.len() > MAX_TOKEN_LEN {
        return Err(refused("invalid API token"));
    }
    let principal = crate::auth::authenticate_token(&ctx, token)
        .await
        .map_err(|s| refused(s.message()))?;
    let row = ctx
        .store
        .api_token(&principal.token_id)
        .await?
        .ok_or_else(|| refused("invalid API token"))?;
    let now = crate::store::now();
    let expires_at = row
        .expires_at
        .map_or(now + SESSION_SECS, |t| t.min(now + SESSION_SECS));
    let id = trust::secret::random_hex(32);
    let csrf = trust::secret::random_hex(16);
    ctx.store
        .create_web_session(
            &trust::secret::hash_secret(&id),
            &principal.token_id,
            &csrf,
            now,
            expires_at,
        )
        .await?;
    crate::metrics::METRICS
        .web_sign_ins
        .with_label_values(&["ok"])
        .inc();
    audit(&ctx, &principal, peer, "web-sign-in").await;
    let mut response =
        Redirect::to(&format!("/t/{}/", layout::path(&principal.tenant))).into_response();
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &id, expires_at - now),
    );
    h.append(header::SET_COOKIE, set_cookie(SIGN_IN_COOKIE, "", 0));
    Ok(response)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn sign_out(
    State(ctx): State<SharedCtx>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    viewer: Viewer,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    same_origin(&headers)?;
    csrf_matches(&viewer.csrf, &form.csrf)?;
    viewer.check(&viewer.principal.tenant, Need::Read)?;
    ctx.store.delete_web_session(&viewer.id_hash).await?;
    audit(&ctx, &viewer.principal, peer, "web-sign-out").await;
    let mut response = Redirect::to("/sign-in?signed_out=true").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    Ok(response)
}

async fn audit(ctx: &SharedCtx, who: &Principal, peer: Peer, action: &str) {
    if let Err(e) = ctx
        .store
        .audit(
            &who.tenant,
            &who.actor(),
            action,
            "",
            "",
            "dashboard",
            "ok",
            &peer.0.to_string(),
        )
        .await
    {
        tracing::error!(error = %e, action, "writing the audit log failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-slipway-sign-in=x; __Host-slipway=y"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("y"));
        assert_eq!(cookie(&h, SIGN_IN_COOKIE), Some("x"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn a_form_from_another_origin_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7480"));
        assert!(
            same_origin(&h).is_ok(),
            "no Origin: not a browser's cross-site POST"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://127.0.0.1:7480"),
        );
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert_eq!(same_origin(&h).unwrap_err().status, StatusCode::FORBIDDEN);
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7480"),
        );
        assert!(same_origin(&h).is_err(), "plain http is another origin");
    }

    #[test]
    fn a_session_holds_a_bounded_number_of_live_views() {
        let viewer = Viewer {
            principal: Principal {
                token_id: "t".into(),
                name: "looker".into(),
                tenant: "default".into(),
                roles: vec![],
            },
            csrf: String::new(),
            id_hash: "live-test".into(),
        };
        let held: Vec<LiveSlot> = (0..MAX_LIVE_PER_SESSION)
            .map(|_| viewer.live_slot().unwrap())
            .collect();
        let refused = viewer.live_slot().err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        drop(held);
        assert!(
            viewer.live_slot().is_ok(),
            "slots come back when views close"
        );
    }

    #[test]
    fn an_empty_or_wrong_csrf_token_is_refused() {
        assert!(csrf_matches("abc", "abc").is_ok());
        assert!(csrf_matches("abc", "abd").is_err());
        assert!(csrf_matches("", "").is_err());
    }
}
