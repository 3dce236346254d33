//! The plain request codec: parses a client's request head in place (httparse, no
//! allocation) and, when the request is one for the plain path (a bodiless `GET`, `HEAD`,
//! `OPTIONS` or `DELETE` on HTTP/1.1 with an origin-form target and one `Host`), writes
//! the head to send upstream: hop-by-hop headers dropped ([`policy::is_hop_by_hop`]), the
//! forwarding rule applied ([`Forwarding`]). Anything else is [`Parsed::Unsupported`] and
//! goes to the hyper path with the bytes already read.

use crate::proxy::headers::Forwarding;
use crate::proxy::plain::MAX_HEADERS;
use crate::proxy::policy;

/// What the request needs from here on, once its head is parsed.
pub(super) struct RequestHead {
    /// Length of the head in the client buffer.
    pub(super) len: usize,
    pub(super) head_only: bool,
    /// The client asked to close after this response.
    pub(super) close: bool,
    /// The client sent forwarding headers (it is, or claims to be, a proxy).
    pub(super) forwarded: bool,
    /// Where the client's `X-Request-Id` value is in the head sent upstream.
    pub(super) request_id: Option<std::ops::Range<usize>>,
}

pub(super) enum Parsed {
    Complete(RequestHead),
    Partial,
    Unsupported,
}

/// Parses a request head at the start of `buf`; when the request is one for this path,
/// writes the head to send upstream into `out`, with the forwarding rule applied
/// ([`Forwarding`]; `trusted`: the client is one of the proxies in front of windlass).
pub(super) fn parse_request(
    buf: &[u8],
    client_ip: &str,
    trusted: bool,
    out: &mut Vec<u8>,
) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Unsupported,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Unsupported;
    };
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE") || !path.starts_with('/') {
        return Parsed::Unsupported;
    }
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host: Option<&[u8]> = None;
    let mut close = false;
    let mut request_id = None;
    let mut fwd = Forwarding::new(trusted);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value.trim_ascii();
        let n = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        if !fwd.pass(name, h.value) {
            continue;
        } else if n("content-length") {
            if value != b"0" {
                return Parsed::Unsupported;
            }
        } else if n("transfer-encoding") || n("upgrade") || n("expect") {
            return Parsed::Unsupported;
        } else if n("connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !(token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive")) {
                    // It names headers to strip, or asks for an upgrade.
                    return Parsed::Unsupported;
                }
            }
            continue;
        } else if policy::is_hop_by_hop(name) {
            continue;
        } else if n("host") {
            if host.is_some() {
                return Parsed::Unsupported;
            }
            host = Some(value);
        } else if n("x-request-id") && request_id.is_none() {
            let at = out.len() + name.len() + 2;
            request_id = Some(at..at + h.value.len());
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let Some(host) = host else {
        return Parsed::Unsupported;
    };
    fwd.finish(client_ip.as_bytes(), Some(host), |name, parts| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        for part in parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\r\n");
    });
    out.extend_from_slice(b"\r\n");
    Parsed::Complete(RequestHead {
        len,
        head_only: method == "HEAD",
        close,
        forwarded: fwd.seen(),
        request_id,
    })
}

/// Whether `buf` is a complete head for this path, with the rewritten head in `out`
/// (for the forwarding-rule property test in `headers`).
#[cfg(test)]
pub(crate) fn parse_for_test(
    buf: &[u8],
    client_ip: &str,
    trusted: bool,
    out: &mut Vec<u8>,
) -> bool {
    matches!(
        parse_request(buf, client_ip, trusted, out),
        Parsed::Complete(_)
    )
}

/// The method and target of a head sent upstream (for the log and the error policy).
pub(super) fn method_and_target(request: &[u8]) -> (&[u8], &[u8]) {
    let line = request.split(|&b| b == b'\r').next().unwrap_or(b"");
    let mut words = line.split(|&b| b == b' ');
    (words.next().unwrap_or(b""), words.next().unwrap_or(b""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> (Parsed, String) {
        let mut out = Vec::new();
        let p = parse_request(raw.as_bytes(), "192.0.2.7", false, &mut out);
        (p, String::from_utf8(out).expect("utf8"))
    }

    #[test]
    fn a_plain_get_is_rewritten_for_the_app() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\nGET /next";
        let (p, out) = parse(raw);
        let Parsed::Complete(head) = p else {
            panic!("complete")
        };
        assert_eq!(head.len, raw.len() - "GET /next".len());
        assert!(!head.close && !head.head_only);
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: example.test\r\nx-real-ip: 192.0.2.7\r\n\r\n"
        );
    }

    #[test]
    fn a_trusted_proxys_forwarded_for_values_are_joined_with_the_client_last() {
        let raw = "GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nHost: h\r\nx-forwarded-for: 10.0.0.2, 10.0.0.3\r\nConnection: close\r\nAccept: */*\r\n\r\n";
        let mut out = Vec::new();
        let p = parse_request(raw.as_bytes(), "192.0.2.7", true, &mut out);
        let out = String::from_utf8(out).expect("utf8");
        let Parsed::Complete(head) = p else {
            panic!("complete: {out}")
        };
        assert!(head.close && !head.head_only && head.forwarded);
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: h\r\nx-real-ip: 192.0.2.7\r\n\r\n"
        );
        let (p, _) = parse("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(matches!(
            p,
            Parsed::Complete(RequestHead {
                head_only: true,
                forwarded: false,
                ..
            })
        ));
    }

    #[test]
    fn a_trusted_proxy_keeps_its_forwarding_headers() {
        let raw = "GET / HTTP/1.1\r\nHost: internal\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com\r\nForwarded: for=203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\nX-Forwarded-Port: 443\r\nX-Request-Id: r-1\r\n\r\n";
        let mut out = Vec::new();
        let Parsed::Complete(head) = parse_request(raw.as_bytes(), "10.0.0.1", true, &mut out)
        else {
            panic!("complete")
        };
        let id = head.request_id.clone().expect("request id");
        assert_eq!(&out[id], b"r-1");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "GET / HTTP/1.1\r\nHost: internal\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com\r\nForwarded: for=203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\nX-Forwarded-Port: 443\r\nX-Request-Id: r-1\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
        let (_, out) = parse(raw);
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: internal\r\nX-Request-Id: r-1\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: internal\r\nx-real-ip: 192.0.2.7\r\n\r\n"
        );
    }
    #[test]
    fn everything_unusual_goes_to_the_hyper_path() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: x-secret\r\nx-secret: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GE\x01T / HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert!(matches!(parse(raw).0, Parsed::Unsupported), "{raw:?}");
        }
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: h\r\n").0,
            Parsed::Partial
        ));
    }
    /// The shared property-test stream as a closure (xorshift64*).
    fn prng(seed: u64) -> impl FnMut() -> u64 {
        let mut rng = crate::testrng::Rng(seed);
        move || rng.next()
    }

    /// Generated plain requests, cut anywhere: partial before their last byte, complete
    /// with their exact length at it, whatever follows (a pipelined request).
    #[test]
    fn generated_heads_are_partial_until_their_last_byte() {
        let mut next = prng(0x94D0_49BB_1331_11EB);
        const METHODS: [&str; 4] = ["GET", "HEAD", "OPTIONS", "DELETE"];
        const HEADERS: [&str; 8] = [
            "Accept: */*",
            "Connection: keep-alive",
            "Connection: close",
            "Content-Length: 0",
            "X-Forwarded-For: 10.0.0.1",
            "Forwarded: for=1.2.3.4",
            "X-Request-Id: abc",
            "Cookie: a=b; c=d",
        ];
        for _ in 0..2_000 {
            let method = METHODS[(next() % 4) as usize];
            let mut head = format!(
                "{method} /p{}?q={} HTTP/1.1\r\n",
                next() % 100,
                next() % 100
            );
            let host_at = next() % 4;
            for i in 0..next() % 6 {
                if i == host_at {
                    head.push_str("Host: example.test\r\n");
                }
                head.push_str(HEADERS[(next() % HEADERS.len() as u64) as usize]);
                head.push_str(if next() % 2 == 0 { "\r\n" } else { "\n" });
            }
            if !head.contains("Host:") {
                head.push_str("Host: h\r\n");
            }
            head.push_str("\r\n");
            let mut input = head.clone().into_bytes();
            input.extend_from_slice(b"GET /next HTTP/1.1\r\n");
            let trusted = next() % 2 == 0;
            let mut out = Vec::new();
            for cut in 1..head.len() {
                assert!(
                    matches!(
                        parse_request(&input[..cut], "192.0.2.7", trusted, &mut out),
                        Parsed::Partial
                    ),
                    "{head:?} cut at {cut}"
                );
            }
            for end in [head.len(), input.len()] {
                match parse_request(&input[..end], "192.0.2.7", trusted, &mut out) {
                    Parsed::Complete(h) => {
                        assert_eq!(h.len, head.len(), "{head:?}");
                        assert_eq!(h.head_only, method == "HEAD");
                        assert_eq!(h.close, head.contains("Connection: close"));
                        let sent = String::from_utf8(out.clone()).expect("utf8");
                        assert!(sent.starts_with(&format!("{method} /p")), "{sent}");
                        assert!(
                            sent.ends_with("x-real-ip: 192.0.2.7\r\n\r\n") || trusted,
                            "{sent}"
                        );
                    }
                    _ => panic!("{head:?} not complete"),
                }
            }
        }
    }
}
