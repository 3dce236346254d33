//! Header rewriting at the proxy boundary. Hop-by-hop headers (RFC 9110 §7.6.1: the
//! `Connection` header and every header it names, plus `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) describe one
//! connection and are removed in both directions; an upgrade request keeps
//! `Connection: upgrade` + `Upgrade` so the app can switch protocols; `Host` is preserved.
//!
//! The forwarding rule ([`Forwarding`], the one both request paths apply): the headers
//! through which a proxy tells the app about the original client (`Forwarded` (RFC 7239),
//! every `X-Forwarded-*` header, `X-Real-IP`, and the client-address headers of CDNs and
//! other proxies: `Client-IP`, `True-Client-IP`, `CF-Connecting-IP`, `X-Client-IP`,
//! `X-Cluster-Client-IP`, `Fastly-Client-IP`, `X-Original-Forwarded-For`,
//! `X-Originating-IP`, `X-Remote-IP`, `X-Remote-Addr`; any case, and `_` counts as `-` since
//! CGI-style servers read `X_Forwarded_For` as `X-Forwarded-For`) are removed when the
//! client is not one of `proxy.trusted_proxies`, whatever it claims; windlass then writes
//! its own `X-Forwarded-For` (the client's address), `X-Forwarded-Proto: http`,
//! `X-Forwarded-Host` (the `Host`) and `X-Real-IP` (the client's address). A trusted
//! proxy's forwarding headers are kept as they came, `X-Forwarded-For` gets the proxy's
//! address appended, and the ones it did not send are written as for anyone else.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

use crate::proxy::policy;

const HTTP: HeaderValue = HeaderValue::from_static("http");
const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

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

/// True for the fixed hop-by-hop names ([`policy::HOP_BY_HOP`]).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    policy::is_hop_by_hop(name.as_str().as_bytes())
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
/// headers stripped (upgrade kept when `upgrade` is given), the forwarding rule applied.
/// Returns whether the client sent any forwarding header (kept or not).
/// `Expect` is dropped too: the proxy answers `100-continue` itself when it starts
/// reading the body.
pub(crate) fn prepare_request(
    parts: &mut http::request::Parts,
    client_ip: &HeaderValue,
    upgrade: Option<HeaderValue>,
    trusted: bool,
) -> bool {
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

    forward(headers, client_ip, trusted)
}

/// The forwarding headers a request carries, under the one rule (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    For,
    Proto,
    Host,
    RealIp,
    /// `Forwarded` and every other `X-Forwarded-*`.
    Other,
}

/// The other headers through which CDNs and proxies name the client, and which
/// frameworks read (Rails' `RemoteIp`, Django and PHP helpers, Spring): lowercase.
const CLIENT_IP: [&[u8]; 10] = [
    b"client-ip",
    b"true-client-ip",
    b"cf-connecting-ip",
    b"x-client-ip",
    b"x-cluster-client-ip",
    b"fastly-client-ip",
    b"x-original-forwarded-for",
    b"x-originating-ip",
    b"x-remote-ip",
    b"x-remote-addr",
];

/// Which forwarding header `name` is, if it is one: `Forwarded`, `X-Real-IP`, every
/// `X-Forwarded-*` and the client-address headers of [`CLIENT_IP`], in any case, `_`
/// counting as `-`.
fn kind(name: &[u8]) -> Option<Kind> {
    let is = |want: &[u8], got: &[u8]| {
        want.len() == got.len()
            && want.iter().zip(got).all(|(w, g)| {
                let g = if *g == b'_' {
                    b'-'
                } else {
                    g.to_ascii_lowercase()
                };
                *w == g
            })
    };
    const PREFIX: &[u8] = b"x-forwarded-";
    if name.len() > PREFIX.len() && is(PREFIX, &name[..PREFIX.len()]) {
        let rest = &name[PREFIX.len()..];
        return Some(if is(b"for", rest) {
            Kind::For
        } else if is(b"proto", rest) {
            Kind::Proto
        } else if is(b"host", rest) {
            Kind::Host
        } else {
            Kind::Other
        });
    }
    if is(b"forwarded", name)
        || is(b"x-forwarded", name)
        || CLIENT_IP.iter().any(|want| is(want, name))
    {
        Some(Kind::Other)
    } else if is(b"x-real-ip", name) {
        Some(Kind::RealIp)
    } else {
        None
    }
}

/// The forwarding rule applied to one request, header by header ([`pass`](Self::pass)),
/// then windlass's own headers ([`finish`](Self::finish)). Both request paths use it:
/// the plain-request path on raw bytes, the hyper path on a `HeaderMap`.
pub(crate) struct Forwarding<'a> {
    trusted: bool,
    /// A trusted proxy's `X-Forwarded-For` values, in order.
    chain: Vec<&'a [u8]>,
    has_proto: bool,
    has_host: bool,
    has_real_ip: bool,
    /// The client sent any forwarding header (kept or not).
    seen: bool,
}

impl<'a> Forwarding<'a> {
    pub(crate) fn new(trusted: bool) -> Forwarding<'a> {
        Forwarding {
            trusted,
            chain: Vec::new(),
            has_proto: false,
            has_host: false,
            has_real_ip: false,
            seen: false,
        }
    }

    /// Takes one client header: true if it goes to the app as it is, false if it is
    /// removed (a forwarding header from an untrusted client, or a trusted proxy's
    /// `X-Forwarded-For`, which [`finish`](Self::finish) writes back extended).
    pub(crate) fn pass(&mut self, name: &[u8], value: &'a [u8]) -> bool {
        let Some(kind) = kind(name) else {
            return true;
        };
        self.seen = true;
        if !self.trusted {
            return false;
        }
        match kind {
            Kind::For => {
                let value = value.trim_ascii();
                if !value.is_empty() {
                    self.chain.push(value);
                }
                return false;
            }
            Kind::Proto => self.has_proto = true,
            Kind::Host => self.has_host = true,
            Kind::RealIp => self.has_real_ip = true,
            Kind::Other => {}
        }
        true
    }

    /// Whether the client sent any forwarding header, kept or not (a request that came
    /// through another proxy).
    pub(crate) fn seen(&self) -> bool {
        self.seen
    }

    /// windlass's own forwarding headers, each as a name (lowercase) and the parts of its
    /// value: `X-Forwarded-For` (a trusted proxy's chain, then the client's address),
    /// and `X-Forwarded-Proto`, `X-Forwarded-Host` (when there is a `host`) and
    /// `X-Real-IP` unless a trusted proxy sent them.
    pub(crate) fn finish(
        &self,
        client_ip: &[u8],
        host: Option<&[u8]>,
        mut emit: impl FnMut(&'static str, &[&[u8]]),
    ) {
        if self.chain.is_empty() {
            emit("x-forwarded-for", &[client_ip]);
        } else {
            let mut parts = Vec::with_capacity(self.chain.len() * 2 + 1);
            for v in &self.chain {
                parts.push(*v);
                parts.push(b", ".as_slice());
            }
            parts.push(client_ip);
            emit("x-forwarded-for", &parts);
        }
        if !self.has_proto {
            emit("x-forwarded-proto", &[b"http"]);
        }
        if let (false, Some(host)) = (self.has_host, host) {
            emit("x-forwarded-host", &[host]);
        }
        if !self.has_real_ip {
            emit("x-real-ip", &[client_ip]);
        }
    }
}

/// Applies the forwarding rule to a `HeaderMap`; returns whether the client sent any
/// forwarding header.
fn forward(headers: &mut HeaderMap, client_ip: &HeaderValue, trusted: bool) -> bool {
    let mut fwd = Forwarding::new(trusted);
    let mut removed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if !fwd.pass(name.as_str().as_bytes(), value.as_bytes()) && removed.last() != Some(name) {
            removed.push(name.clone());
        }
    }
    let mut own: [Option<(HeaderName, HeaderValue)>; 4] = Default::default();
    let mut n = 0;
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    fwd.finish(client_ip.as_bytes(), host, |name, parts| {
        let value = match parts {
            [ip] if *ip == client_ip.as_bytes() => Some(client_ip.clone()),
            [b"http"] => Some(HTTP),
            [one] => HeaderValue::from_bytes(one).ok(),
            _ => HeaderValue::from_bytes(&parts.concat()).ok(),
        };
        if let (Some(value), Some(slot)) = (value, own.get_mut(n)) {
            *slot = Some((HeaderName::from_static(name), value));
            n += 1;
        }
    });
    let seen = fwd.seen();
    for name in removed {
        headers.remove(name);
    }
    for (name, value) in own.into_iter().flatten() {
        headers.insert(name, value);
    }
    seen
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
        assert!(prepare_request(&mut p, &ip(), None, true));
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
    fn only_a_trusted_proxys_forwarded_for_is_appended_to() {
        let headers = [
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ];
        let mut p = request(&headers, "/");
        assert!(prepare_request(&mut p, &ip(), None, true));
        assert_eq!(
            p.headers["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 192.0.2.7"
        );
        assert!(!p.headers.contains_key("x-forwarded-host"));
        let mut p = request(&headers, "/");
        assert!(prepare_request(&mut p, &ip(), None, false));
        assert_eq!(p.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(p.headers.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn forwarding_names_in_any_spelling() {
        for name in [
            "Forwarded",
            "X-Forwarded-For",
            "x_forwarded_for",
            "X-FORWARDED-PORT",
            "X-Forwarded-Ssl",
            "X-Forwarded-Scheme",
            "X-Forwarded-Prefix",
            "X-Forwarded-Server",
            "X-Forwarded-Anything",
            "X-Forwarded",
            "X-Real-IP",
            "x_real_ip",
            "Client-IP",
            "True-Client-IP",
            "CF-Connecting-IP",
            "X-Client-IP",
            "X-Cluster-Client-IP",
            "Fastly-Client-IP",
            "fastly_client_ip",
            "X-Original-Forwarded-For",
            "X-Originating-IP",
            "X-Remote-IP",
            "X-Remote-Addr",
        ] {
            assert!(kind(name.as_bytes()).is_some(), "{name}");
        }
        for name in [
            "X-Forwarded-",
            "Forwarded-For",
            "X-Real-IPs",
            "Client-IPs",
            "X-Client",
            "Host",
            "X-Request-Id",
            "",
        ] {
            assert!(kind(name.as_bytes()).is_none(), "{name}");
        }
    }

    /// Generated requests with forwarding headers in every spelling, duplicated, with odd
    /// whitespace: from an untrusted client none survives, and windlass's own are there
    /// once each; a trusted client's are kept. On both paths (raw bytes and `HeaderMap`).
    #[test]
    fn no_forwarding_header_from_an_untrusted_client_survives() {
        // xorshift64*: deterministic, so a failure reproduces.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        const NAMES: [&str; 16] = [
            "forwarded",
            "true-client-ip",
            "cf-connecting-ip",
            "x-cluster-client-ip",
            "client-ip",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-ssl",
            "x-forwarded-scheme",
            "x-forwarded-prefix",
            "x-forwarded-server",
            "x-forwarded-x",
            "x-real-ip",
            "x-custom",
        ];
        const VALUES: [&str; 5] = [
            "1.2.3.4",
            " https ",
            "for=1.2.3.4;proto=https",
            "",
            "\t10.0.0.1 ,\t10.0.0.2",
        ];
        for _ in 0..3_000 {
            let trusted = next() % 4 == 0;
            let mut sent: Vec<(String, String)> = Vec::new();
            for _ in 0..next() % 10 {
                let name: String = NAMES[(next() % NAMES.len() as u64) as usize]
                    .chars()
                    .map(|c| match next() % 4 {
                        0 => c.to_ascii_uppercase(),
                        1 if c == '-' => '_',
                        _ => c,
                    })
                    .collect();
                let value = VALUES[(next() % VALUES.len() as u64) as usize];
                sent.push((name, value.to_owned()));
            }
            // The raw path.
            let mut raw = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
            for (n, v) in &sent {
                raw.push_str(&format!("{n}:{v}\r\n"));
            }
            raw.push_str("\r\n");
            let mut out = Vec::new();
            let parsed =
                crate::proxy::plain::parse_for_test(raw.as_bytes(), "192.0.2.7", trusted, &mut out);
            assert!(parsed, "{raw:?}");
            let out = String::from_utf8(out).expect("utf8");
            let lines: Vec<(String, String)> = out
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
                .collect();
            check(&sent, &lines, trusted, &raw);
            // The hyper path.
            let mut b = http::Request::builder().uri("/").header("host", "h");
            for (n, v) in &sent {
                b = b.header(n.as_str(), v.trim());
            }
            let mut p = b.body(()).expect("request").into_parts().0;
            prepare_request(&mut p, &ip(), None, trusted);
            let lines: Vec<(String, String)> = p
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().expect("ascii").to_owned()))
                .collect();
            check(&sent, &lines, trusted, &raw);
        }

        fn check(sent: &[(String, String)], got: &[(String, String)], trusted: bool, raw: &str) {
            let count = |name: &str| {
                got.iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .count()
            };
            let value = |name: &str| {
                got.iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(count("x-forwarded-for"), 1, "{raw:?} -> {got:?}");
            assert!(
                value("x-forwarded-for").is_some_and(|v| v.ends_with("192.0.2.7")),
                "{raw:?} -> {got:?}"
            );
            if !trusted {
                for (n, v) in got {
                    if kind(n.as_bytes()).is_some() {
                        let own = match n.as_str() {
                            "x-forwarded-for" | "x-real-ip" => v == "192.0.2.7",
                            "x-forwarded-proto" => v == "http",
                            "x-forwarded-host" => v == "h",
                            _ => false,
                        };
                        assert!(own, "{n}: {v} survived from {raw:?} -> {got:?}");
                    }
                }
                for name in ["x-forwarded-proto", "x-forwarded-host", "x-real-ip"] {
                    assert_eq!(count(name), 1, "{name}: {raw:?} -> {got:?}");
                }
            } else {
                // Every forwarding header sent (but X-Forwarded-For, rewritten) is kept.
                for (n, v) in sent {
                    if kind(n.as_bytes()).is_some_and(|k| k != Kind::For) {
                        assert!(
                            got.iter()
                                .any(|(gn, gv)| gn.eq_ignore_ascii_case(n) && gv == v.trim()),
                            "{n}: {v} lost from {raw:?} -> {got:?}"
                        );
                    }
                }
            }
        }
    }

    /// Generated requests for the hyper path: whatever `Connection` names, no hop-by-hop
    /// header and no header it names reaches the app, and every other header does.
    #[test]
    fn generated_hop_by_hop_headers_never_reach_the_app() {
        let mut state = 0xBF58_476D_1CE4_E5B9u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        const NAMES: [&str; 10] = [
            "keep-alive",
            "te",
            "trailer",
            "proxy-connection",
            "x-a",
            "x-b",
            "accept",
            "cookie",
            "transfer-encoding",
            "x-c",
        ];
        for _ in 0..3_000 {
            let mut headers: Vec<(String, String)> = Vec::new();
            let mut named = Vec::new();
            for _ in 0..next() % 4 {
                let mut tokens = Vec::new();
                for _ in 0..next() % 4 {
                    let t = NAMES[(next() % NAMES.len() as u64) as usize];
                    named.push(t);
                    tokens.push(if next() % 2 == 0 {
                        t.to_uppercase()
                    } else {
                        t.to_owned()
                    });
                }
                if next() % 3 == 0 {
                    tokens.push("close".into());
                }
                headers.push((
                    "connection".into(),
                    tokens.join(if next() % 2 == 0 { "," } else { " ,\t" }),
                ));
            }
            for _ in 0..next() % 6 {
                headers.push((
                    NAMES[(next() % NAMES.len() as u64) as usize].into(),
                    "v".into(),
                ));
            }
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let mut p = request(&pairs, "/");
            prepare_request(&mut p, &ip(), None, next() % 2 == 0);
            for name in p.headers.keys() {
                let n = name.as_str();
                assert!(!is_hop_by_hop(name), "{n} survived {headers:?}");
                assert!(
                    !named.contains(&n),
                    "{n} named by Connection survived {headers:?}"
                );
            }
            for (n, _) in &headers {
                let hop = n == "connection"
                    || policy::HOP_BY_HOP.contains(&n.as_str())
                    || named.contains(&n.as_str());
                assert_eq!(
                    p.headers.contains_key(n.as_str()),
                    !hop,
                    "{n} in {headers:?}"
                );
            }
        }
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
