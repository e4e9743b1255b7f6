//! End-to-end tests: real wsgate, real backends, real clients, loopback only.
//! Each test starts its own processes on port 0 and kills them when done.

mod access_log;
mod admin_limits;
mod blame;
mod bounded;
mod certs;
mod cli;
mod closes;
mod data;
mod deploys;
mod discovery;
mod edges;
mod failures;
mod fleet;
mod h2;
mod heartbeat;
mod image;
mod kubernetes;
mod limits;
mod listeners;
mod plain_http;
mod policy;
mod proxyproto;
mod replicas;
mod route_cli;
mod slowloris;
mod status_page;
mod status_watch;
mod stickiness;
