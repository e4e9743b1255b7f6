//! Certificate rotation (issue 12, item 2): new certificate files are
//! served to new handshakes after a reload, or by the file watcher alone,
//! while every open WebSocket stays open; a broken certificate is refused
//! and the old one keeps serving.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

/// The certificate (DER) the server presents to a client trusting `trust`.
async fn served_cert(gate: &Gate, trust: &Path) -> anyhow::Result<Vec<u8>> {
    let connector = tokio_rustls::TlsConnector::from(client_tls(trust)?);
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(gate.addr())).await??;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio::time::timeout(STEP, connector.connect(name, tcp)).await??;
    let (_, conn) = tls.get_ref();
    let chain = conn
        .peer_certificates()
        .ok_or_else(|| anyhow::anyhow!("no certificate"))?;
    Ok(chain[0].as_ref().to_vec())
}

fn pem_der(path: &Path) -> Vec<u8> {
    use base64::Engine;
    let text = std::fs::read_to_string(path).unwrap();
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// Writes a new certificate and key, then moves them over the served
/// files (as cert-manager's secret volume or an ACME client would).
fn rotate(gate: &Gate) {
    let (new_cert, new_key) = (gate.dir.join("next.crt"), gate.dir.join("next.key"));
    wsgate::edge::tls::generate_dev_cert(&new_cert, &new_key).unwrap();
    std::fs::rename(&new_key, gate.dir.join("dev.key")).unwrap();
    std::fs::rename(&new_cert, gate.dir.join("dev.crt")).unwrap();
}

async fn open_many(gate: &Gate, n: usize) -> Vec<Ws> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut ws = wss(gate, &format!("/echo?user=rot-{i}")).await.unwrap();
        hello(&mut ws).await.unwrap();
        out.push(ws);
    }
    out
}

async fn all_echo(conns: &mut [Ws]) {
    for (i, ws) in conns.iter_mut().enumerate() {
        let text = format!("still here {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(
            next(ws).await.unwrap(),
            Message::text(text),
            "connection {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_certificates_and_keeps_every_connection() {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], ADMIN), 1).unwrap();
    let old = pem_der(&gate.cert());
    let mut conns = open_many(&gate, 500).await;

    rotate(&gate);
    let new = pem_der(&gate.cert());
    assert_ne!(old, new);
    let (code, out, err) = gate.cli(&["reload"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(served_cert(&gate, &gate.cert()).await.unwrap(), new);
    all_echo(&mut conns).await;

    // A broken certificate: the reload says so, the last good one serves.
    let good = gate.dir.join("good.crt");
    std::fs::copy(gate.cert(), &good).unwrap();
    std::fs::write(
        gate.cert(),
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (code, _, err) = gate.cli(&["reload"]).unwrap();
    assert_ne!(code, 0, "a rejected certificate fails the reload command");
    assert!(err.contains("certificates rejected"), "{err}");
    assert_eq!(served_cert(&gate, &good).await.unwrap(), new);
    let (_, status, _) = gate.cli(&["status"]).unwrap();
    assert!(status.contains("FAILED"), "{status}");
    all_echo(&mut conns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watcher_alone_rotates_certificates() {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], ADMIN), 1).unwrap();
    let mut conns = open_many(&gate, 50).await;
    rotate(&gate);
    let new = pem_der(&gate.cert());
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(served) = served_cert(&gate, &gate.cert()).await {
            if served == new {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all_echo(&mut conns).await;
    let (_, status, _) = gate.cli(&["status"]).unwrap();
    assert!(status.contains("certificate public localhost"), "{status}");
}
