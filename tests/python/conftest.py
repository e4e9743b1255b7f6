"""Fixtures that start real processes on loopback port 0: chat-backend,
the Python deflate backend, and wsgate with a generated certificate."""

import os
import queue
import ssl
import subprocess
import sys
import tempfile
import threading

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
STEP = 20  # seconds: bound on every wait


class Proc:
    """A child process whose stdout lines are read on a thread; killed at the end."""

    def __init__(self, args, env=None):
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, predicate):
        while True:
            try:
                line = self.lines.get(timeout=STEP)
            except queue.Empty:
                raise RuntimeError(f"{self.p.args[0]} never became ready")
            found = predicate(line)
            if found:
                return found

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=STEP)


def binary(name):
    path = os.path.join(TARGET, "debug", name)
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: run `cargo build --workspace --bins` (scripts/test.sh does)")
    return path


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        p.kill()


def start_chat_backend(procs, ident):
    p = Proc([binary("chat-backend"), "--listen", "127.0.0.1:0", "--id", ident])
    procs.append(p)
    return p.wait_for(lambda l: " listening on " in l and l.rsplit(" ", 1)[1])


def start_python_backend(procs):
    p = Proc([sys.executable, os.path.join(os.path.dirname(__file__), "deflate_backend.py")])
    procs.append(p)
    port = p.wait_for(lambda l: l.startswith("listening on ") and l.split()[-1])
    return f"127.0.0.1:{port}"


def start_gate(procs, backends):
    """backends: list of (id, address). Returns (port, ssl_context)."""
    d = tempfile.mkdtemp(prefix="wsgate-py-")
    pool = "".join(f'      - {{ id: {i}, address: "{a}" }}\n' for i, a in backends)
    config = (
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n    tls:\n      certificates:\n"
        "        - { cert: dev.crt, key: dev.key, generate_if_missing: true }\n"
        "routes:\n  - path_prefix: /\n    pool: chat\n    sticky_key: [\"query:user\"]\n"
        f"pools:\n  chat:\n    backends:\n{pool}"
    )
    path = os.path.join(d, "wsgate.yaml")
    with open(path, "w") as f:
        f.write(config)
    env = dict(os.environ, RUST_LOG="warn")
    p = Proc([binary("wsgate"), "run", "-c", path], env=env)
    procs.append(p)
    url = p.wait_for(lambda l: l.startswith("wsgate: listener ") and l.split(" on ")[1])
    port = int(url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=os.path.join(d, "dev.crt"))
    return port, ctx
