#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/seed-*.

Real inputs in each target's input format (see the //! of each target in
fuzz_targets/): frames as browsers and wsgate write them, the RFC 6455
upgrade and its 101, the sticky keys of config/wsgate.yaml, and the shipped
config files. Run from anywhere; it rewrites only the seed-* files, so the
corpus a fuzzing run grows beside them is kept.
"""
import pathlib
import struct

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def write(target, name, data):
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def frame(b0, payload, mask=None, form=None):
    n = len(payload)
    form = form or ("7" if n < 126 else "16" if n < 65536 else "64")
    m = 0x80 if mask else 0
    if form == "7":
        head = bytes([b0, m | n])
    elif form == "16":
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def tracker(name, client, limit, cuts, stream, limit_mode=None):
    """flags (bit 0 client, bits 1-2 limit mode), u16 limit, cut count, u16 cuts."""
    mode = limit_mode if limit_mode is not None else (0 if limit is None else 1)
    flags = (1 if client else 0) | mode << 1
    head = bytes([flags]) + struct.pack("<H", limit or 0) + bytes([len(cuts)])
    head += b"".join(struct.pack("<H", c) for c in cuts)
    write("frame_tracker", name, head + stream)


def frames():
    # RFC 6455 5.7: a masked "Hello" from a client, then its Close 1000.
    tracker("client-hello", True, None, [],
            frame(0x81, b"Hello", KEY) + frame(0x88, b"\x03\xe8", KEY))
    # A server's fragmented "Hello" with a Ping between, then Close 1001.
    tracker("server-fragmented", False, None, [3, 9],
            frame(0x01, b"Hel") + frame(0x89, b"") + frame(0x80, b"lo")
            + frame(0x88, b"\x03\xe9bye"))
    # 16-bit and 64-bit lengths, one of them in more bytes than needed.
    tracker("server-ext-lengths", False, None, [1, 4, 300],
            frame(0x82, bytes(range(256)) * 1) + frame(0x82, b"abc", form="64")
            + frame(0x8A, b"pong"))
    # permessage-deflate sets RSV1; the tracker passes it through.
    tracker("client-rsv1", True, None, [2],
            frame(0xC1, b"\xf2\x48\xcd\xc9\xc9\x07\x00", KEY))
    # A message of 12 bytes against a limit of 10.
    tracker("client-too-big", True, 10, [7],
            frame(0x01, b"123456", KEY) + frame(0x80, b"789012", KEY))
    # A 64 KiB frame announced, only its start sent.
    tracker("server-64k-partial", False, None, [5],
            bytes([0x82, 127]) + struct.pack(">Q", 65536) + b"x" * 40)
    # Errors: reserved opcode, unmasked client frame, oversized Ping.
    tracker("client-unmasked", True, None, [], frame(0x81, b"hi"))
    tracker("server-reserved-opcode", False, None, [], frame(0x83, b"x"))
    tracker("server-long-ping", False, None, [], bytes([0x89, 126, 0, 200]))
    # Close encoder and parser (flags bit 7): code 1000, masked, a reason.
    write("frame_tracker", "close-encode",
          bytes([0x80, 0, 0, 0]) + struct.pack("<H", 1000) + b"\x01" + KEY
          + b"going away\x0a" + b"\x03\xe8ok\x04")


RFC_REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13"
)
RFC_RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: chat"
)
BROWSER_REQUEST = (
    b"GET /ws?user=alice HTTP/1.1\r\n"
    b"Host: localhost:8443\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: https://localhost:8443\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Cookie: session=abc123; theme=dark\r\n"
    b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
)


def handshakes():
    write("handshake", "rfc", b"\x00" + RFC_REQUEST + b"\r\n\r\n" + RFC_RESPONSE)
    write("handshake", "browser", b"\x00" + BROWSER_REQUEST + b"\r\n\r\n"
          + b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
          b"Connection: upgrade\r\nSec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=")
    write("handshake", "body", b"\x00" + RFC_REQUEST.replace(
        b"Origin", b"Content-Length: 5\r\nOrigin"))
    write("handshake", "two-hosts", b"\x00" + RFC_REQUEST.replace(
        b"Origin", b"Host: evil.example\r\nOrigin"))
    write("handshake", "absolute-form", b"\x00" + RFC_REQUEST.replace(
        b"GET /chat", b"GET http://other.example/chat"))
    write("handshake", "version-8", b"\x00" + RFC_REQUEST.replace(b": 13", b": 8"))
    write("handshake", "http10-post", b"\x00" + RFC_REQUEST.replace(
        b"GET /chat HTTP/1.1", b"POST /chat HTTP/1.0"))
    write("handshake", "plain-get", b"\x00GET /index.html HTTP/1.1\r\nHost: a\r\n"
          b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0")
    # Structured mode: a byte string the target reads as header lists.
    write("handshake", "parts", b"\x01\x00\x00\x05\x00\x0chost.example"
          b"\x01\x09websocket\x02\x07Upgrade\x03\x18dGhlIHNhbXBsZSBub25jZQ=="
          b"\x04\x0213")


def sticky():
    # The target reads these through `arbitrary`: the texts steer it toward
    # real sources, queries and cookies; the exact layout is its to find.
    write("sticky_key", "sources", b"\x00\x03\x0aquery:user\x10header:x-user-id"
          b"\x0ecookie:session\x01\x10user=alice&room=1\x02\x00"
          b"\x18session=abc123; theme=dark\x01\x05alice")
    write("sticky_key", "encoded-user", b"\x00\x01\x0aquery:user\x01"
          b"\x1broom=1&user=al%69ce+smith&x=\x00")
    write("sticky_key", "quoted-cookie", b"\x00\x01\x0ecookie:session\x00\x01\x00"
          b"\x16a=1; session=\"abc\"; b")
    write("sticky_key", "spelled", b"\x01\x0auser-42:\xc3\xa9\x04user\x02\x03\x01"
          b"\x02\x00\x01\x01\x07session\x01\x02\x01\x00\x01\x01\x01\x00")
    write("sticky_key", "spelled-long", b"\x01" + bytes(range(33, 127)) * 2)


def configs():
    for p in sorted((ROOT / "config").glob("*.yaml")):
        write("config", p.stem, p.read_bytes())
    write("config", "minimal", b"""listeners: [ { name: a, address: "127.0.0.1:0" } ]
routes: [ { path_prefix: /, pool: p } ]
pools: { p: { backends: [ { id: b1, address: "localhost:9001" } ] } }
""")
    write("config", "full", b"""listeners:
  - name: public
    address: "[::]:8443"
    tls:
      certificates:
        - { cert: a.crt, key: a.key, server_names: [ chat.example.com, "*.example.net" ] }
        - { cert: b.crt, key: b.key }
  - { name: internal, address: "127.0.0.1:8080" }
routes:
  - host: "*.example.net"
    path_prefix: /ws
    pool: chat
    sticky_key: [ "query:user", "header:x-user-id", "cookie:session" ]
    on_missing_key: reject
    allowed_origins: [ "https://chat.example.com" ]
  - { path_prefix: /, pool: chat }
pools:
  chat:
    backends:
      - { id: chat-1, address: "127.0.0.1:9001", weight: 0 }
      - { id: chat-2, address: "chat-2.internal:9002", weight: 3 }
    health_check: { path: /healthz, interval: 2s, timeout: 500ms, fall: 3, rise: 2 }
    drain: { window: 30s, close_code: 4000, max_closes_per_second: 500 }
    rebalance: migrate
timeouts: { handshake: 10s, backend_connect: 3s, backend_response: 10s, idle: 15m, close: 5s }
limits: { max_header_bytes: 16KiB, max_message_bytes: 64MiB }
runtime: { threads: 2, work_stealing: true, shutdown_window: 1h, upgrade_sock: up.sock }
admin: { address: "127.0.0.1:9900", token_file: admin.token }
""")
    write("config", "problems", b"""listeners:
  - { name: a, address: "nohost" }
  - { name: a, address: "0.0.0.0:80" }
routes:
  - { path_prefix: ws, pool: chatt, sticky_key: [ "body:x" ], on_missing_key: maybe }
pools:
  chat:
    backends: [ { id: "a/b", address: "h:0" }, { id: "a/b", address: "h:1" } ]
    health_check: { path: healthz, fall: 0, interval: 0s }
    drain: { close_code: 1005, window: 10 }
    rebalance: sometimes
timeouts: { idle: 99999999999999999999h, close: 5 }
limits: { max_header_bytes: 1KiB, max_message_bytes: 99999999999999999GiB }
""")
    write("config", "syntax", b"listeners:\n  - name: [unclosed\n  stickyness: high\n\tpools: {\n")


frames()
handshakes()
sticky()
configs()
