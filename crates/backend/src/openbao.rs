//! The broker pattern: OpenBao. The backend logs in with the JWT-SVID spiffe-helper writes
//! (audience `openbao`; the backend still never calls the Workload API), over TLS with OpenBao
//! accepted only by its SPIFFE ID, and gets a short-lived PostgreSQL user for `reports`. It keeps
//! a pool for that user and renews the lease; when a renewal comes back shorter than the lease
//! (the role's max TTL reached) it switches to a new user first — a new pool, proven with one
//! query — and the old pool drains as its last requests end. OpenBao drops the old user when its
//! lease runs out. It logs in again when its token nears expiry or its JWT-SVID was rewritten.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::openbao::{Broker, ReportRow, Reports};
use contract::time::unix_now;
use contract::{Cause, Link};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};
use svid::SpiffeId;

use crate::db::Login;
use crate::mtls::{CallError, ConnectorCache, Seen};
use crate::{Config, Database, DbError, SvidSource};

/// How often the lease and the token are looked at (renewed or replaced only when due).
const TICK: Duration = Duration::from_secs(1);

/// Connections per short-lived user: reports are a side view, not the orders' hot path.
const POOL_SIZE: usize = 4;

pub struct OpenBao {
    host: String,
    port: u16,
    expected: SpiffeId,
    role: String,
    jwt_file: PathBuf,
    timeout: Duration,
    svids: Arc<SvidSource>,
    /// For the short-lived users' pools (the same PostgreSQL, checked by the same SPIFFE ID).
    config: Config,
    connectors: ConnectorCache,
    state: Mutex<State>,
    /// One login, renewal or switch at a time.
    busy: tokio::sync::Mutex<()>,
    logins: AtomicU64,
    rotations: AtomicU64,
}

#[derive(Default)]
struct State {
    token: Option<Token>,
    lease: Option<Arc<Lease>>,
    /// The last failure to reach or use OpenBao, until a call succeeds again.
    problem: Option<Failure>,
    openbao_spiffe_id: Option<String>,
    api_token: Option<String>,
    last_login_ms: Option<u64>,
}

struct Token {
    value: String,
    /// Unix seconds.
    expires_at: i64,
    ttl: i64,
    /// The JWT-SVID it was issued for, and its subject.
    jwt: String,
    sub: String,
}

/// A short-lived database user and its pool.
struct Lease {
    id: String,
    user: String,
    /// Unix seconds, moved on by each renewal.
    expires_at: AtomicI64,
    /// Seconds, as first granted: what each renewal asks for.
    duration: i64,
    db: Database,
}

/// Why a call failed, for the page; `retry`: whether new credentials may mend it.
#[derive(Clone, Debug)]
struct Failure {
    cause: Cause,
    reason: String,
    retry: bool,
}

impl Failure {
    fn new(cause: Cause, reason: impl Into<String>) -> Failure {
        Failure {
            cause,
            reason: reason.into(),
            retry: false,
        }
    }
}

impl OpenBao {
    pub fn new(config: &Config, svids: Arc<SvidSource>) -> anyhow::Result<Option<Arc<OpenBao>>> {
        let Some((host, port)) = config.openbao()? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(OpenBao {
            host,
            port,
            expected: config.openbao_spiffe_id.clone(),
            role: config.openbao_role.clone(),
            jwt_file: config.openbao_jwt_file(),
            timeout: config.openbao_timeout(),
            svids,
            config: config.clone(),
            connectors: ConnectorCache::default(),
            state: Mutex::default(),
            busy: tokio::sync::Mutex::new(()),
            logins: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
        })))
    }

    /// Keeps the token and the lease fresh, in the background.
    pub fn spawn(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                if let Err(f) = self.refresh(false).await {
                    tracing::warn!(cause = ?f.cause, reason = %f.reason, "OpenBao");
                }
                tokio::time::sleep(TICK).await;
            }
        });
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The reports, with the link to OpenBao as it went. A failure new credentials may mend (no
    /// lease yet, an expired one, a user PostgreSQL no longer knows) gets them, then one more try.
    pub async fn reports(&self) -> Reports {
        let mut outcome = self.try_reports().await;
        if let Err(f) = &outcome
            && f.retry
        {
            let had_lease = self.state.lock().unwrap().lease.is_some();
            outcome = match self.refresh(had_lease).await {
                Ok(()) => self.try_reports().await,
                Err(refresh) => Err(match &outcome {
                    Err(f) if f.cause == Cause::LeaseExpired => Failure::new(
                        Cause::LeaseExpired,
                        format!(
                            "{} and no new one could be had: {}",
                            f.reason, refresh.reason
                        ),
                    ),
                    _ => refresh,
                }),
            };
        }
        let (link, rows) = match outcome {
            Ok(rows) => (Link::success(), rows),
            Err(f) => (Link::failed(f.cause, f.reason), vec![]),
        };
        Reports {
            link,
            rows,
            broker: self.view(),
        }
    }

    async fn try_reports(&self) -> Result<Vec<ReportRow>, Failure> {
        let lease = self.state.lock().unwrap().lease.clone();
        let Some(lease) = lease else {
            let why = self.state.lock().unwrap().problem.clone();
            return Err(Failure {
                retry: true,
                ..why.unwrap_or_else(|| {
                    Failure::new(
                        Cause::OpenBaoUnreachable,
                        "no database credentials from OpenBao yet",
                    )
                })
            });
        };
        let left = lease.expires_at.load(Ordering::Relaxed) - unix_now();
        if left <= 0 {
            return Err(Failure {
                retry: true,
                ..Failure::new(
                    Cause::LeaseExpired,
                    format!(
                        "the lease on database user {} expired {} s ago",
                        lease.user, -left
                    ),
                )
            });
        }
        lease.db.reports().await.map_err(|e| Failure {
            // The user may be gone (revoked, or dropped at its lease's end).
            retry: matches!(e, DbError::Refused(_)),
            ..Failure::new(e.cause(), format!("as {}: {e}", lease.user))
        })
    }

    /// What the backend holds from OpenBao now.
    pub fn view(&self) -> Broker {
        let s = self.state.lock().unwrap();
        let now = unix_now();
        Broker {
            logged_in_as: s.token.as_ref().map(|t| t.sub.clone()),
            openbao_spiffe_id: s.openbao_spiffe_id.clone(),
            token_seconds_left: s.token.as_ref().map(|t| t.expires_at - now),
            db_user: s.lease.as_ref().map(|l| l.user.clone()),
            lease_seconds_left: s
                .lease
                .as_ref()
                .map(|l| l.expires_at.load(Ordering::Relaxed) - now),
            lease_duration_s: s.lease.as_ref().map(|l| l.duration.max(0) as u64),
            last_login_ms: s.last_login_ms,
            logins: self.logins.load(Ordering::Relaxed),
            rotations: self.rotations.load(Ordering::Relaxed),
            api_token_masked: s.api_token.as_deref().map(contract::openbao::mask),
            problem: s.problem.as_ref().map(|f| f.reason.clone()),
        }
    }

    /// Logs in if due, then gets, renews or replaces the lease if due (`replace`: now).
    async fn refresh(&self, replace: bool) -> Result<(), Failure> {
        let _one = self.busy.lock().await;
        let outcome = self.refresh_once(replace).await;
        self.state.lock().unwrap().problem = outcome.as_ref().err().cloned();
        outcome
    }

    async fn refresh_once(&self, replace: bool) -> Result<(), Failure> {
        let token = self.token().await?;
        // The demo secret, shown masked: read until it is there (OpenBao may still be being
        // configured when the backend first logs in).
        if self.state.lock().unwrap().api_token.is_none() {
            match self
                .call(
                    hyper::Method::GET,
                    "/v1/kv/data/demo/api-token",
                    Some(&token),
                    None,
                )
                .await
            {
                Ok(v) => {
                    self.state.lock().unwrap().api_token =
                        v["data"]["data"]["token"].as_str().map(Into::into)
                }
                Err(f) => {
                    tracing::debug!(reason = %f.reason, "the demo secret is not readable yet")
                }
            }
        }
        let lease = self.state.lock().unwrap().lease.clone();
        let Some(lease) = lease else {
            return self.switch(&token).await;
        };
        if replace {
            return self.switch(&token).await;
        }
        let left = lease.expires_at.load(Ordering::Relaxed) - unix_now();
        if left > lease.duration / 2 {
            return Ok(());
        }
        match self.renew(&token, &lease).await {
            Ok(true) => Ok(()),
            // Capped by the role's max TTL: switch while the old user still works.
            Ok(false) => self.switch(&token).await,
            // Gone (revoked, or past its max TTL): a new one.
            Err(f) if f.cause == Cause::OpenBaoRefused => self.switch(&token).await,
            Err(f) => Err(f),
        }
    }

    /// The token, after a new login when there is none, it nears its end, or the JWT-SVID
    /// was rewritten.
    async fn token(&self) -> Result<String, Failure> {
        let jwt = std::fs::read_to_string(&self.jwt_file)
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                Failure::new(
                    Cause::NoSvid,
                    format!(
                        "no JWT-SVID for OpenBao at {}: {e} (spiffe-helper writes it: jwt_svids in helper.conf)",
                        self.jwt_file.display()
                    ),
                )
            })?;
        {
            let s = self.state.lock().unwrap();
            if let Some(t) = &s.token
                && t.jwt == jwt
                && t.expires_at - unix_now() > t.ttl / 3
            {
                return Ok(t.value.clone());
            }
        }
        self.login(jwt).await
    }

    async fn login(&self, jwt: String) -> Result<String, Failure> {
        let sub = jwt_subject(&jwt).unwrap_or_else(|| "(unreadable JWT-SVID)".into());
        let started = std::time::Instant::now();
        let answer = self
            .call(
                hyper::Method::POST,
                "/v1/auth/jwt/login",
                None,
                Some(json!({ "role": self.role, "jwt": jwt })),
            )
            .await
            .map_err(|f| Failure {
                reason: format!("login as {sub} (role {}): {}", self.role, f.reason),
                ..f
            })?;
        let auth = &answer["auth"];
        let value = auth["client_token"]
            .as_str()
            .ok_or_else(|| Failure::new(Cause::Unexpected, "OpenBao's login answer has no token"))?
            .to_owned();
        let ttl = auth["lease_duration"].as_i64().unwrap_or(0);
        self.logins.fetch_add(1, Ordering::Relaxed);
        tracing::info!(spiffe_id = %sub, ttl_s = ttl, "logged in to OpenBao with a JWT-SVID");
        let mut s = self.state.lock().unwrap();
        s.last_login_ms = Some(started.elapsed().as_millis() as u64);
        s.token = Some(Token {
            value: value.clone(),
            expires_at: unix_now() + ttl,
            ttl,
            jwt,
            sub,
        });
        Ok(value)
    }

    /// A new database user; the pool of the one before drains as its requests end.
    async fn switch(&self, token: &str) -> Result<(), Failure> {
        let lease = self.new_lease(token).await;
        let lease = match lease {
            // The token may have been revoked or have run out: one new login.
            Err(f) if f.cause == Cause::OpenBaoRefused => {
                self.state.lock().unwrap().token = None;
                let token = self.token().await?;
                self.new_lease(&token).await?
            }
            other => other?,
        };
        let user = lease.user.clone();
        let old = self.state.lock().unwrap().lease.replace(lease);
        if let Some(old) = old {
            self.rotations.fetch_add(1, Ordering::Relaxed);
            tracing::info!(user = %user, previous = %old.user, "switched to a new database user; the previous one's pool drains");
        } else {
            tracing::info!(user = %user, "database user from OpenBao");
        }
        Ok(())
    }

    async fn new_lease(&self, token: &str) -> Result<Arc<Lease>, Failure> {
        let v = self
            .call(
                hyper::Method::GET,
                "/v1/database/creds/reports",
                Some(token),
                None,
            )
            .await
            .map_err(|f| Failure {
                reason: format!("reading database/creds/reports: {}", f.reason),
                ..f
            })?;
        let field = |v: &Value| v.as_str().map(str::to_owned);
        let (Some(id), Some(user), Some(password)) = (
            field(&v["lease_id"]),
            field(&v["data"]["username"]),
            field(&v["data"]["password"]),
        ) else {
            return Err(Failure::new(
                Cause::Unexpected,
                "OpenBao's credentials lack a lease, a username or a password",
            ));
        };
        let duration = v["lease_duration"].as_i64().unwrap_or(0);
        let login = Login {
            user: user.clone(),
            password: Some(password),
            pool_size: POOL_SIZE,
        };
        let db = Database::logged_in_as(&self.config, self.svids.clone(), login)
            .map_err(|e| Failure::new(Cause::Unexpected, e.to_string()))?;
        // Proven before anyone depends on it.
        db.ping().await.map_err(|e| {
            Failure::new(
                e.cause(),
                format!("the new database user {user} could not log in: {e}"),
            )
        })?;
        Ok(Arc::new(Lease {
            id,
            user,
            expires_at: AtomicI64::new(unix_now() + duration),
            duration,
            db,
        }))
    }

    /// Renews the lease for its full duration again: false when OpenBao granted less.
    async fn renew(&self, token: &str, lease: &Lease) -> Result<bool, Failure> {
        let v = self
            .call(
                hyper::Method::PUT,
                "/v1/sys/leases/renew",
                Some(token),
                Some(json!({ "lease_id": lease.id, "increment": lease.duration })),
            )
            .await?;
        let granted = v["lease_duration"].as_i64().unwrap_or(0);
        lease
            .expires_at
            .store(unix_now() + granted, Ordering::Relaxed);
        Ok(granted >= lease.duration)
    }

    /// One call to OpenBao's API, its JSON answer; OpenBao accepted only by its SPIFFE ID.
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let svid = self.svids.current().map_err(|u| {
            Failure::new(
                u.cause,
                format!("no usable SVID (its bundle checks OpenBao): {u}"),
            )
        })?;
        let tls = |e: &dyn std::fmt::Display| {
            Failure::new(Cause::OpenBaoTls, format!("TLS with OpenBao failed: {e}"))
        };
        let unreachable = |e: &dyn std::fmt::Display| {
            Failure::new(
                Cause::OpenBaoUnreachable,
                format!("OpenBao at {} is unreachable: {e}", self.address()),
            )
        };
        let connector = self.connectors.get(&svid).map_err(|e| tls(&e))?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.address())
            .header("content-type", "application/json");
        if let Some(token) = token {
            req = req.header("x-vault-token", token);
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::new(Cause::Unexpected, e.to_string()))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let peer = (self.host.as_str(), self.port);
        let call = crate::mtls::call(
            &connector,
            peer,
            &self.expected,
            seen.clone(),
            "OpenBao",
            req,
        );
        let (status, bytes) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| unreachable(&format!("no answer within {} ms", self.timeout.as_millis())))?
            .map_err(|e| match e {
                CallError::Setup(e) | CallError::Handshake(e) => tls(&e),
                CallError::Refused(refused) => Failure::new(Cause::OpenBaoTls, refused),
                CallError::Dropped { why, alert: true } => tls(&why),
                CallError::Unreachable(e)
                | CallError::Http(e)
                | CallError::Read(e)
                | CallError::Dropped { why: e, .. } => unreachable(&e),
            })?;
        if let Some(id) = seen
            .lock()
            .unwrap()
            .leaf
            .as_ref()
            .and_then(|l| l.spiffe_id.clone())
        {
            self.state.lock().unwrap().openbao_spiffe_id = Some(id);
        }
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                Failure::new(
                    Cause::Unexpected,
                    format!("OpenBao answered {status} with something unreadable: {e}"),
                )
            })?
        };
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let errors = v["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        Err(match status {
            503 if errors.contains("sealed") => Failure::new(
                Cause::OpenBaoSealed,
                format!("OpenBao is sealed ({errors}); it must be unsealed first"),
            ),
            400 | 403 => Failure::new(
                Cause::OpenBaoRefused,
                format!("OpenBao refused it ({status}): {errors}"),
            ),
            _ => Failure::new(
                Cause::OpenBaoUnreachable,
                format!("OpenBao answered {status}: {errors}"),
            ),
        })
    }
}

/// The `sub` claim of a JWT (read, not verified: OpenBao verifies it).
fn jwt_subject(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let mut b64: String = payload
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !b64.len().is_multiple_of(4) {
        b64.push('=');
    }
    let bytes = openssl::base64::decode_block(&b64).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["sub"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_of_a_jwt_is_read_from_its_payload() {
        // {"alg":"none"} . {"sub":"spiffe://example.org/ns/demo/sa/backend","aud":["openbao"]}
        let jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy9ucy9kZW1vL3NhL2JhY2tlbmQiLCJhdWQiOlsib3BlbmJhbyJdfQ.";
        assert_eq!(
            jwt_subject(jwt).as_deref(),
            Some("spiffe://example.org/ns/demo/sa/backend")
        );
        assert_eq!(jwt_subject("not a jwt"), None);
    }
}
