//! Header rewriting at the proxy boundary. Hop-by-hop headers (RFC 9110 §7.6.1: the
//! `Connection` header and every header it names, plus `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) describe one
//! connection and are removed in both directions; an upgrade request keeps
//! `Connection: upgrade` + `Upgrade` so the app can switch protocols. Requests gain
//! `X-Forwarded-For` (appended), `X-Forwarded-Proto` and `X-Forwarded-Host` (kept as
//! they came when the client is a trusted proxy); `Host` is preserved. The common case allocates nothing: the names are static and the client
//! address is formatted once per connection.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const HTTP: HeaderValue = HeaderValue::from_static("http");
const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// The fixed hop-by-hop headers (besides those named by `Connection`).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Comma-separated tokens of every value of `name`, trimmed.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The `Upgrade` value of an upgrade request (`Connection: upgrade` and `Upgrade: x`).
pub(crate) fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    tokens(headers, &header::CONNECTION)
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
        .then(|| upgrade.clone())
}

/// True for the fixed hop-by-hop names.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes hop-by-hop headers, including the ones `Connection` names. One pass over the
/// names finds them (most messages carry none, or only `Connection`/`Keep-Alive`), so
/// the common case costs no lookups.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = tokens(headers, &header::CONNECTION)
            .filter(|t| {
                !(t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"keep-alive")
                    || t.eq_ignore_ascii_case(b"upgrade"))
            })
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in present {
        headers.remove(name);
    }
}

/// Rewrites a client request for the upstream: origin-form URI, HTTP/1.1, hop-by-hop
/// headers stripped (upgrade kept when `upgrade` is given), forwarding headers set.
/// `Expect` is dropped too: the proxy answers `100-continue` itself when it starts
/// reading the body.
pub(crate) fn prepare_request(
    parts: &mut http::request::Parts,
    client_ip: &HeaderValue,
    upgrade: Option<HeaderValue>,
    trusted: bool,
) {
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, UPGRADE_TOKEN);
        headers.insert(header::UPGRADE, proto);
    }

    // Absolute-form targets (`GET http://host/path`) become origin-form; their
    // authority stands in for a missing Host.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let authority = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let (false, Some(host)) = (headers.contains_key(header::HOST), authority) {
            headers.insert(header::HOST, host);
        }
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        parts.uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;

    append_forwarded_for(headers, client_ip);
    // A trusted proxy in front of windlass knows the original scheme and host.
    if !(trusted && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HTTP);
    }
    if !(trusted && headers.contains_key(X_FORWARDED_HOST)) {
        match headers.get(header::HOST).cloned() {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host);
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    if !headers.contains_key(X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR, client_ip.clone());
        return;
    }
    let mut joined: Vec<u8> = Vec::with_capacity(64);
    for value in headers.get_all(X_FORWARDED_FOR) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(client_ip.as_bytes());
    let value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone());
    headers.insert(X_FORWARDED_FOR, value);
}

/// Rewrites an upstream response for the client: hop-by-hop headers stripped, except
/// the `Connection`/`Upgrade` pair of a `101 Switching Protocols`.
pub(crate) fn prepare_response(headers: &mut HeaderMap, switching: bool) {
    let upgrade = if switching {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(headers);
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, UPGRADE_TOKEN);
        headers.insert(header::UPGRADE, proto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], uri: &str) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("valid test request").into_parts().0
    }

    fn ip() -> HeaderValue {
        HeaderValue::from_static("192.0.2.7")
    }

    #[test]
    fn only_a_trusted_proxy_keeps_its_forwarded_proto_and_host() {
        let headers = [
            ("host", "internal:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "example.com"),
        ];
        let mut p = request(&headers, "/");
        prepare_request(&mut p, &ip(), None, true);
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        assert_eq!(p.headers["x-forwarded-host"], "example.com");
        let mut p = request(&headers, "/");
        prepare_request(&mut p, &ip(), None, false);
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers["x-forwarded-host"], "internal:8080");
        let mut p = request(&[("host", "h")], "/");
        prepare_request(&mut p, &ip(), None, true);
        assert_eq!(p.headers["x-forwarded-proto"], "http", "set when absent");
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut p = request(
            &[
                ("host", "example.test"),
                ("connection", "keep-alive, X-Secret , close"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("trailer", "x-t"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("x-kept", "yes"),
            ],
            "/a?b=c",
        );
        prepare_request(&mut p, &ip(), None, false);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!p.headers.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(p.headers["x-kept"], "yes");
        assert_eq!(p.headers["host"], "example.test");
        assert_eq!(p.headers["x-forwarded-host"], "example.test");
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(p.uri, "/a?b=c");
        assert_eq!(p.version, Version::HTTP_11);
    }

    #[test]
    fn appends_to_an_existing_forwarded_for() {
        let mut p = request(
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2"),
            ],
            "/",
        );
        prepare_request(&mut p, &ip(), None, false);
        assert_eq!(
            p.headers["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 192.0.2.7"
        );
        assert!(!p.headers.contains_key("x-forwarded-host"));
    }

    #[test]
    fn upgrade_requests_keep_the_upgrade_pair() {
        let mut p = request(
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("host", "h"),
            ],
            "/ws",
        );
        let proto = upgrade_protocol(&p.headers);
        assert_eq!(
            proto.as_ref().map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        prepare_request(&mut p, &ip(), proto, false);
        assert_eq!(p.headers["connection"], "upgrade");
        assert_eq!(p.headers["upgrade"], "websocket");
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let p = request(&[("upgrade", "websocket")], "/");
        assert!(upgrade_protocol(&p.headers).is_none());
        let p = request(&[("connection", "upgrade")], "/");
        assert!(upgrade_protocol(&p.headers).is_none());
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let mut p = request(&[], "http://example.test:8080/x?y");
        prepare_request(&mut p, &ip(), None, false);
        assert_eq!(p.uri, "/x?y");
        assert_eq!(p.headers["host"], "example.test:8080");
    }

    #[test]
    fn odd_connection_tokens_do_not_panic() {
        let mut p = request(&[("connection", ",, ,\t, bad header name ,")], "/");
        prepare_request(&mut p, &ip(), None, false);
        assert!(!p.headers.contains_key("connection"));
    }

    #[test]
    fn response_keeps_upgrade_only_when_switching() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        let mut switching = h.clone();
        prepare_response(&mut switching, true);
        assert_eq!(switching["upgrade"], "websocket");
        assert_eq!(switching["connection"], "upgrade");
        assert!(!switching.contains_key("keep-alive"));
        prepare_response(&mut h, false);
        assert!(h.is_empty());
    }
}
