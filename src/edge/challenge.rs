//! The ACME challenges being answered right now, shared by the ACME client (which puts
//! them) and the edge listeners (which answer them): HTTP-01 tokens on port 80 under
//! `/.well-known/acme-challenge/<token>`, and TLS-ALPN-01 certificates handed out on 443 to a
//! ClientHello that offers only the `acme-tls/1` protocol for that server name. One small
//! shared type, so the listener and the client never import each other.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A self-signed challenge certificate for TLS-ALPN-01 (RFC 8737), DER-encoded.
#[derive(Clone, Debug)]
pub(crate) struct AlpnCert {
    /// The certificate, DER.
    pub(crate) cert_der: Vec<u8>,
    /// Its private key, PKCS#8 DER.
    pub(crate) key_der: Vec<u8>,
}

/// The pending challenges; cheap to clone (one shared map each).
#[derive(Clone, Debug, Default)]
pub(crate) struct Challenges {
    http01: Arc<RwLock<HashMap<String, String>>>,
    alpn: Arc<RwLock<HashMap<String, AlpnCert>>>,
}

impl Challenges {
    /// Answer `GET /.well-known/acme-challenge/{token}` with `key_authorization`.
    pub(crate) fn put_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// The key authorization for `token`, if a challenge for it is pending.
    pub(crate) fn http01(&self, token: &str) -> Option<String> {
        self.http01
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// Serve `cert` to `acme-tls/1` ClientHellos for `server_name` (lower case).
    pub(crate) fn put_alpn(&self, server_name: &str, cert: AlpnCert) {
        self.alpn
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server_name.to_ascii_lowercase(), cert);
    }

    /// The TLS-ALPN-01 certificate for `server_name`, if a challenge is pending.
    pub(crate) fn alpn(&self, server_name: &str) -> Option<AlpnCert> {
        self.alpn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&server_name.to_ascii_lowercase())
            .cloned()
    }

    /// Forget the challenges of a finished order.
    pub(crate) fn remove(&self, http01_token: Option<&str>, alpn_server_name: Option<&str>) {
        if let Some(t) = http01_token {
            self.http01
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(t);
        }
        if let Some(n) = alpn_server_name {
            self.alpn
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&n.to_ascii_lowercase());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_challenge_is_answered_until_removed() {
        let c = Challenges::default();
        let seen_by_listener = c.clone();
        c.put_http01("tok", "tok.thumb");
        c.put_alpn(
            "Example.COM",
            AlpnCert {
                cert_der: vec![1],
                key_der: vec![2],
            },
        );
        assert_eq!(seen_by_listener.http01("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(
            seen_by_listener.alpn("example.com").map(|a| a.cert_der),
            Some(vec![1])
        );
        assert_eq!(seen_by_listener.http01("other"), None);
        c.remove(Some("tok"), Some("EXAMPLE.com"));
        assert_eq!(seen_by_listener.http01("tok"), None);
        assert!(seen_by_listener.alpn("example.com").is_none());
    }
}
