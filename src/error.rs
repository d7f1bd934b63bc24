//! Every way a request can fail, and the one place that turns it into a
//! response: status, `WWW-Authenticate` (RFC 6750 §3), JSON body.

use http::header::{ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// One variant per row of SPEC §4's error table.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    #[error("no route matches")]
    NoRoute,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no bearer token")]
    MissingToken,
    #[error("malformed Authorization header")]
    MalformedAuthorization,
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    #[error("insufficient scope: {0}")]
    InsufficientScope(&'static str),
    /// The client did not send its request body within `request_timeout`.
    #[error("request body timed out")]
    RequestTimeout,
    #[error("upstream connection failed")]
    UpstreamConnect,
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// `/auth/login`: unknown user or wrong password (one answer for both).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// `/auth/refresh` (and a logout's refresh token): invalid, expired, reused.
    #[error("invalid grant: {0}")]
    InvalidGrant(&'static str),
    /// A login rate limit; the seconds go into `Retry-After`.
    #[error("rate limited")]
    RateLimited(u64),
    /// A route's `rate_limit`; the seconds go into `Retry-After`.
    #[error("route rate limit")]
    RouteRateLimited(u64),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("unsupported content type")]
    UnsupportedMediaType,
    /// The methods the endpoint allows go into `Allow`.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// The state store or `verify_url` could not answer: nothing was done.
    #[error("temporarily unavailable: {0}")]
    Unavailable(&'static str),
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A CORS preflight from an origin `[cors]` does not allow.
    #[error("origin not allowed")]
    OriginNotAllowed,
}

const REALM: &str = "Bearer realm=\"gatehouse\"";

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::MissingToken => StatusCode::UNAUTHORIZED,
            GatewayError::MalformedAuthorization => StatusCode::BAD_REQUEST,
            GatewayError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            GatewayError::InsufficientScope(_) => StatusCode::FORBIDDEN,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UpstreamConnect => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::InvalidCredentials | GatewayError::InvalidGrant(_) => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::RateLimited(_) | GatewayError::RouteRateLimited(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::OriginNotAllowed => StatusCode::FORBIDDEN,
        }
    }

    /// `(error, error_description)` of the JSON body.
    fn body(&self) -> (&'static str, &'static str) {
        match self {
            GatewayError::NoRoute => ("not_found", "no route matches this request"),
            GatewayError::BadRequest(why) => ("invalid_request", why),
            GatewayError::MissingToken => ("invalid_token", "a bearer token is required"),
            GatewayError::MalformedAuthorization => (
                "invalid_request",
                "the Authorization header is not a valid bearer token",
            ),
            GatewayError::InvalidToken(why) => ("invalid_token", why),
            GatewayError::InsufficientScope(why) => ("insufficient_scope", why),
            GatewayError::RequestTimeout => (
                "request_timeout",
                "the request body did not arrive within request_timeout",
            ),
            GatewayError::UpstreamConnect => ("bad_gateway", "the upstream could not be reached"),
            GatewayError::UpstreamTimeout => {
                ("gateway_timeout", "the upstream did not answer in time")
            }
            GatewayError::InvalidCredentials => (
                "invalid_credentials",
                "the username or password is not correct",
            ),
            GatewayError::InvalidGrant(why) => ("invalid_grant", why),
            GatewayError::RateLimited(_) => (
                "rate_limited",
                "too many login attempts; retry after the time in Retry-After",
            ),
            GatewayError::RouteRateLimited(_) => (
                "rate_limited",
                "too many requests on this route; retry after the time in Retry-After",
            ),
            GatewayError::PayloadTooLarge => ("invalid_request", "the request body is too large"),
            GatewayError::UnsupportedMediaType => (
                "invalid_request",
                "send application/json or application/x-www-form-urlencoded",
            ),
            GatewayError::MethodNotAllowed(_) => (
                "method_not_allowed",
                "this endpoint does not take that method",
            ),
            GatewayError::Unavailable(why) => ("temporarily_unavailable", why),
            GatewayError::Internal(why) => ("server_error", why),
            GatewayError::OriginNotAllowed => (
                "origin_not_allowed",
                "this origin is not in [cors] allow_origins",
            ),
        }
    }

    /// RFC 6750 §3: no `error` attribute when no token was presented.
    fn www_authenticate(&self) -> Option<String> {
        match self {
            GatewayError::MissingToken => Some(REALM.to_string()),
            GatewayError::MalformedAuthorization => {
                Some(format!("{REALM}, error=\"invalid_request\""))
            }
            GatewayError::InvalidToken(why) => Some(format!(
                "{REALM}, error=\"invalid_token\", error_description=\"{why}\""
            )),
            GatewayError::InsufficientScope(_) => {
                Some(format!("{REALM}, error=\"insufficient_scope\""))
            }
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let (error, description) = self.body();
        let mut rsp = json_response(
            self.status(),
            &serde_json::json!({ "error": error, "error_description": description }),
        );
        if let Some(v) = self.www_authenticate() {
            let v = HeaderValue::from_str(&v).expect("descriptions are static ASCII");
            rsp.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
        match self {
            GatewayError::RateLimited(secs) | GatewayError::RouteRateLimited(secs) => {
                rsp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            // The body was not read (or not to the end): the connection
            // cannot carry another request, and the client should know
            // before it tries (nginx does the same).
            GatewayError::PayloadTooLarge => {
                rsp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            GatewayError::MethodNotAllowed(allow) => {
                rsp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        rsp
    }
}

/// A JSON response that no cache keeps.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut rsp = Response::new(body::full(value.to_string()));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn www_authenticate_follows_rfc_6750() {
        let r = GatewayError::MissingToken.into_response();
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"gatehouse\"");
        let r = GatewayError::InvalidToken("token expired").into_response();
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"token expired\""
        );
        assert!(
            GatewayError::UpstreamTimeout
                .into_response()
                .headers()
                .get(WWW_AUTHENTICATE)
                .is_none()
        );
    }
}
