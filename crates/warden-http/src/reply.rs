//! Answers the proxy gives itself, in each flavor's own words: a Kubernetes `Status`
//! object (what kubectl prints as `Error from server (Forbidden): ...`) or, for HTTP
//! services, a JSON error body.

use hyper::{Response, StatusCode, header};
use serde_json::json;

use crate::body::{Body, full};

/// Which kind of connection the answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Kubernetes,
    Http,
}

/// Why the proxy answers instead of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No token, or one the gateway does not accept.
    Unauthenticated,
    /// A rule, review or connection setting refused it, or no access.
    Forbidden,
    /// The request cannot be read the way the target would read it.
    BadRequest,
    /// No such connection on this listener.
    NotFound,
    /// A per-client limit.
    TooMany,
    /// The target cannot be reached, or answered something that cannot be relayed
    /// safely (unmaskable).
    BadGateway,
    /// The gateway cannot serve the session now (store, recording).
    Unavailable,
}

impl Refused {
    pub fn status(self) -> StatusCode {
        match self {
            Refused::Unauthenticated => StatusCode::UNAUTHORIZED,
            Refused::Forbidden => StatusCode::FORBIDDEN,
            Refused::BadRequest => StatusCode::BAD_REQUEST,
            Refused::NotFound => StatusCode::NOT_FOUND,
            Refused::TooMany => StatusCode::TOO_MANY_REQUESTS,
            Refused::BadGateway => StatusCode::BAD_GATEWAY,
            Refused::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` of a Kubernetes `Status`, and the `code` of an HTTP error body.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Unauthenticated => "Unauthorized",
            Refused::Forbidden => "Forbidden",
            Refused::BadRequest => "BadRequest",
            Refused::NotFound => "NotFound",
            Refused::TooMany => "TooManyRequests",
            Refused::BadGateway => "InternalError",
            Refused::Unavailable => "ServiceUnavailable",
        }
    }
}

/// The proxy's own answer: `message` says why (never a secret).
pub fn refusal(flavor: Flavor, why: Refused, message: &str) -> Response<Body> {
    let code = why.status();
    let body = match flavor {
        Flavor::Kubernetes => json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": why.reason(),
            "code": code.as_u16(),
        }),
        Flavor::Http => json!({"error": {"code": why.reason(), "message": message}}),
    };
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if why == Refused::Unauthenticated {
        let challenge = match flavor {
            Flavor::Kubernetes => "Bearer realm=\"warden\"",
            // A browser asks for credentials: any user name, the token as password.
            Flavor::Http => {
                "Basic realm=\"warden: your token as the password\", Bearer realm=\"warden\""
            }
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(challenge),
        );
    }
    response
}
