"""Interop through wsgate with Python's `websockets` as the client (and, for
permessage-deflate, as the backend too): a second real client library next
to the Rust tests."""

import json
import os

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import STEP, start_chat_backend, start_gate, start_python_backend


def open_ws(port, ctx, path, **kw):
    return connect(
        f"wss://localhost:{port}{path}", ssl=ctx, open_timeout=STEP, close_timeout=STEP, max_size=64 << 20, **kw
    )


def test_messages_of_every_size_pass_intact(procs):
    addr = start_chat_backend(procs, "b1")
    port, ctx = start_gate(procs, [("b1", addr)])
    with open_ws(port, ctx, "/echo?user=py") as ws:
        assert json.loads(ws.recv(timeout=STEP))["backend"] == "b1"
        for size in [0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20]:
            data = os.urandom(size)
            ws.send(data)
            assert ws.recv(timeout=STEP) == data, f"binary {size}"
            text = ("é" * (size // 2 + 1))[: max(size // 2, 0)]
            ws.send(text)
            assert ws.recv(timeout=STEP) == text, f"text {size}"


def test_permessage_deflate_is_negotiated_end_to_end(procs):
    addr = start_python_backend(procs)
    port, ctx = start_gate(procs, [("py", addr)])
    # websockets offers permessage-deflate by default; wsgate must pass the
    # offer to the backend and the backend's answer back, untouched.
    with open_ws(port, ctx, "/?user=deflate") as ws:
        hello = json.loads(ws.recv(timeout=STEP))
        assert hello["extensions"] == ["permessage-deflate"], hello
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
        for size in [0, 100, 70_000, 4 << 20]:
            text = ("wsgate keeps frames whole " * (size // 26 + 1))[:size]
            ws.send(text)
            assert ws.recv(timeout=STEP) == text
            blob = os.urandom(size)
            ws.send(blob)
            assert ws.recv(timeout=STEP) == blob


def closed_with(ws):
    """Reads until the connection closes; returns the Close frame received."""
    try:
        while True:
            ws.recv(timeout=STEP)
    except ConnectionClosed as e:
        return e.rcvd


def test_close_codes_both_ways(procs):
    addr = start_chat_backend(procs, "b1")
    port, ctx = start_gate(procs, [("b1", addr)])
    with open_ws(port, ctx, "/echo?user=closer") as ws:
        ws.recv(timeout=STEP)
        ws.close(code=4000, reason="py bye")
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (4000, "py bye")
    with open_ws(port, ctx, "/echo?user=closer2") as ws:
        ws.recv(timeout=STEP)
        ws.send("close:4001")
        rcvd = closed_with(ws)
        assert (rcvd.code, rcvd.reason) == (4001, "bye")


def test_killed_backend_closes_client_with_1014(procs):
    addr = start_chat_backend(procs, "b1")
    port, ctx = start_gate(procs, [("b1", addr)])
    with open_ws(port, ctx, "/echo?user=victim") as ws:
        ws.recv(timeout=STEP)
        procs[0].kill()
        rcvd = closed_with(ws)
        assert rcvd is not None and rcvd.code == 1014, rcvd
