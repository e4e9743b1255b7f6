//! wsgate: a TLS-terminating reverse proxy and sticky load balancer for
//! WebSockets.
//!
//! Pure modules (no I/O, unit-tested and benchmarked): [`ring`] (which
//! backend a key belongs to), [`frame`] (where frames start), [`handshake`],
//! [`sticky`], [`route`] and [`config`] validation. I/O modules: [`server`]
//! and [`socket`] (accepting), [`tls`] and [`tlsconn`], [`gateway`],
//! [`upstream`], [`splice`] and [`tunnel`]. `ARCHITECTURE.md` draws how they
//! connect.
//!
//! `unsafe` is denied everywhere but one audited block in [`socket`], which
//! duplicates an accepted socket's descriptor.

#![deny(unsafe_code)]

pub mod admin;
pub mod adminclient;
pub mod bufpool;
pub mod closesignal;
pub mod config;
pub mod control;
pub mod drain;
pub mod frame;
pub mod gateway;
pub mod handshake;
pub mod health;
pub mod plane;
pub mod registry;
pub mod ring;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod socket;
pub mod splice;
pub mod sticky;
pub mod tls;
pub mod tlsconn;
pub mod tunnel;
pub mod upstream;
