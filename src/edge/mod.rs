//! The public edge (issue 15): one listener on 80/443 for every app, routed by host name,
//! with TLS (certificates from files or ACME) and HTTP/2. It owns what sits between the
//! internet and the per-app proxies: routes, certificates and the ACME challenges; the
//! proxying itself stays in [`crate::proxy`], so hold, drain and replay behave as on an app's
//! own port.

// Used by the edge listeners and the ACME client, which land next (issue 15).
#[allow(dead_code)]
pub(crate) mod challenge;
