//! Every mode, end to end, against an in-process echo server on
//! 127.0.0.1:0 that behaves like the example backend (hello first, then
//! echo). Runs are a second or so; assertions are on counts, never on
//! timings.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use wsgate_bench::cli::Cli;
use wsgate_bench::Status;

use clap::Parser;

/// Starts the echo server. On paths starting with `/close`, it closes each
/// connection with 1012 after 200 ms instead of waiting for the client.
// tungstenite's handshake callback returns its large ErrorResponse type.
#[allow(clippy::result_large_err)]
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut path = String::new();
                let callback = |req: &Request, resp: Response| {
                    path = req.uri().path().to_string();
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                let hello = Message::text(r#"{"type":"hello","backend":"t1"}"#);
                if ws.send(hello).await.is_err() {
                    return;
                }
                if path.starts_with("/close") {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let frame = CloseFrame {
                        code: CloseCode::Restart,
                        reason: "".into(),
                    };
                    let _ = ws.close(Some(frame)).await;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Runs the tool with `args` and returns its exit status and summary.
async fn bench(args: &[&str]) -> (Status, Value) {
    let cli = Cli::try_parse_from(std::iter::once("wsgate-bench").chain(args.iter().copied()))
        .expect("valid flags");
    let report = wsgate_bench::run(cli).await;
    assert!(!report.line.contains('\n'), "one line: {}", report.line);
    let json: Value = serde_json::from_str(&report.line).expect("JSON summary");
    (report.status, json)
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}?user={{user}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_sends_on_schedule_and_gets_every_echo() {
    let addr = echo_server().await;
    let url = url(addr, "/echo");
    let (status, s) = bench(&[
        "rate", "--url", &url, "-c", "4", "-r", "200", "-d", "1s", "--warmup", "200ms",
    ])
    .await;
    assert_eq!(status, Status::Passed, "{s}");
    assert_eq!(s["mode"], "rate");
    assert_eq!(s["scheduled"], 200);
    assert_eq!(s["sent"], 200);
    assert_eq!(s["received"], 200);
    assert_eq!(s["lost"], 0);
    assert_eq!(s["rtt_us"]["count"], 160, "the warm-up is not measured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturate_echoes_everything_it_sends() {
    let addr = echo_server().await;
    let url = url(addr, "/echo");
    let (status, s) = bench(&[
        "saturate", "--url", &url, "-c", "2", "-w", "2", "-d", "500ms", "--warmup", "100ms",
    ])
    .await;
    assert_eq!(status, Status::Passed, "{s}");
    assert!(s["sent"].as_u64().unwrap() > 0);
    assert_eq!(s["sent"], s["received"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_and_verifies() {
    let addr = echo_server().await;
    let url = url(addr, "/echo");
    let (status, s) = bench(&[
        "idle",
        "--url",
        &url,
        "-c",
        "20",
        "--hold",
        "300ms",
        "--verify",
        "--source-ips",
        "127.0.0.1-127.0.0.3",
    ])
    .await;
    assert_eq!(status, Status::Passed, "{s}");
    assert_eq!(s["connected"], 20);
    assert_eq!(s["verify"]["ok"], 20);
    assert_eq!(s["closes"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_counts_server_closes_by_code() {
    let addr = echo_server().await;
    let url = url(addr, "/close");
    let (_, s) = bench(&[
        "idle",
        "--url",
        &url,
        "-c",
        "10",
        "--hold",
        "10s",
        "--until-closed",
    ])
    .await;
    assert_eq!(s["closes"], 10, "{s}");
    assert_eq!(s["close_codes"]["1012"], 10);
    let per_second = s["closes_per_second"].as_array().unwrap();
    let total: u64 = per_second
        .iter()
        .map(|b| b["closes"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 10);
    assert_eq!(s["open_at_hold_end"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_counts_complete_cycles() {
    let addr = echo_server().await;
    let url = url(addr, "/echo");
    let (status, s) = bench(&["handshake", "--url", &url, "-C", "2", "-n", "30"]).await;
    assert_eq!(status, Status::Passed, "{s}");
    assert_eq!(s["completed"], 30);
    assert_eq!(s["steps_us"]["echo"]["count"], 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_reads_the_backend_from_the_hello() {
    let addr = echo_server().await;
    let url = url(addr, "/echo");
    let (status, s) = bench(&["sticky", "--url", &url, "--users", "10", "--rounds", "2"]).await;
    assert_eq!(status, Status::Passed, "{s}");
    assert_eq!(s["sticky_users"], 10);
    assert_eq!(s["backends"]["t1"], 10);
}

#[tokio::test]
async fn unreachable_target_is_a_failed_summary() {
    // Bind and drop to get a port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = url(addr, "/echo");
    let (status, s) = bench(&[
        "rate", "--url", &url, "-c", "1", "-d", "1s", "--warmup", "100ms",
    ])
    .await;
    assert_eq!(status, Status::Failed);
    assert_eq!(s["ok"], false);
    assert!(s["error"].as_str().unwrap().contains("TCP connect"), "{s}");
}

#[tokio::test]
async fn bad_combination_is_a_usage_error() {
    let (status, _) = bench(&["rate", "--url", "ws://127.0.0.1:1/", "--size", "8"]).await;
    assert_eq!(status, Status::BadUsage);
}
