"""/metrics of a real wsgate, parsed with prometheus_client's own text
parser (issue 15): the session families exist with the right types, and
their values follow what a few real sessions did."""

import asyncio
import os
import tempfile
import urllib.request

import websockets
from prometheus_client.parser import text_string_to_metric_families

from conftest import Proc, STEP, binary, start_chat_backend


def start_gate_with_admin(procs, backends):
    d = tempfile.mkdtemp(prefix="wsgate-py-metrics-")
    pool = "".join(f'      - {{ id: {i}, address: "{a}" }}\n' for i, a in backends)
    config = (
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n"
        "routes:\n  - path_prefix: /\n    pool: chat\n    sticky_key: [\"query:user\"]\n"
        f"pools:\n  chat:\n    backends:\n{pool}"
        "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n"
    )
    path = os.path.join(d, "wsgate.yaml")
    with open(path, "w") as f:
        f.write(config)
    env = dict(os.environ, RUST_LOG="warn")
    p = Proc([binary("wsgate"), "run", "-c", path], env=env)
    procs.append(p)
    found = {}

    def ready(line):
        if line.startswith("wsgate: admin API on http://"):
            found["admin"] = line.rsplit("http://", 1)[1]
        elif line.startswith("wsgate: listener "):
            found["port"] = int(line.rsplit(":", 1)[1])
        return len(found) == 2

    p.wait_for(ready)
    with open(os.path.join(d, "admin.token")) as f:
        token = f.read().strip()
    return found["port"], found["admin"], token


def scrape(admin, token):
    req = urllib.request.Request(
        f"http://{admin}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=STEP) as resp:
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(families, name, suffix=""):
    """{frozenset(labels): value} of one family's samples named name+suffix."""
    fam = families[name]
    return {
        frozenset(s.labels.items()): s.value
        for s in fam.samples
        if s.name == name + suffix
    }


async def sessions(port):
    url = f"ws://127.0.0.1:{port}/echo"
    # alice: 3 messages up, hello + 3 echoes down, closes with 1000.
    async with websockets.connect(f"{url}?user=alice", open_timeout=STEP) as ws:
        await asyncio.wait_for(ws.recv(), STEP)
        for i in range(3):
            await ws.send(f"m{i}")
            await asyncio.wait_for(ws.recv(), STEP)
    # bob: the backend closes with 1011.
    async with websockets.connect(f"{url}?user=bob", open_timeout=STEP) as ws:
        await asyncio.wait_for(ws.recv(), STEP)
        await ws.send("close:1011")
        try:
            await asyncio.wait_for(ws.recv(), STEP)
        except websockets.ConnectionClosed as e:
            assert e.rcvd.code == 1011
    # A refused upgrade: no sticky key source matters, but an unknown
    # WebSocket version is 426.
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=STEP)
    s.sendall(
        b"GET /echo?user=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 7\r\n\r\n"
    )
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 426"), head


def test_session_metrics_scraped_with_a_real_parser(procs):
    backend = start_chat_backend(procs, "b1")
    port, admin, token = start_gate_with_admin(procs, [("b1", backend)])
    asyncio.run(sessions(port))

    # Sessions are folded in when their tunnel ends, just after the client
    # saw the close: scrape until both are in (bounded).
    import time

    deadline = time.monotonic() + STEP
    while True:
        fams = scrape(admin, token)
        count = samples(fams, "wsgate_websocket_session_duration_seconds", "_count")
        if count.get(frozenset({("pool", "chat")}), 0) >= 2:
            break
        assert time.monotonic() < deadline, "the two sessions never ended in /metrics"
        time.sleep(0.05)

    kinds = {
        "wsgate_websocket_close_codes": "counter",
        "wsgate_websocket_messages": "counter",
        "wsgate_websocket_bytes": "counter",
        "wsgate_websocket_session_duration_seconds": "histogram",
        "wsgate_websocket_handshake_seconds": "histogram",
        "wsgate_backend_connect_seconds": "histogram",
        "wsgate_websocket_upgrades_refused": "counter",
        "wsgate_connections_refused": "counter",
        "wsgate_websocket_sessions": "gauge",
        "wsgate_access_log_dropped": "counter",
    }
    for name, kind in kinds.items():
        assert name in fams, f"{name} missing from /metrics"
        assert fams[name].type == kind, (name, fams[name].type)

    codes = samples(fams, "wsgate_websocket_close_codes", "_total")

    def code(side, c):
        return codes.get(
            frozenset({("pool", "chat"), ("backend", "b1"), ("side", side), ("code", c)}), 0
        )

    assert code("client", "1000") == 1, codes
    assert code("backend", "1000") == 1, codes  # the echo backend answers in kind
    assert code("backend", "1011") == 1, codes
    assert code("client", "1011") == 1, codes
    assert sum(v for k, v in codes.items() if ("side", "wsgate") in k) == 0, codes

    msgs = samples(fams, "wsgate_websocket_messages", "_total")
    up = msgs[frozenset({("pool", "chat"), ("direction", "to_backend")})]
    down = msgs[frozenset({("pool", "chat"), ("direction", "to_client")})]
    assert up == 3 + 1, msgs  # alice's three, bob's command
    assert down == (1 + 3) + 1, msgs  # hello and echoes; bob's hello
    byts = samples(fams, "wsgate_websocket_bytes", "_total")
    assert byts[frozenset({("pool", "chat"), ("direction", "to_client")})] > down

    for hist in ("wsgate_websocket_handshake_seconds", "wsgate_backend_connect_seconds"):
        assert samples(fams, hist, "_count")[frozenset({("pool", "chat")})] == 2, hist
        inf = samples(fams, hist, "_bucket")[frozenset({("pool", "chat"), ("le", "+Inf")})]
        assert inf == 2, hist

    refused = samples(fams, "wsgate_websocket_upgrades_refused", "_total")
    assert refused == {frozenset({("status", "426")}): 1}, refused

    live = samples(fams, "wsgate_websocket_sessions")
    assert live == {frozenset({("listener", "public"), ("http_version", "HTTP/1.1")}): 0}, live
