//! Bearer-token authentication of the `/metrics` endpoint through the
//! Kubernetes API (`--metrics-endpoint-auth`), as the Go router does it:
//! the token is checked with a `TokenReview`, and the user it names must be
//! allowed `get` on the non-resource URL `/metrics` (a
//! `SubjectAccessReview`).
//!
//! | request | answer |
//! | --- | --- |
//! | no `Authorization: Bearer …`, or a token the API server does not accept | 401 |
//! | a valid token whose user may not `get` `/metrics` | 403 |
//! | the API server cannot be asked, or does not answer within 10 s | 500 |
//!
//! Answers are cached by token: an allowed one for 60 s, a refused one for
//! 10 s, at most 1024 tokens (the oldest are dropped first). Errors of the
//! API server are not cached.
//!
//! The server's own identity needs `create` on `tokenreviews`
//! (`authentication.k8s.io`) and `subjectaccessreviews`
//! (`authorization.k8s.io`), what the chart's RBAC grants.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Mutex,
    time::{Duration, Instant},
};

use http::{HeaderMap, StatusCode, header::AUTHORIZATION};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};

use crate::serve::MetricsGate;

/// How long an allowed token is trusted without asking again.
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refused token is refused without asking again.
pub const REFUSED_TTL: Duration = Duration::from_secs(10);
/// The most tokens remembered at once.
pub const CACHE_CAPACITY: usize = 1024;
/// How long the two reviews of a token may take together before the
/// scrape is answered 500.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL and verb a scraper must be allowed.
const PATH: &str = "/metrics";
const VERB: &str = "get";

/// What the API server said of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// Authenticated and allowed.
    Allowed,
    /// Not authenticated: 401.
    Unauthenticated,
    /// Authenticated, not allowed: 403.
    Forbidden,
}

impl Answer {
    fn ttl(self) -> Duration {
        match self {
            Answer::Allowed => ALLOWED_TTL,
            Answer::Unauthenticated | Answer::Forbidden => REFUSED_TTL,
        }
    }

    fn result(self) -> Result<(), StatusCode> {
        match self {
            Answer::Allowed => Ok(()),
            Answer::Unauthenticated => Err(StatusCode::UNAUTHORIZED),
            Answer::Forbidden => Err(StatusCode::FORBIDDEN),
        }
    }
}

/// Checks the bearer token of each `/metrics` request with the Kubernetes
/// API; hand it to [`serve_metrics_gated`](crate::serve::serve_metrics_gated).
pub struct MetricsAuth {
    client: Client,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for MetricsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.cache.lock().map_or(0, |c| c.entries.len());
        f.debug_struct("MetricsAuth")
            .field("cached", &cached)
            .finish_non_exhaustive()
    }
}

impl MetricsAuth {
    /// Reviews tokens with `client`.
    pub fn new(client: Client) -> MetricsAuth {
        MetricsAuth {
            client,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Whether a request with `headers` may read the metrics: `Ok`, or the
    /// status to answer with (401, 403, or 500 when the API server cannot
    /// be asked).
    pub async fn check(&self, headers: &HeaderMap) -> Result<(), StatusCode> {
        let Some(token) = bearer(headers) else {
            return Err(StatusCode::UNAUTHORIZED);
        };
        let now = Instant::now();
        if let Some(answer) = self.cache.lock().ok().and_then(|c| c.get(token, now)) {
            return answer.result();
        }
        let answer = match tokio::time::timeout(REVIEW_TIMEOUT, self.review(token)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "/metrics: the API server could not review the token");
                return Err(StatusCode::INTERNAL_SERVER_ERROR);
            }
            Err(_) => {
                tracing::warn!(
                    timeout = ?REVIEW_TIMEOUT,
                    "/metrics: the API server did not review the token in time"
                );
                return Err(StatusCode::INTERNAL_SERVER_ERROR);
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(token, answer, Instant::now());
        }
        answer.result()
    }

    /// Asks the API server who `token` is, then whether they may read
    /// `/metrics`.
    async fn review(&self, token: &str) -> Result<Answer, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let (true, Some(user)) = (status.authenticated == Some(true), status.user) else {
            return Ok(Answer::Unauthenticated);
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(PATH.to_owned()),
                    verb: Some(VERB.to_owned()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let decided = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        Ok(match decided.status.is_some_and(|s| s.allowed) {
            true => Answer::Allowed,
            false => Answer::Forbidden,
        })
    }
}

impl MetricsGate for MetricsAuth {
    fn admit<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> Pin<Box<dyn Future<Output = Result<(), StatusCode>> + Send + 'a>> {
        Box::pin(self.check(headers))
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Answers by token, each until it expires.
#[derive(Default)]
struct Cache {
    entries: HashMap<String, (Answer, Instant)>,
}

impl Cache {
    fn get(&self, token: &str, now: Instant) -> Option<Answer> {
        self.entries
            .get(token)
            .and_then(|&(answer, expires)| (now < expires).then_some(answer))
    }

    fn insert(&mut self, token: &str, answer: Answer, now: Instant) {
        if self.entries.len() >= CACHE_CAPACITY && !self.entries.contains_key(token) {
            self.entries.retain(|_, &mut (_, expires)| expires > now);
            // Still full of live answers: drop those that expire first.
            while self.entries.len() >= CACHE_CAPACITY {
                let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(token, _)| token.clone())
                else {
                    break;
                };
                self.entries.remove(&oldest);
            }
        }
        self.entries
            .insert(token.to_owned(), (answer, now + answer.ttl()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, authorization.parse().unwrap());
        h
    }

    #[test]
    fn only_a_bearer_token_is_taken() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic YTpi")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn answers_expire_allowed_after_a_minute_refused_after_ten_seconds() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        cache.insert("ok", Answer::Allowed, t0);
        cache.insert("no", Answer::Forbidden, t0);
        cache.insert("who", Answer::Unauthenticated, t0);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(cache.get("ok", later), Some(Answer::Allowed));
        assert_eq!(cache.get("no", later), None);
        assert_eq!(cache.get("who", later), None);
        assert_eq!(cache.get("ok", t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn the_cache_keeps_at_most_its_capacity_dropping_what_expires_first() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        // One refused answer (expires first), then allowed ones.
        cache.insert("refused", Answer::Forbidden, t0);
        for i in 1..CACHE_CAPACITY {
            cache.insert(&format!("t{i}"), Answer::Allowed, t0);
        }
        assert_eq!(cache.entries.len(), CACHE_CAPACITY);
        cache.insert("new", Answer::Allowed, t0);
        assert_eq!(cache.entries.len(), CACHE_CAPACITY);
        assert_eq!(cache.get("refused", t0), None);
        assert_eq!(cache.get("new", t0), Some(Answer::Allowed));
        // Expired answers make room before live ones are dropped.
        let later = t0 + Duration::from_secs(61);
        cache.insert("fresh", Answer::Allowed, later);
        assert_eq!(cache.entries.len(), 1);
    }
}
