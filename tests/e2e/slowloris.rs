//! Slowloris (issue 11, "Done means"): 1,000 clients trickle their first
//! bytes one a second, half a TLS ClientHello, half an HTTP request head,
//! while 20 legitimate clients do handshake plus echo. Nobody legitimate
//! fails, and the slow ones are cut at the handshake timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

const HANDSHAKE: Duration = Duration::from_secs(5);

/// The start of a TLS ClientHello record announcing 512 bytes: wsgate
/// must wait for the rest, and the handshake timeout must end the wait.
const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
const HEAD: &[u8] = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";

/// One slow client: connects, sends `prefix` then one byte a second until
/// wsgate closes the connection, records how long that took, and again.
async fn trickle(
    addr: std::net::SocketAddr,
    prefix: &'static [u8],
    stop: Arc<AtomicBool>,
    cuts: Arc<Mutex<Vec<Duration>>>,
) {
    while !stop.load(Relaxed) {
        let Ok(Ok(mut s)) = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let opened = Instant::now();
        let mut sent = 0usize;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                read = s.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                _ = tick.tick() => {
                    if stop.load(Relaxed) {
                        return;
                    }
                    let byte = prefix.get(sent).copied().unwrap_or(b'a');
                    if s.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    sent += 1;
                }
            }
        }
        if let Ok(mut c) = cuts.lock() {
            c.push(opened.elapsed());
        }
    }
}

/// Legitimate clients: each connects over wss, reads the hello, echoes one
/// message and closes, every 500 ms, for `period`. Returns the latencies
/// and the number of failures.
async fn legit(gate: &Gate, clients: usize, period: Duration) -> (Vec<Duration>, u64) {
    let failures = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + period;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (addr, cert) = (gate.addr(), gate.cert());
        let (failures, latencies) = (failures.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            while Instant::now() < until {
                tick.tick().await;
                let started = Instant::now();
                let ok = async {
                    let mut ws = wss_at(addr, &cert, &format!("/echo?user=legit-{i}")).await?;
                    hello(&mut ws).await?;
                    ws.send(Message::text("ping")).await?;
                    anyhow::ensure!(next(&mut ws).await? == Message::text("ping"), "wrong echo");
                    let _ = ws.close(None).await;
                    anyhow::Ok(())
                }
                .await;
                match ok {
                    Ok(()) => latencies.lock().unwrap().push(started.elapsed()),
                    Err(e) => {
                        eprintln!("legitimate client {i} failed: {e:#}");
                        failures.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    (l, failures.load(Relaxed))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_clients_do_not_hurt_legitimate_ones() {
    let b = Backend::start("b1").unwrap();
    let yaml = tls_config(&[("b1", b.addr, 1)], "timeouts: { handshake: 5s }\n").replace(
        "listeners:\n",
        "listeners:\n  - name: plain\n    address: \"127.0.0.1:0\"\n",
    );
    let gate = Gate::start(&yaml, 2).unwrap();
    // Announced in config order: the plain listener first, then TLS.
    let (plain, tls) = (gate.addrs[0], gate.addrs[1]);
    let gate = Gate {
        addrs: vec![tls, plain],
        ..gate
    };

    let (quiet, quiet_failures) = legit(&gate, 20, Duration::from_secs(10)).await;
    assert_eq!(quiet_failures, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(Mutex::new(Vec::new()));
    let mut slow = Vec::new();
    for i in 0..1000 {
        let (addr, prefix) = if i % 2 == 0 {
            (tls, CLIENT_HELLO)
        } else {
            (plain, HEAD)
        };
        slow.push(tokio::spawn(trickle(
            addr,
            prefix,
            stop.clone(),
            cuts.clone(),
        )));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (loaded, loaded_failures) = legit(&gate, 20, Duration::from_secs(30)).await;
    stop.store(true, Relaxed);
    for t in slow {
        t.abort();
    }
    let cuts = cuts.lock().unwrap().clone();
    eprintln!(
        "legitimate handshake+echo: unloaded p50 {:?} p99 {:?} ({} runs); with 1,000 slow clients p50 {:?} p99 {:?} ({} runs); {} slow connections cut, after {:?} to {:?}",
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        quiet.len(),
        percentile(&loaded, 0.5),
        percentile(&loaded, 0.99),
        loaded.len(),
        cuts.len(),
        cuts.iter().min(),
        cuts.iter().max(),
    );
    assert_eq!(
        loaded_failures, 0,
        "legitimate clients failed under slowloris"
    );
    assert!(
        cuts.len() >= 1000,
        "every slow client was cut at least once: {}",
        cuts.len()
    );
    for cut in &cuts {
        assert!(
            *cut >= HANDSHAKE - Duration::from_millis(500)
                && *cut <= HANDSHAKE + Duration::from_secs(3),
            "a slow client was cut after {cut:?}, not at the handshake timeout"
        );
    }
}
