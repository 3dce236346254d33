//! The knobs of one app's proxy, with production defaults: the one source of each proxy
//! setting. The config room parses `[app.NAME.proxy]` straight onto [`ProxyConfig::default`]
//! (so a default is written here only), the supervisor hands the resolved value to
//! [`AppProxy::new`](crate::proxy::AppProxy::new) as it is, and tests shorten the timeouts.
//! A new setting is a field here, its `RawProxy` field and one line of validation.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// Settings of one [`AppProxy`](crate::proxy::AppProxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// How long a request waits for a ready instance before the 503 page (default 30 s).
    pub hold: Duration,
    /// Deadline of a TCP connect to an instance (default 5 s).
    pub connect_timeout: Duration,
    /// Deadline for the response head once the request was sent in full (default 60 s).
    pub response_timeout: Duration,
    /// Client keep-alive idle time: a connection that sends no byte of a next request
    /// for this long is closed (silently, as nginx does) (default 60 s).
    pub idle_timeout: Duration,
    /// From the first byte of a request head (or the end of the previous request, for
    /// bytes already there), the time the client has to send the whole head; then it gets
    /// `408 Request Timeout` and the connection is closed (default 10 s).
    pub header_timeout: Duration,
    /// The longest a client may send nothing of a request body; then the exchange ends
    /// (`408` if no response has started) and the app's connection is closed (default 60 s).
    pub body_timeout: Duration,
    /// Idle upstream connections older than this are not reused (default 4 s, below the
    /// usual 5 s keep-alive timeout of app servers, so the app never closes one under us).
    pub pool_idle_timeout: Duration,
    /// Idle upstream connections kept per instance and proxy thread (default 256).
    pub pool_max_idle: usize,
    /// On shutdown, how long `serve` waits for open client connections to finish
    /// (default 10 s).
    pub shutdown_timeout: Duration,
    /// Client connections open at once; at the cap the proxy stops accepting (the kernel
    /// keeps the next ones in the listen backlog) and closes the oldest connections that
    /// have sent nothing yet to make room. `None` (the default): derived from the
    /// open-files limit when the proxy is made ([`crate::limits::connection_budget`]; the
    /// supervisor fills in its share for each app).
    pub max_connections: Option<usize>,
    /// Clients whose forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) are
    /// passed on rather than removed: the proxies in front of windlass (a TLS terminator,
    /// a load balancer). Empty by default: a client could claim anything.
    pub trusted_proxies: Vec<IpRange>,
    /// How many instances the app runs (default 1). A request an instance may have read
    /// before it closed the connection is sent to another instance only when there are
    /// two or more: with one, the only other is the restart of the instance it may have
    /// just killed (README, "When a request can fail").
    pub instances: u32,
    /// Serve plain requests (a bodiless `GET`/`HEAD`/`OPTIONS`/`DELETE` on HTTP/1.1) on
    /// the raw-socket path (default true); false sends every request through the hyper
    /// path, e.g. to rule the plain path out when chasing a problem.
    pub plain_path: bool,
}

impl ProxyConfig {
    /// `max_connections`, or the share of the open-files limit of a lone app with one
    /// instance when it is not set.
    pub fn connection_cap(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            crate::limits::connection_budget(
                crate::limits::current().map_or(1024, |(soft, _)| soft),
                1,
                1,
            )
        })
    }

    /// Whether a client at `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|r| r.contains(ip))
    }
}

/// An IP address or a CIDR range: `10.0.0.0/8`, `192.0.2.7`, `::1`, `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is in the range (an IPv4 address mapped into IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<IpRange, String> {
        let bad = || {
            format!(
                "`{s}` is not an IP address or a CIDR range: write one like \"10.0.0.0/8\", \"192.0.2.7\" or \"::1\""
            )
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(IpRange { addr, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            hold: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_idle: 256,
            shutdown_timeout: Duration::from_secs(10),
            max_connections: None,
            trusted_proxies: Vec::new(),
            instances: 1,
            plain_path: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ranges_parse_and_match() {
        let r: IpRange = "10.0.0.0/8".parse().expect("range");
        assert!(r.contains(ip("10.1.2.3")));
        assert!(
            r.contains(ip("::ffff:10.9.9.9")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(!r.contains(ip("11.0.0.1")));
        assert!(!r.contains(ip("::1")));
        let one: IpRange = "192.0.2.7".parse().expect("address");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let all: IpRange = "0.0.0.0/0".parse().expect("everything");
        assert!(all.contains(ip("203.0.113.1")));
        let v6: IpRange = "fd00::/8".parse().expect("v6");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert_eq!(v6.to_string(), "fd00::/8");
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "::1/129",
            "host.example",
            "10.0.0.0/x",
        ] {
            let e = bad.parse::<IpRange>().expect_err(bad);
            assert!(e.contains("CIDR"), "{e}");
        }
    }
}
