//! The edge: accepting connections, TLS, HTTP, and handing upgraded
//! connections to the tunnel. The outer data path; it reads routing state
//! through the gateway and never talks to the control task.
//!
//! | module | owns | I/O |
//! |---|---|---|
//! | [`server`] | pingora's server: worker runtime, shutdown and upgrade settings | none |
//! | [`listeners`] | the running listeners: binding, start and stop by reload, the upgrade handover table, readiness lines | sockets |
//! | [`accept`] | a listener's accept loop; each connection through PROXY header, admission, TLS, the HTTP/1.1 or HTTP/2 connection and its write timer | network |
//! | [`http2`] | one client connection as HTTP/2 (ALPN `h2`, or `h2c` prior knowledge): its limits, GOAWAY on close and idle | network |
//! | [`proxied`] | reading a connection's PROXY header (`crate::proxyproto`) from an allowed balancer: the client address | network |
//! | [`tls`] | loading a listener's certificates and keys, dev certificates | files |
//! | [`certs`] | a listener's certificate set, chosen by SNI and swapped whole on reload; its rustls config; expiry and serial | files |
//! | [`tlsconn`] | server TLS on rustls' unbuffered API, buffers held only while bytes are in flight | network |
//! | [`splice`] | after the 101 (or an HTTP/2 stream's 200): both sockets back out of hyper (an HTTP/2 stream stays in it), registration, the tunnel's own task | network |

pub(crate) mod accept;
pub mod certs;
pub(crate) mod http2;
pub mod listeners;
pub(crate) mod proxied;
pub(crate) mod server;
pub(crate) mod splice;
pub mod tls;
pub(crate) mod tlsconn;
