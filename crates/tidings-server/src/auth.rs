//! Bearer tokens, their roles, and the middleware that checks them on every request.
//!
//! With no token configured every request is allowed: that is only safe on loopback, and
//! the `tidings serve` command refuses any other bind without one. With tokens, each
//! request carries `Authorization: Bearer <token>` (or `?access_token=` for browsers'
//! `EventSource`, which cannot set headers), and the token's [`Role`] must cover the route.

use std::fmt;
use std::str::FromStr;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tidings::EventStore;

use crate::AppState;
use crate::problem::Problem;

/// What a token may do. Roles are ordered: each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads, subscriptions, the console, and consuming from consumer groups.
    ReadOnly,
    /// Reads and appends.
    ReadWrite,
    /// Everything, including `/metrics`, managing consumer groups and their parked
    /// messages.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReadOnly => "read-only",
            Self::ReadWrite => "read-write",
            Self::Admin => "admin",
        })
    }
}

/// A role name that is not one of `read-only`, `read-write`, `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a role: use read-only, read-write or admin")]
pub struct ParseRoleError(pub String);

impl FromStr for Role {
    type Err = ParseRoleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "read-only" | "read" | "ro" => Ok(Self::ReadOnly),
            "read-write" | "write" | "rw" => Ok(Self::ReadWrite),
            "admin" => Ok(Self::Admin),
            other => Err(ParseRoleError(other.to_owned())),
        }
    }
}

/// A token file could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFileError {
    /// A line is not `ROLE TOKEN`.
    #[error("line {line}: expected `ROLE TOKEN` (role: read-only, read-write or admin)")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// A role name is unknown.
    #[error("line {line}: {source}")]
    Role {
        /// 1-based line number.
        line: usize,
        /// Why.
        source: ParseRoleError,
    },
    /// A token is shorter than 16 characters.
    #[error("line {line}: tokens must be at least 16 characters long")]
    TooShort {
        /// 1-based line number.
        line: usize,
    },
}

/// The configured tokens. Empty means authentication is off.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<(String, Role)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.tokens.len())
            .finish()
    }
}

impl Tokens {
    /// No tokens: every request is allowed.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a token with a role.
    pub fn with(mut self, token: impl Into<String>, role: Role) -> Self {
        self.tokens.push((token.into(), role));
        self
    }

    /// Parses a token file: one `ROLE TOKEN` per line; blank lines and `#` comments skipped.
    ///
    /// ```
    /// use tidings_server::{Role, Tokens};
    /// let t = Tokens::parse_file("# ops\nadmin 0123456789abcdef0123\nread-only feedfacefeedface00\n").unwrap();
    /// assert_eq!(t.role_of("feedfacefeedface00"), Some(Role::ReadOnly));
    /// ```
    pub fn parse_file(text: &str) -> Result<Self, TokenFileError> {
        let mut tokens = Self::none();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let mut parts = l.split_whitespace();
            let (Some(role), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(TokenFileError::Malformed { line });
            };
            let role = role
                .parse()
                .map_err(|source| TokenFileError::Role { line, source })?;
            if token.len() < 16 {
                return Err(TokenFileError::TooShort { line });
            }
            tokens = tokens.with(token, role);
        }
        Ok(tokens)
    }

    /// True when authentication is on.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The role of `token`, compared in constant time per configured token.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let mut found = None;
        for (t, role) in &self.tokens {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(*role);
            }
        }
        found
    }

    /// Checks a request for `path` with `method` carrying `token`.
    pub fn authorize(
        &self,
        method: &Method,
        path: &str,
        token: Option<&str>,
    ) -> Result<(), Problem> {
        let Some(needed) = required_role(method, path) else {
            return Ok(());
        };
        if !self.enabled() {
            return Ok(());
        }
        let Some(token) = token else {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server requires a token: send Authorization: Bearer <token>",
            )
            .with("requiredRole", needed.to_string()));
        };
        match self.role_of(token) {
            None => Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the bearer token is not one this server knows",
            )
            .with("requiredRole", needed.to_string())),
            Some(role) if role < needed => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{method} {path} needs a {needed} token; this token is {role}"),
            )
            .with("requiredRole", needed.to_string())
            .with("role", role.to_string())),
            Some(_) => Ok(()),
        }
    }
}

/// The middleware in front of every route: when tokens are configured, the request's
/// token (a bearer header, or `access_token` in the query) must cover the route, or the
/// answer is a problem (401 with `WWW-Authenticate`, or 403).
pub(crate) async fn authorize<S: EventStore>(
    State(state): State<AppState<S>>,
    req: Request,
    next: Next,
) -> Response {
    let tokens = &state.config().tokens;
    if tokens.enabled() {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").map(str::trim))
            .map(str::to_owned);
        let from_query = || {
            req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("access_token="))
                    .map(str::to_owned)
            })
        };
        let token = bearer.or_else(from_query);
        if let Err(p) = tokens.authorize(req.method(), req.uri().path(), token.as_deref()) {
            let mut response = p.into_response();
            if response.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tidings\""),
                );
            }
            return response;
        }
    }
    next.run(req).await
}

/// The role a route needs; None for routes open to anyone (health checks and the
/// console's static files, which hold no data).
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    let open = matches!(path, "/" | "/health" | "/ready" | "/openapi.json")
        || path.starts_with("/console/");
    if open && (method == Method::GET || method == Method::HEAD) {
        return None;
    }
    if path == "/metrics" {
        return Some(Role::Admin);
    }
    if path == "/groups" || path.starts_with("/groups/") {
        return Some(group_role(method, path));
    }
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        Some(Role::ReadOnly)
    } else {
        Some(Role::ReadWrite)
    }
}

/// Consumer groups: consuming is reading, so looking at groups and everything a member
/// does (join, heartbeat, leave, fetch, stream, settle) needs a read-only token; creating,
/// changing and deleting groups, and replaying or deleting parked messages, need admin.
fn group_role(method: &Method, path: &str) -> Role {
    let read = method == Method::GET || method == Method::HEAD || method == Method::OPTIONS;
    // "/groups/{group}/members…" is a member's business.
    let member = path.split('/').nth(3) == Some("members");
    if read || member {
        Role::ReadOnly
    } else {
        Role::Admin
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_cover_routes() {
        let t = Tokens::none()
            .with("r".repeat(16), Role::ReadOnly)
            .with("w".repeat(16), Role::ReadWrite)
            .with("a".repeat(16), Role::Admin);
        let r = "r".repeat(16);
        let w = "w".repeat(16);
        let a = "a".repeat(16);
        assert!(t.authorize(&Method::GET, "/health", None).is_ok());
        assert_eq!(
            t.authorize(&Method::GET, "/all", None).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert!(t.authorize(&Method::GET, "/all", Some(&r)).is_ok());
        assert_eq!(
            t.authorize(&Method::POST, "/streams/a", Some(&r))
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        assert!(t.authorize(&Method::POST, "/streams/a", Some(&w)).is_ok());
        assert!(t.authorize(&Method::GET, "/metrics", Some(&w)).is_err());
        assert!(t.authorize(&Method::GET, "/metrics", Some(&a)).is_ok());
        assert!(Tokens::none().authorize(&Method::POST, "/x", None).is_ok());
    }

    #[test]
    fn consuming_is_reading_and_managing_groups_is_admin() {
        let cases = [
            (Method::GET, "/groups", Role::ReadOnly),
            (Method::POST, "/groups", Role::Admin),
            (Method::GET, "/groups/g", Role::ReadOnly),
            (Method::PUT, "/groups/g", Role::Admin),
            (Method::DELETE, "/groups/g", Role::Admin),
            (Method::POST, "/groups/g/members", Role::ReadOnly),
            (
                Method::POST,
                "/groups/g/members/m/heartbeat",
                Role::ReadOnly,
            ),
            (Method::DELETE, "/groups/g/members/m", Role::ReadOnly),
            (Method::GET, "/groups/g/members/m/messages", Role::ReadOnly),
            (Method::GET, "/groups/g/members/m/stream", Role::ReadOnly),
            (Method::POST, "/groups/g/members/m/settle", Role::ReadOnly),
            (
                Method::POST,
                "/groups/g/members/m/messages/1/ack",
                Role::ReadOnly,
            ),
            (Method::GET, "/groups/g/parked", Role::ReadOnly),
            (Method::POST, "/groups/g/parked/replay", Role::Admin),
            (Method::DELETE, "/groups/g/parked", Role::Admin),
            (Method::POST, "/groups/g/parked/1/replay", Role::Admin),
            (Method::DELETE, "/groups/g/parked/1", Role::Admin),
            // A group called "members" is managed like any other.
            (Method::DELETE, "/groups/members", Role::Admin),
            (Method::POST, "/groupsx", Role::ReadWrite),
        ];
        for (method, path, role) in cases {
            assert_eq!(required_role(&method, path), Some(role), "{method} {path}");
        }
    }

    #[test]
    fn token_file_errors_name_the_line() {
        assert_eq!(
            Tokens::parse_file("admin\n").unwrap_err(),
            TokenFileError::Malformed { line: 1 }
        );
        assert!(matches!(
            Tokens::parse_file("\nboss 0123456789abcdef\n").unwrap_err(),
            TokenFileError::Role { line: 2, .. }
        ));
        assert_eq!(
            Tokens::parse_file("admin short\n").unwrap_err(),
            TokenFileError::TooShort { line: 1 }
        );
    }
}
