//! wsgate: a TLS-terminating reverse proxy and sticky load balancer for
//! WebSockets.
//!
//! The folders are the planes (ARCHITECTURE.md draws them):
//! - data path: [`edge`] (accept, TLS, HTTP) → `gateway` (route, sticky
//!   key, backend, upgrade) → `tunnel` (the frame-aware splice);
//! - routing state, written by the control plane and read by the data
//!   path: `routing` (ring, snapshot, registry, reports);
//! - what operators see of the sessions: `observe` (access log, session
//!   metrics), fed by the data path once per session;
//! - control plane: [`control`] (one task that owns all control state, the
//!   admin API, health checks, drains, reloads, signals);
//! - [`config`] (the file and its validation), [`cli`] (the command line),
//!   and `process` (the wiring of the two planes).
//!
//! Shared by both planes: `localfault` (which I/O errors are this host's)
//! and [`proxyproto`] (the PROXY protocol header: parsed at the edge,
//! written toward backends by the gateway and by health checks).
//!
//! Pure modules (no I/O, unit-tested and benchmarked): [`routing::ring`],
//! [`tunnel::frame`], handshake validation, sticky-key extraction, route
//! matching, [`config`] validation and the reload diff. No module of the
//! data path imports the control plane.
//!
//! `unsafe` is denied everywhere but one audited block in `edge::listeners`,
//! which duplicates a listening socket handed over by the previous process.

#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod control;
pub mod edge;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod localfault;
mod observe;
mod process;
pub mod proxyproto;
pub mod routing;
pub mod tunnel;
