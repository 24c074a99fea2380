//! What a Kubernetes API request asks for, read the way the API server reads it
//! (its `RequestInfoFactory`): the verb it authorizes, the API group, resource,
//! subresource, namespace and name. Rules are matched against this, so a request
//! must mean the same thing to Warden and to the server.

use warden_core::KubeRequest;

use crate::path::{self, RequestPath};

/// Subresources that open a stream to a process or port (`kubectl exec`, `attach`,
/// `port-forward`). The API server authorizes them as `create` whatever the method
/// (a WebSocket upgrade is a GET), and so does Warden.
const CONNECT_SUBRESOURCES: [&str; 3] = ["exec", "attach", "portforward"];

/// Reads `method` and the request target (path and query, as the client sent them).
pub fn read(method: &str, target: &RequestPath) -> Result<KubeRequest, path::PathError> {
    let parts = &target.segments;
    let mut request = KubeRequest {
        method: method.to_string(),
        path: target.raw_path.clone(),
        verb: method.to_ascii_lowercase(),
        ..KubeRequest::default()
    };
    // `/api/v1/...` (the core group) or `/apis/GROUP/VERSION/...`; anything shorter
    // (`/api`, `/apis/apps/v1`) or elsewhere (`/version`) names no resource.
    let rest = match parts.first().map(String::as_str) {
        Some("api") if parts.len() >= 3 => &parts[2..],
        Some("apis") if parts.len() >= 4 => {
            request.group = parts[1].clone();
            &parts[3..]
        }
        _ => return Ok(request),
    };
    let mut rest: &[String] = rest;
    let special = rest.first().map(String::as_str);
    let via_special_verb = matches!(special, Some("watch" | "proxy"));
    if via_special_verb {
        if rest.len() < 2 {
            return Err(path::PathError(format!(
                "`{}` needs a resource after it",
                rest[0]
            )));
        }
        request.verb = rest[0].clone();
        rest = &rest[1..];
    } else {
        request.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .to_string();
    }
    if rest.first().map(String::as_str) == Some("namespaces") && rest.len() > 1 {
        request.namespace = rest[1].clone();
        // `namespaces/NS/status` and `/finalize` are the namespace's own subresources.
        if rest.len() > 2 && !matches!(rest[2].as_str(), "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    if rest.len() >= 3 && request.verb != "proxy" {
        request.subresource = rest[2].clone();
    }
    if rest.len() >= 2 {
        request.name = rest[1].clone();
    }
    if let Some(resource) = rest.first() {
        request.resource = resource.clone();
    }
    if request.name.is_empty() && request.verb == "get" {
        request.verb = if watching(target)? { "watch" } else { "list" }.to_string();
    }
    if request.name.is_empty() && request.verb == "delete" {
        request.verb = "deletecollection".to_string();
    }
    if CONNECT_SUBRESOURCES.contains(&request.subresource.as_str()) && request.resource == "pods" {
        request.verb = "create".to_string();
    }
    Ok(request)
}

/// Whether a collection GET is a watch, read as the API server reads it: the first
/// `watch` value is false only when it is `0` or `false` (any case); any other value,
/// empty included, is true.
fn watching(target: &RequestPath) -> Result<bool, path::PathError> {
    Ok(match target.query_first("watch") {
        None => false,
        Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
    })
}

/// The command of an exec request (`command=...` query values, in order).
pub fn exec_command(target: &RequestPath) -> Vec<String> {
    target.query_all("command")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, target: &str) -> KubeRequest {
        let path = RequestPath::parse(target).unwrap_or_else(|e| unreachable!("{e}"));
        read(method, &path).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn reads_requests_as_the_api_server_does() {
        let r = info("GET", "/api/v1/namespaces/prod/pods/web");
        assert_eq!(
            (
                r.verb.as_str(),
                r.resource.as_str(),
                r.namespace.as_str(),
                r.name.as_str()
            ),
            ("get", "pods", "prod", "web")
        );
        let r = info("GET", "/api/v1/namespaces/prod/pods?watch=1&limit=5");
        assert_eq!((r.verb.as_str(), r.name.as_str()), ("watch", ""));
        let r = info("GET", "/api/v1/pods");
        assert_eq!((r.verb.as_str(), r.namespace.as_str()), ("list", ""));
        let r = info("DELETE", "/apis/apps/v1/namespaces/prod/deployments");
        assert_eq!(
            (r.verb.as_str(), r.group.as_str(), r.resource.as_str()),
            ("deletecollection", "apps", "deployments")
        );
        let r = info("DELETE", "/api/v1/namespaces/prod");
        assert_eq!(
            (r.resource.as_str(), r.name.as_str(), r.namespace.as_str()),
            ("namespaces", "prod", "prod")
        );
        let r = info("PUT", "/api/v1/namespaces/prod/finalize");
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.subresource.as_str()),
            ("update", "namespaces", "finalize")
        );
        let r = info("GET", "/api/v1/watch/namespaces/prod/secrets");
        assert_eq!((r.verb.as_str(), r.resource.as_str()), ("watch", "secrets"));
        let r = info("GET", "/api/v1/namespaces/prod/pods/web/exec?command=sh");
        assert_eq!(
            (r.verb.as_str(), r.subresource.as_str()),
            ("create", "exec")
        );
        let r = info("GET", "/api/v1/namespaces/prod/pods/web/log?follow=true");
        assert_eq!((r.verb.as_str(), r.subresource.as_str()), ("get", "log"));
        let r = info("GET", "/api/v1/proxy/namespaces/prod/services/web/admin/x");
        assert_eq!(
            (
                r.verb.as_str(),
                r.resource.as_str(),
                r.name.as_str(),
                r.subresource.as_str()
            ),
            ("proxy", "services", "web", "")
        );
        let r = info("GET", "/version");
        assert_eq!((r.verb.as_str(), r.resource.as_str()), ("get", ""));
        let r = info("GET", "/apis/apps/v1");
        assert_eq!(r.resource, "");
    }

    #[test]
    fn watch_values_are_read_as_the_server_reads_them() {
        for (target, verb) in [
            ("/api/v1/pods?watch=f", "watch"),
            ("/api/v1/pods?watch=", "watch"),
            ("/api/v1/pods?watch=yes", "watch"),
            ("/api/v1/pods?watch=%74rue", "watch"),
            ("/api/v1/pods?watch=FALSE", "list"),
            ("/api/v1/pods?watch=0", "list"),
            ("/api/v1/pods?watch=false&watch=true", "list"),
            ("/api/v1/pods", "list"),
        ] {
            assert_eq!(info("GET", target).verb, verb, "{target}");
        }
    }

    #[test]
    fn exec_commands_keep_their_order() {
        let path = RequestPath::parse(
            "/api/v1/namespaces/a/pods/p/exec?command=sh&stdin=true&command=-c&command=rm%20-rf%20%2F",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(exec_command(&path), ["sh", "-c", "rm -rf /"]);
    }
}
