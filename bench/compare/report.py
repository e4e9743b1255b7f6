#!/usr/bin/env python3
"""BENCHMARKS.md from the raw summaries of bench/compare.sh (stdlib only).

    report.py --raw bench/results/compare-raw.jsonl --out BENCHMARKS.md ...
    report.py --brief LINE REP PROXY TEST STATUS   # one progress line per run

Each line of the raw file is one wsgate-bench run:
{"rep", "proxy", "test", "exit", "summary": <wsgate-bench JSON summary>}
(the drain runs add "drain_exit" and "window_s").

Every target is a ratio against HAProxy. For each repetition the ratio is
taken between the two runs of that repetition (candidates interleaved), and
the table quotes the median of those per-repetition ratios.
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys

CANDIDATES = ["wsgate", "haproxy", "nginx"]
NAMES = {"direct": "direct (no proxy)", "wsgate": "wsgate", "haproxy": "HAProxy", "nginx": "NGINX"}
NOISY = 0.25  # share of a core used by other programs that makes a run suspect
COLORS = {"direct": "#9e9e9e", "wsgate": "#1f77b4", "haproxy": "#ff7f0e", "nginx": "#2ca02c"}


# ---------------------------------------------------------------- metrics
def rss_after_hold(s):
    """Bytes per idle connection at the end of the hold: (RSS at the end of
    the hold - RSS before connecting) / connections still open."""
    proc, before, n = s.get("proc"), s.get("rss_kib_before"), s.get("open_at_hold_end")
    if not proc or before is None or not n:
        return None
    return (proc["rss_kib_end"] - before) * 1024.0 / n


def get(path):
    def f(s):
        for k in path:
            if not isinstance(s, dict) or s.get(k) is None:
                return None
            s = s[k]
        return s
    return f


def scaled(f, k):
    return lambda s: None if f(s) is None else f(s) * k


# key: (test, extractor, label, unit, decimals)
METRICS = {
    "cpu_ws": ("rate_ws", get(["cpu_us_per_msg"]), "Proxy CPU per echoed message, ws", "µs", 2),
    "cpu_wss": ("rate_wss", get(["cpu_us_per_msg"]), "Proxy CPU per echoed message, wss", "µs", 2),
    "p50_ws": ("rate_ws", scaled(get(["rtt_us", "p50"]), 1e-3), "p50 round trip, ws", "ms", 3),
    "p99_ws": ("rate_ws", scaled(get(["rtt_us", "p99"]), 1e-3), "p99 round trip, ws", "ms", 3),
    "p50_wss": ("rate_wss", scaled(get(["rtt_us", "p50"]), 1e-3), "p50 round trip, wss", "ms", 3),
    "p99_wss": ("rate_wss", scaled(get(["rtt_us", "p99"]), 1e-3), "p99 round trip, wss", "ms", 3),
    "p99s_ws": ("rate_ws", scaled(lambda s: med([x["p99_us"] for x in s.get("per_second") or []]), 1e-3),
                "p99 round trip, ws, median of the per-second p99s (robust to one stall)", "ms", 3),
    "p99s_wss": ("rate_wss", scaled(lambda s: med([x["p99_us"] for x in s.get("per_second") or []]), 1e-3),
                 "p99 round trip, wss, median of the per-second p99s (robust to one stall)", "ms", 3),
    "lag_ws": ("rate_ws", scaled(get(["send_lag_us", "max"]), 1e-3), "Longest generator send lag, ws (a stall of the load side)", "ms", 1),
    "lag_wss": ("rate_wss", scaled(get(["send_lag_us", "max"]), 1e-3), "Longest generator send lag, wss", "ms", 1),
    "rss_ws": ("idle_ws", scaled(rss_after_hold, 1 / 1024), "RSS per idle connection, ws (after the hold)", "KiB", 1),
    "rss_wss": ("idle_wss", scaled(rss_after_hold, 1 / 1024), "RSS per idle connection, wss (after the hold)", "KiB", 1),
    "rss_ws_ramp": ("idle_ws", scaled(get(["rss_bytes_per_conn"]), 1 / 1024), "RSS per connection, ws, right after the ramp", "KiB", 1),
    "rss_wss_ramp": ("idle_wss", scaled(get(["rss_bytes_per_conn"]), 1 / 1024), "RSS per connection, wss, right after the ramp", "KiB", 1),
    "hs_cpu": ("handshake_wss", scaled(get(["cpu_us_per_handshake"]), 1e-3), "Proxy CPU per full TLS handshake + upgrade + echo + close", "ms", 3),
    "hs_rate": ("handshake_wss", get(["handshakes_per_s"]), "Handshakes per second (4 at a time; load generator on one core)", "/s", 0),
    "hs_ws_cpu": ("handshake_ws", scaled(get(["cpu_us_per_handshake"]), 1e-3), "Proxy CPU per plain ws handshake (TCP, upgrade, echo, close)", "ms", 3),
    "hs_ws_rate": ("handshake_ws", get(["handshakes_per_s"]), "Plain ws handshakes per second (4 at a time)", "/s", 0),
    # The h2 mode: both protocols in one run (NGINX has no RFC 8441).
    "h2_hs_cpu_h1": ("h2_wss", scaled(get(["handshake_h1", "cpu_us_per_handshake"]), 1e-3),
                     "h2 run, wss side: proxy CPU per full TLS handshake + upgrade + echo + close", "ms", 3),
    "h2_hs_cpu": ("h2_wss", scaled(get(["handshake_h2", "cpu_us_per_handshake"]), 1e-3),
                  "h2 run: proxy CPU per WebSocket over HTTP/2 (new stream + echo + close; one TLS handshake per 100)", "ms", 3),
    "h2_hs_ratio": ("h2_wss", get(["handshake_cpu_ratio_h2_h1"]), "h2 run: CPU per handshake, h2 / wss", "×", 3),
    "h2_rss_h1": ("h2_wss", get(["idle_kib_per_ws_h1"]), "h2 run, wss side: RSS per idle WebSocket", "KiB", 2),
    "h2_rss": ("h2_wss", get(["idle_kib_per_ws_h2"]), "h2 run: RSS per idle WebSocket over HTTP/2 (100 per connection)", "KiB", 2),
    "h2_rss_ratio": ("h2_wss", get(["idle_memory_ratio_h2_h1"]), "h2 run: RSS per idle WebSocket, h2 / wss", "×", 3),
}

# (id, title, metric or None, goal ratio, comparison)
TARGETS = [
    ("cpu_wss", "CPU per message at 20k msg/s, wss", "cpu_wss", 0.8),
    ("cpu_ws", "CPU per message at 20k msg/s, ws", "cpu_ws", 0.8),
    ("p99_wss", "p99 round trip at 20k msg/s, wss", "p99_wss", 1.0),
    ("p99_ws", "p99 round trip at 20k msg/s, ws", "p99_ws", 1.0),
    ("rss_ws", "RSS per idle connection, ws", "rss_ws", 0.5),
    ("rss_wss", "RSS per idle connection, wss", "rss_wss", 0.5),
    ("hs_cpu", "CPU per full TLS handshake (+ upgrade, echo, close)", "hs_cpu", 0.7),
    ("hs_ws_cpu", "CPU per plain ws handshake (upgrade, echo, close)", "hs_ws_cpu", 0.8),
]


def fmt(v, d=2):
    if v is None:
        return "—"
    if d == 0:
        return f"{v:,.0f}"
    return f"{v:,.{d}f}"


def load(path):
    runs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                runs.append(json.loads(line))
    return runs


def values(runs, metric):
    """{proxy: {rep: value}} for one metric."""
    test, fn = METRICS[metric][0], METRICS[metric][1]
    out = {}
    for r in runs:
        if r["test"] != test or not r.get("summary"):
            continue
        v = fn(r["summary"])
        if v is not None:
            out.setdefault(r["proxy"], {})[r["rep"]] = v
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rep_ratios(vals, a, b="haproxy"):
    va, vb = vals.get(a, {}), vals.get(b, {})
    return [va[k] / vb[k] for k in sorted(va) if k in vb and vb[k]]


def rep_ratio_text(vals, test, noisy, a="wsgate", b="haproxy"):
    """Each repetition's ratio; `*` marks one where other programs used more
    than NOISY of a core during either run."""
    va, vb = vals.get(a, {}), vals.get(b, {})
    out = []
    for k in sorted(va):
        if k in vb and vb[k]:
            hit = (a, test, k) in noisy or (b, test, k) in noisy
            star = "*" if hit and not test.startswith("idle") else ""  # memory does not depend on CPU contention
            out.append(f"{va[k] / vb[k]:.2f}{star}")
    return ", ".join(out)


def drain_eval(r, window):
    """Worst deviation of a one-second close count from connections/window,
    over the window's seconds; closes after the window are the tail."""
    s = r.get("summary") or {}
    n = s.get("connected") or 0
    per = s.get("closes_per_second") or []
    if not n or not per:
        return None
    target = n / window
    counts = {e["t"]: e["closes"] for e in per}
    inside = [counts.get(t, 0) for t in range(window)]
    tail = sum(c for t, c in counts.items() if t >= window)
    devs = [abs(c - target) / target for c in inside]
    worst_t = max(range(window), key=lambda t: devs[t])
    return {
        "rep": r["rep"], "connections": n, "target": target, "closes": s.get("closes", 0),
        "codes": s.get("close_codes", {}), "worst": devs[worst_t], "worst_t": worst_t,
        "worst_count": inside[worst_t], "min": min(inside), "max": max(inside), "tail": tail,
        "per_second": inside, "abnormal": (s.get("errors") or {}).get("kinds", {}),
        "drain_exit": r.get("drain_exit"), "ok": s.get("ok"),
    }


def other_share(r):
    """Share of one core used by anything but the processes of this run."""
    m, s = r.get("machine"), r.get("summary") or {}
    if not m or not m.get("wall_s") or "generator_cpu_s" not in s:
        return None
    other = m["busy_s"] - m["proxy_s"] - m["backends_s"] - s["generator_cpu_s"]
    return max(other, 0.0) / m["wall_s"]


# ---------------------------------------------------------------- machine facts
def sh(cmd):
    try:
        p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip()
    except Exception as e:  # a missing tool leaves a note, not a crash
        return f"({e})"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_int(path):
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return None


def slab_sizes():
    """Object sizes (bytes) of the slab caches an idle TCP socket holds."""
    want = {"TCP": 0, "sock_inode_cache": 0, "dentry": 0, "filp": 0, "eventpoll_epi": 0, "eventpoll_pwq": 0}
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in want:
                    want[parts[0]] = int(parts[3])
    except (OSError, ValueError, IndexError):
        return None
    return want if want["TCP"] else None


# ---------------------------------------------------------------- chart
def chart_spec(runs, med_of, drains, title):
    panels = []

    def bars(metric, with_direct=False):
        names = (["direct"] if with_direct else []) + CANDIDATES
        return [{"label": NAMES[p].split(" ")[0], "value": med_of[metric].get(p), "color": COLORS[p]}
                for p in names if med_of[metric].get(p) is not None]

    for target_id, title_t, metric, goal in TARGETS:
        h = med_of[metric].get("haproxy")
        label, unit = METRICS[metric][2], METRICS[metric][3]
        lines = [{"value": goal * h, "label": f"goal: {goal:g}× HAProxy"}] if h else []
        panels.append({"title": label, "unit": unit, "bars": bars(metric, metric.startswith("p99")), "lines": lines})
    worst = max(drains, key=lambda d: d["worst"]) if drains else None
    if worst:
        t = worst["target"]
        panels.append({
            "title": f"wsgate drain: closes per second (worst of {len(drains)} reps)",
            "unit": "closes/s",
            "bars": [{"label": str(i), "value": c, "color": COLORS["wsgate"]} for i, c in enumerate(worst["per_second"])],
            "lines": [{"value": t * 1.1, "label": "+10%"}, {"value": t * 0.9, "label": "-10%"}],
            "values": False,
        })
    return {"title": title, "columns": 2, "panels": panels}


# ---------------------------------------------------------------- report
def write_report(a):
    runs = load(a.raw)
    reps = sorted({r["rep"] for r in runs})
    med_of, per_rep = {}, {}
    for m in METRICS:
        vals = values(runs, m)
        per_rep[m] = vals
        med_of[m] = {p: med(list(v.values())) for p, v in vals.items()}

    failures = []
    for r in runs:
        s = r.get("summary")
        bad = r["exit"] != 0 or not s or not s.get("ok")
        if r["test"] == "drain":
            bad = bad or r.get("drain_exit", 0) != 0
        if bad:
            err = (s or {}).get("errors", {}) if s else {}
            failures.append(f"rep {r['rep']} {NAMES.get(r['proxy'], r['proxy'])} {r['test']}: exit {r['exit']}"
                            + (f", drain exit {r.get('drain_exit')}" if r["test"] == "drain" else "")
                            + (f", error: {s['error']}" if s and s.get("error") else "")
                            + (f", ok={s.get('ok')}, lost={s.get('lost', 0)}, errors={err.get('kinds')}"
                               + (f", first: {err.get('first')}" if err.get("first") else "") if s else ", no summary"))

    drains = [d for d in (drain_eval(r, a.drain_window) for r in runs if r["test"] == "drain") if d]
    noisy = {(r["proxy"], r["test"], r["rep"]) for r in runs if (other_share(r) or 0) > NOISY}
    shares = [x for x in (other_share(r) for r in runs) if x is not None]
    mean_other = sum(shares) / len(shares) if shares else 0.0

    commit = a.commit or sh("git rev-parse HEAD")
    dirty = ""
    if a.dirty_file and os.path.exists(a.dirty_file):
        with open(a.dirty_file) as f:
            dirty = f.read().strip()
    head_now = sh("git rev-parse HEAD")
    now = datetime.datetime.now(datetime.timezone.utc)
    quick = a.quick == "1"
    title = f"wsgate vs HAProxy 2.6 vs NGINX 1.22 — medians of {len(reps)} rep{'s' if len(reps) != 1 else ''}" + (" (QUICK smoke run)" if quick else "")

    chart_rel = os.path.relpath(a.chart, os.path.dirname(os.path.abspath(a.out)))
    with open(a.chart_spec, "w") as f:
        json.dump(chart_spec(runs, med_of, drains, title), f)
    chart_ok = subprocess.run([a.chart_bin, a.chart_spec, a.chart]).returncode == 0

    L = []
    w = L.append
    w("# Benchmarks: wsgate, HAProxy and NGINX on one machine\n")
    if quick:
        w("> **This is a QUICK smoke run** (`QUICK=1`: %d idle connections instead of 9,000, short runs, %d repetition%s). "
          "Its numbers only show that the comparison works end to end; they are not the measurement the targets ask for. "
          "Run `bench/compare.sh` without `QUICK` for that.\n" % (a.idle_conns, len(reps), "s" if len(reps) != 1 else ""))
    w(f"Measured {now:%Y-%m-%d %H:%M} UTC by `bench/compare.sh` in {int(a.elapsed) // 60} min {int(a.elapsed) % 60} s, "
      f"from wsgate commit `{commit[:12]}`" + (" with **uncommitted changes** in tracked files:\n\n```\n" + dirty + "\n```\n" if dirty else " (no uncommitted changes in tracked files).") + "\n")
    if a.no_build == "1":
        w("**The binaries were not rebuilt by this run (`NO_BUILD=1`)**, so they may not match that commit.\n")
    if head_now != commit:
        w(f"Note: the repository moved to `{head_now[:12]}` while the run was going; the binaries are from `{commit[:12]}`.\n")
    if mean_other > NOISY:
        w(f"> **Warning: the machine was busy with other work during this run** (on average {mean_other * 100:.0f}% of a core "
          "besides the proxy, the generator and the backends; see [Other load](#other-load-on-the-machine-during-each-run)). "
          "Latencies and CPU figures are disturbed; rerun on a quiet machine.\n")
    w("Reproduce (on a Debian 12 machine with 2 or more cores, as root, from the repository root):\n")
    w("```sh\nbench/compare.sh            # REPS=3 by default; QUICK=1 REPS=1 for a smoke run\n```\n")
    w("It installs HAProxy and NGINX from Debian's packages if they are missing, builds everything in release mode, "
      "runs the measurements below and rewrites this file, `bench/results/compare.png` and the raw summaries in "
      "`bench/results/compare-raw.jsonl` (one wsgate-bench JSON summary per run).\n")

    # Machine
    w("## Machine and versions\n")
    w("| | |\n|---|---|")
    w(f"| CPU | {cpu_model()}, {os.cpu_count()} cores (`nproc`: {sh('nproc')}) |")
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    w(f"| memory | {mem} |")
    w(f"| kernel | {platform.release()} |")
    w(f"| OS | {sh('. /etc/os-release && echo $PRETTY_NAME')} |")
    w(f"| wsgate | {sh('target/release/wsgate --version')}, commit `{commit[:12]}`, {sh('rustc --version')} |")
    w(f"| HAProxy | {sh('haproxy -v | head -n 1')} |")
    nginx_ssl = sh("nginx -V 2>&1 | grep -o 'built with OpenSSL [0-9.a-z]*'")
    w(f"| NGINX | {sh('nginx -v')} ({nginx_ssl}) |")
    w(f"| OpenSSL | {sh('openssl version')} |")
    w(f"| open-file limit | soft {sh('ulimit -Sn')}, hard {sh('ulimit -Hn')} (the script sets {a.nofile}) |")
    w("")

    # Method
    w("## Method\n")
    w(f"- **Pinning.** Each proxy runs pinned to CPU {a.proxy_cpu} (`taskset`) with one thread or worker: "
      "wsgate `WSGATE_THREADS=1` (one worker thread per listener, ws and wss, of which only one carries load in any run, "
      "plus pingora's and wsgate's housekeeping threads; one process, every thread counted), "
      "HAProxy `nbthread 1` started with `-db` (foreground, no master-worker: a single process), "
      "NGINX `worker_processes 1` with `daemon off` (its master sleeps; the master and the worker are both measured). "
      f"The load generator (`wsgate-bench --threads 1`) and three echo backends (`chat-backend`, `/echo`) share CPU {a.load_cpu}.")
    w("- **Same job for all three.** Plain `ws://` and TLS `wss://` listeners on loopback; one self-signed ECDSA P-256 "
      "certificate (`wsgate gen-cert`); TLS 1.2 and 1.3, ALPN http/1.1; consistent hashing on the `user` query "
      "parameter over three backends (wsgate: rendezvous hashing, `sticky_key: [\"query:user\"]`; HAProxy: "
      "`balance url_param user` + `hash-type consistent`; NGINX: `hash $arg_user consistent`); X-Forwarded-For added; "
      "no request logging; no health checks. Configs: `bench/compare/`.")
    w(f"- **Interleaved.** Each repetition runs the direct baseline, then every candidate (order rotated each repetition), "
      "then the wsgate drain. Every measurement starts a fresh proxy process, so no run inherits another's memory.")
    w(f"- **CPU and memory** come from `/proc/PID/stat` (utime + stime, 10 ms ticks) and `VmRSS` of the proxy's "
      "process(es), read by `wsgate-bench --pid`.")
    w(f"- **Rate:** `wsgate-bench rate`, {a.rate:,} msg/s of {a.size}-byte binary messages over {a.rate_conns} connections, "
      f"{a.rate_duration} of which the first {a.rate_warmup} are warm-up. CPU per message = proxy CPU after the warm-up / echoes. "
      "Round trips are from the actual send to the echo.")
    w(f"- **Idle memory:** `wsgate-bench idle`, {a.idle_conns:,} connections from 39 source addresses (127.0.0.2-40), "
      f"held {a.idle_hold}, then every one must echo (`--verify`). RSS per connection = (RSS at the end of the hold - RSS "
      "before connecting) / connections open.")
    w(f"- **Handshakes:** `wsgate-bench handshake` over wss, {a.hs_concurrency} at a time for {a.hs_duration}: TCP connect, full TLS "
      "handshake (no resumption), upgrade, hello from the backend, one echo, close. CPU per handshake = proxy CPU / completed.")
    w(f"- **Drain (wsgate only):** {a.drain_conns:,} wss connections through a pool of one backend, then "
      f"`wsgate drain echo/echo-1 --window {a.drain_window}s --wait`; `wsgate-bench idle --until-closed` counts the Close frames "
      f"per second from the first one. Target rate = connections / {a.drain_window} s; the deviation is checked for each "
      f"of the {a.drain_window} seconds of the window.")
    w(f"- **HTTP/2 (wsgate and HAProxy; NGINX has no RFC 8441):** `wsgate-bench h2` over the wss listener, which offers "
      f"`h2,http/1.1` in ALPN (HAProxy: `alpn h2,http/1.1`). In one run: {a.h2_handshakes:,} handshakes of each protocol in "
      "alternating halves (wss: a new TLS connection each; h2: a new stream by extended CONNECT, with one new TLS "
      f"connection per 100 streams), then {a.h2_conns:,} idle WebSockets of each held at once (wss first, then h2, 100 "
      "streams per connection). CPU per handshake and RSS growth per WebSocket for each, and their ratio h2 / wss.")
    w("- **Direct baseline:** the same rate run straight to one echo backend, no proxy.\n")

    # Targets
    w("## Targets\n")
    w("Ratios are wsgate / HAProxy (and NGINX / HAProxy for context) within each repetition; the table shows the median "
      "of the per-repetition ratios, with each repetition's ratio in brackets.\n")
    w("| target | goal | wsgate / HAProxy | result | NGINX / HAProxy | wsgate | HAProxy | NGINX |")
    w("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for tid, ttitle, metric, goal in TARGETS:
        vals = per_rep[metric]
        rr = rep_ratios(vals, "wsgate")
        nr = rep_ratios(vals, "nginx")
        r = med(rr)
        ok = r is not None and r <= goal
        verdict = "—" if r is None else ("**MET**" if ok else "**MISSED**")
        verdicts.append((tid, ttitle, r, goal, ok))
        unit, d = METRICS[metric][3], METRICS[metric][4]
        goal_txt = "no worse than HAProxy (≤ 1.0×)" if goal == 1.0 else f"≤ {goal:g}×"
        w(f"| {ttitle} | {goal_txt} | {fmt(r)}× [{rep_ratio_text(vals, METRICS[metric][0], noisy)}] | {verdict} | {fmt(med(nr))}× | "
          f"{fmt(med_of[metric].get('wsgate'), d)} {unit} | {fmt(med_of[metric].get('haproxy'), d)} {unit} | {fmt(med_of[metric].get('nginx'), d)} {unit} |")

    # 9,000 concurrent
    hold_rows = []
    for r in runs:
        if r["proxy"] == "wsgate" and r["test"] in ("idle_ws", "idle_wss") and r.get("summary"):
            s = r["summary"]
            v = s.get("verify") or {}
            hold_rows.append((r["rep"], r["test"][5:], s.get("connected", 0), s.get("open_at_hold_end", 0), v.get("ok", 0), v.get("failed", 0)))
    all_hold = bool(hold_rows) and all(c == a.idle_conns and o == a.idle_conns and ok == a.idle_conns and f == 0 for _, _, c, o, ok, f in hold_rows)
    w(f"| {a.idle_conns:,} concurrent WebSockets through one wsgate, all working after a {a.idle_hold} hold | all connect, stay open and echo | "
      + ", ".join(f"rep {rep} {p}: {ok:,}/{c:,} echoed" for rep, p, c, o, ok, f in sorted(hold_rows))
      + f" | {'**MET**' if all_hold else '**MISSED**'}" + (" (smoke size)" if a.idle_conns < 9000 else "") + " | | | | |")
    worst = max((d["worst"] for d in drains), default=None)
    drain_worsts = ", ".join("rep %d: %.1f%%" % (d["rep"], d["worst"] * 100) for d in drains) or "—"
    drain_ok = worst is not None and worst <= 0.10 and all(d["connections"] == a.drain_conns and d["drain_exit"] == 0 for d in drains)
    w(f"| Drain of {a.drain_conns:,} connections over {a.drain_window} s: close rate within 10% of the target in every second | ≤ 10% | "
      f"worst second: {drain_worsts} | "
      f"{'**MET**' if drain_ok else '**MISSED**'} | n/a (wsgate only) | | | |")
    w("")
    if noisy:
        w(f"`*`: during that repetition's wsgate or HAProxy run, other programs used more than {NOISY * 100:.0f}% of a core "
          "(see [Other load](#other-load-on-the-machine-during-each-run)).\n")
    w(f"![wsgate, HAProxy and NGINX: medians with goals]({chart_rel})\n" if chart_ok else "(the chart could not be drawn)\n")

    # Medians table
    w("## Medians per candidate\n")
    cols = ["direct"] + CANDIDATES
    w("| metric | " + " | ".join(NAMES[c] for c in cols) + " |")
    w("|---|" + "---|" * len(cols))
    for m, (test, _, label, unit, d) in METRICS.items():
        w(f"| {label} ({unit}) | " + " | ".join(fmt(med_of[m].get(c), d) for c in cols) + " |")
    w("")
    w("Per repetition (same order):\n")
    w("| metric | candidate | " + " | ".join(f"rep {r}" for r in reps) + " |")
    w("|---|---|" + "---|" * len(reps))
    for m, (test, _, label, unit, d) in METRICS.items():
        for c in cols:
            v = per_rep[m].get(c)
            if v:
                w(f"| {label} ({unit}) | {NAMES[c]} | " + " | ".join(fmt(v.get(r), d) for r in reps) + " |")
    w("")

    w(h2_section(per_rep, med_of))
    w(cpu_breakdown(runs))
    w(instruction_counts())

    # Generator health
    w("## Was the load generator the bottleneck?\n")
    w("For the rate runs: the generator's own CPU as a share of the elapsed time (its core also runs the three echo "
      "backends), the p99 of how late it sent (the 1 ms pacer tick alone accounts for up to ~2 ms), messages lost.\n")
    w("| run | candidate | generator CPU | send lag p99 (ms) | achieved msg/s | lost |")
    w("|---|---|---|---|---|---|")
    for test in ("rate_ws", "rate_wss"):
        for c in cols:
            rs = [r["summary"] for r in runs if r["test"] == test and r["proxy"] == c
                  and r.get("summary") and "rtt_us" in r["summary"]]
            if not rs:
                continue
            gen = med([s["generator_cpu_s"] / s["elapsed_s"] for s in rs if s.get("elapsed_s")])
            lag = med([s["send_lag_us"]["p99"] / 1000 for s in rs if s.get("send_lag_us")])
            ach = med([s.get("achieved_rate") for s in rs])
            lost = sum(s.get("lost", 0) for s in rs)
            w(f"| {test[5:]} | {NAMES[c]} | {fmt(gen * 100 if gen is not None else None, 0)}% | {fmt(lag, 2)} | {fmt(ach, 0)} | {lost} |")
    w("")

    # Other load
    w("## Other load on the machine during each run\n")
    w("CPU time the whole machine was busy during a run, less what the proxy, the echo backends and the generator used: "
      "other programs on the machine (and kernel softirq time, where the kernel accounts it apart from the processes), "
      "as a share of one core. Well above ~10%, the run shared its cores with something else and its latencies are suspect.\n")
    w("| run | " + " | ".join(NAMES[c] for c in cols) + " |")
    w("|---|" + "---|" * len(cols))
    tests = ["rate_ws", "rate_wss", "idle_ws", "idle_wss", "handshake_wss", "handshake_ws", "syscalls_ws", "syscalls_wss", "syscalls_hs", "h2_wss", "drain"]
    for test in tests:
        row = []
        for c in cols:
            xs = [other_share(r) for r in runs if r["test"] == test and r["proxy"] == c]
            xs = [x for x in xs if x is not None]
            row.append(", ".join(f"{x * 100:.0f}%" for x in xs) if xs else "")
        if any(row):
            w(f"| {test} | " + " | ".join(row) + " |")
    w("")

    # Drain detail
    w("## Drain detail (wsgate)\n")
    if drains:
        w(f"| rep | connections | closes (codes) | target/s | min/s | max/s | worst second | closes after the window |")
        w("|---|---|---|---|---|---|---|---|")
        for d in drains:
            w(f"| {d['rep']} | {d['connections']:,} | {d['closes']:,} {json.dumps(d['codes'])} | {d['target']:.1f} | {d['min']} | {d['max']} | "
              f"t={d['worst_t']} s: {d['worst_count']} ({d['worst'] * 100:.1f}%) | {d['tail']} |")
        w("")
    else:
        w("No drain run produced a result.\n")

    # Failures
    w("## Runs that reported a problem\n")
    w("\n".join(f"- {f}" for f in failures) + "\n" if failures else "None: every run completed with `ok: true`.\n")

    # Missed targets
    missed = [v for v in verdicts if v[2] is not None and not v[4]]
    w("## What limits the missed targets\n")
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
    if not missed and all_hold and drain_ok:
        w("Every target was met in this run.\n")
    else:
        for tid, ttitle, r, goal, _ in missed:
            w(f"- **{ttitle}**: {fmt(r)}× HAProxy against a goal of {goal:g}×.")
        if not all_hold:
            w("- **Concurrent connections**: not every connection was held and verified; see the failures above.")
        if not drain_ok:
            w("- **Drain**: the worst second deviated more than 10% (or a drain did not complete); see the drain detail.")
        w("")
        if os.path.exists(notes):
            with open(notes) as f:
                w(f.read().strip() + "\n")
        else:
            w("No analysis was written for this run yet (`bench/compare/notes.md` is included here when present).\n")

    # Extrapolation
    w(extrapolation(med_of, a))

    with open(a.out, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")


def h2_section(per_rep, med_of):
    """WebSockets over HTTP/2 beside wss, for wsgate and HAProxy, from the
    h2 runs (both protocols measured in the same run)."""
    L = ["## WebSockets over HTTP/2 (RFC 8441)\n",
         "Each `h2` run measures both protocols on one proxy process; the ratios h2 / wss are within each run "
         "(median over repetitions). NGINX has no WebSockets over HTTP/2.\n",
         "| metric | wsgate wss | wsgate h2 | wsgate h2 / wss | HAProxy wss | HAProxy h2 | HAProxy h2 / wss | wsgate / HAProxy, h2 |",
         "|---|---|---|---|---|---|---|---|"]
    rows = [("CPU per handshake (ms)", "h2_hs_cpu_h1", "h2_hs_cpu", "h2_hs_ratio", 3),
            ("RSS per idle WebSocket (KiB)", "h2_rss_h1", "h2_rss", "h2_rss_ratio", 2)]
    if not any(med_of[m] for _, m, _, _, _ in rows):
        return "\n".join(L[:1] + ["No h2 runs in this measurement.\n"])
    def g(m, c):
        return med_of[m].get(c)
    for label, h1, h2, ratio_m, d in rows:
        hp = med(rep_ratios(per_rep[h2], "wsgate"))
        L.append(f"| {label} | {fmt(g(h1, 'wsgate'), d)} | {fmt(g(h2, 'wsgate'), d)} | {fmt(g(ratio_m, 'wsgate'), 3)}× | "
                 f"{fmt(g(h1, 'haproxy'), d)} | {fmt(g(h2, 'haproxy'), d)} | {fmt(g(ratio_m, 'haproxy'), 3)}× | {fmt(hp)}× |")
    L.append("")
    return "\n".join(L)


def cpu_split(runs, proxy, cpu_test, calls_test, count):
    """Medians over repetitions of one proxy's user and system µs and its
    system calls per unit of work (`count`, a field of the summary): CPU from
    the `cpu_test` runs, calls from the `calls_test` runs (perf's
    raw_syscalls tracepoint). None where nothing was measured."""
    user, system, calls = [], [], []
    for r in runs:
        s, m = r.get("summary") or {}, r.get("machine") or {}
        n = s.get(count) or 0
        if r["proxy"] != proxy or not n:
            continue
        if r["test"] == cpu_test and m.get("proxy_sys_s") is not None:
            total, sys_s = m.get("proxy_s") or 0.0, m["proxy_sys_s"]
            user.append((total - sys_s) * 1e6 / n)
            system.append(sys_s * 1e6 / n)
        if r["test"] == calls_test and m.get("syscalls") is not None:
            calls.append(m["syscalls"] / n)
    if not (user or calls):
        return None
    return med(user), med(system), med(calls)


def share_cell(u, sy):
    share = sy / (u + sy) if u is not None and sy is not None and (u + sy) else None
    return fmt(share * 100, 0) + "%" if share is not None else "—"


def cpu_breakdown(runs):

    """Per echoed message (client to backend and back through the proxy):
    the proxy's user and system CPU from the rate runs, and its system calls
    from the shorter syscalls_* runs (perf's raw_syscalls tracepoint), as
    medians over repetitions."""
    L = ["## Where the proxy's CPU goes, per echoed message\n",
         "User and system CPU of the proxy process over the whole fixed-rate run (warm-up included, "
         "so slightly above the measured-window figures), divided by the messages echoed; system calls "
         "counted in a separate shorter run at the same rate (counting slows each call, so it never "
         "shares a run with a CPU measurement). A message crosses the proxy twice, so the floor is "
         "two reads and two writes plus the event loop's share of `epoll_wait`.\n",
         "| proxy | transport | user µs/msg | system µs/msg | system share | system calls/msg |",
         "|---|---|---|---|---|---|"]
    rows = 0
    for proxy in CANDIDATES:
        for tr in ("ws", "wss"):
            split = cpu_split(runs, proxy, f"rate_{tr}", f"syscalls_{tr}", "received")
            if split is None:
                continue
            rows += 1
            u, sy, c = split
            L.append(f"| {NAMES[proxy]} | {tr} | {fmt(u)} | {fmt(sy)} | {share_cell(u, sy)} | {fmt(c)} |")
    if not rows:
        return "## Where the proxy's CPU goes, per echoed message\n\nNot measured in this run (needs `perf`).\n"
    return "\n".join(L) + "\n" + handshake_breakdown(runs)


def handshake_breakdown(runs):
    """The same split per plain ws handshake (handshake_ws runs for CPU,
    the syscalls_hs run for system calls), with what each proxy would cost
    relative to HAProxy if its user space took no time at all: the floor
    that the kernel's share sets for a ratio target."""
    L = ["### Per plain ws handshake\n",
         "User and system CPU of the proxy over the `handshake_ws` runs (medians), divided by the completed "
         "handshakes (TCP connect, upgrade, hello, one echo, close); system calls from a separate shorter "
         "run (`syscalls_hs`). The last column is the system time alone as a share of HAProxy's whole "
         "CPU per handshake: the ratio a proxy would reach with a user space that cost nothing.\n",
         "| proxy | user µs/handshake | system µs/handshake | system share | system calls/handshake | system alone / HAProxy total |",
         "|---|---|---|---|---|---|"]
    split = {}
    for proxy in CANDIDATES:
        row = cpu_split(runs, proxy, "handshake_ws", "syscalls_hs", "completed")
        if row is not None:
            split[proxy] = row
    if not split:
        return ""
    base = split.get("haproxy")
    base_total = base[0] + base[1] if base and base[0] is not None and base[1] is not None else None
    for proxy, (u, sy, c) in split.items():
        floor = f"{sy / base_total:.2f}×" if sy is not None and base_total else "—"
        L.append(f"| {NAMES[proxy]} | {fmt(u)} | {fmt(sy)} | {share_cell(u, sy)} | {fmt(c)} | {floor} |")
    return "\n".join(L) + "\n"


def instruction_counts():
    """bench/results/instructions.md (bench/callgrind.sh's table) when present."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results", "instructions.md")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return "## Instructions per handshake and per message (callgrind)\n\n" + f.read().strip() + "\n"


def extrapolation(med_of, a):
    n = 1_000_000
    ws, wss = med_of["rss_ws"].get("wsgate"), med_of["rss_wss"].get("wsgate")
    slabs = slab_sizes()
    per_sock = sum(slabs.values()) if slabs else 3800
    slab_txt = (" + ".join(f"{k} {v}" for k, v in slabs.items() if v) + f" = {per_sock} bytes") if slabs else "about 3.8 KB (estimate)"
    kern = 2 * per_sock
    port_range = read_int("/proc/sys/net/ipv4/ip_local_port_range") or ["32768", "60999"]
    ports = int(port_range[1]) - int(port_range[0]) + 1
    nr_open = (read_int("/proc/sys/fs/nr_open") or ["?"])[0]
    file_max = (read_int("/proc/sys/fs/file-max") or ["?"])[0]
    somax = (read_int("/proc/sys/net/core/somaxconn") or ["?"])[0]
    tcp_mem = " ".join(read_int("/proc/sys/net/ipv4/tcp_mem") or ["?"])

    def gib(b):
        return f"{b / 2**30:.1f} GiB"

    L = ["## Extrapolation to 1,000,000 connections on one larger machine\n"]
    L.append(f"From the measured wsgate medians above, at {a.idle_conns:,} connections (memory does not depend on the core "
             "count: one connection is two sockets and one task; CPU does, with one worker thread per core). Per-connection "
             "memory measured at a few thousand connections is assumed to stay flat up to a million; allocator "
             "fragmentation after churn can add to it, so keep the headroom.\n")
    L.append("| | per connection | 1,000,000 connections |")
    L.append("|---|---|---|")
    if ws is not None:
        L.append(f"| wsgate user space, ws (measured) | {ws:.1f} KiB | {gib(ws * 1024 * n)} |")
    if wss is not None:
        L.append(f"| wsgate user space, wss (measured) | {wss:.1f} KiB | {gib(wss * 1024 * n)} |")
    L.append(f"| kernel, idle: 2 TCP sockets (slab object sizes on this kernel: {slab_txt} per socket) | {kern / 1024:.1f} KiB | {gib(kern * n)} |")
    L.append(f"| kernel socket buffers while messages are in flight (a 64-byte message holds one skb, ~1–4 KiB; "
             "an idle socket holds none) | 0 idle, ~4–8 KiB busy | ~2–4 GiB if a quarter of the 2,000,000 sockets hold data at once |")
    if wss is not None:
        total = (wss * 1024 + kern) * n
        plan = math.ceil(total * 1.5 / 2**30 / 8) * 8
        L.append(f"| **total, wss, mostly idle** | | **~{gib(total)}; with headroom for busy sockets and reconnect waves, "
                 f"plan for {plan} GiB or more** |")
    L.append("")
    L.append(f"- **Descriptors.** Two per connection (client side and backend side): 2,000,000 plus listeners. "
             f"The per-process cap `fs.nr_open` is {nr_open} here (the kernel default 1,048,576), so raise it: "
             "`sysctl fs.nr_open=2100000`, then `LimitNOFILE=2100000` in the systemd unit (or `ulimit -n 2100000`), "
             f"and `fs.file-max` (here {file_max}) to at least 2,200,000. On this machine the hard limit is 20,000, "
             "which is why the measurements stop at 9,000 connections (18,000 descriptors in the proxy).")
    L.append(f"- **Ephemeral ports toward the backends.** Every backend connection takes a local port from "
             f"`net.ipv4.ip_local_port_range` ({port_range[0]}-{port_range[1]} here: {ports:,} ports) per "
             "(source address, backend address:port) pair. Widen it to `1024 65535` (64,512 ports) and make sure there are "
             "at least 16 backend address:port pairs (e.g. 20 backends of 50,000 users each), or backends listening on "
             "several ports, or several source addresses on the proxy. Clients need nothing: their addresses make each "
             "4-tuple unique. `net.ipv4.tcp_tw_reuse=1` lets reconnect storms reuse backend-side ports in TIME_WAIT.")
    L.append(f"- **TCP memory.** `net.ipv4.tcp_mem` is in pages ({tcp_mem} here, sized from RAM). With 2,000,000 "
             "sockets, even 2 KiB of queued data on 10% of them is 100,000 pages; set e.g. `tcp_mem = 1000000 1500000 2000000` "
             "(4/6/8 GiB) so the kernel does not enter memory pressure and start collapsing queues. Buffers are "
             "allocated only while data is queued, so `tcp_rmem`/`tcp_wmem` bound the worst case rather than the idle "
             "cost; lowering the defaults (e.g. `tcp_rmem = 4096 16384 4194304`, `tcp_wmem = 4096 16384 4194304`) "
             "keeps a burst on many sockets at once from exhausting `tcp_mem`; chat messages need no large windows.")
    L.append(f"- **Accept queue.** `net.core.somaxconn` ({somax} here) and `net.ipv4.tcp_max_syn_backlog` to 65535, so a "
             "reconnect wave after a restart (which wsgate paces anyway) is not dropped at the listener.")
    L.append("- **Connection tracking.** If `nf_conntrack` is loaded, every connection is tracked twice: "
             "raise `net.netfilter.nf_conntrack_max` to 2,500,000 (~300 bytes each, ~0.7 GiB) or exempt the proxy's "
             "ports with `notrack`.")
    cpu_msg = med_of["cpu_wss"].get("wsgate")
    cpu_hs = med_of["hs_cpu"].get("wsgate")
    heartbeat = (f" At the measured {cpu_msg:.1f} µs per echoed wss message, the heartbeats alone take about "
                 f"{40_000 * cpu_msg / 1e6:.1f} cores.") if cpu_msg else ""
    wave = (f" A reconnect wave of 10,000 full TLS handshakes per second costs about {10_000 * cpu_hs / 1000:.1f} cores "
            f"at the measured {cpu_hs:.2f} ms each.") if cpu_hs else ""
    L.append("- **CPU.** An idle connection still carries its heartbeat: `chat-backend` pings every 25 s, so 1,000,000 "
             "connections make 40,000 pings and 40,000 pongs per second through the proxy." + heartbeat
             + " Add the expected message rate times the CPU per message." + wave
             + " wsgate runs one worker thread per core, so these add up across cores.")
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------- brief line
def brief(line, rep, proxy, test, status):
    try:
        s = json.loads(line)
    except (TypeError, ValueError):
        s = None
    head = f"  rep {rep} {proxy:<7} {test:<13} exit {status}"
    if not s:
        print(head + ": no summary")
        return
    ok = "ok" if s.get("ok") else "NOT OK " + json.dumps((s.get("errors") or {}).get("kinds", {}))
    if s.get("error"):
        print(f"{head}: {ok}: {s['error']}")
    elif s.get("mode") == "rate":
        print(f"{head}: {ok}; cpu/msg {s.get('cpu_us_per_msg')} µs, p50 {s['rtt_us']['p50']} µs, p99 {s['rtt_us']['p99']} µs, "
              f"lost {s.get('lost')}, gen cpu {s.get('generator_cpu_s')} s / {s.get('elapsed_s')} s")
    elif s.get("mode") == "idle":
        r = rss_after_hold(s)
        print(f"{head}: {ok}; connected {s.get('connected')}, open at end {s.get('open_at_hold_end')}, verify {s.get('verify')}, "
              f"ramp {s.get('ramp_s')} s, rss/conn held {s.get('rss_bytes_per_conn')} B, after hold {r and round(r)} B, "
              f"closes {s.get('closes')} {s.get('close_codes')}")
    elif s.get("mode") == "h2":
        h1, h2 = s.get("handshake_h1") or {}, s.get("handshake_h2") or {}
        print(f"{head}: {ok}; cpu/handshake wss {h1.get('cpu_us_per_handshake')} µs, h2 {h2.get('cpu_us_per_handshake')} µs "
              f"(h2/wss {s.get('handshake_cpu_ratio_h2_h1')}); idle KiB/ws wss {s.get('idle_kib_per_ws_h1')}, "
              f"h2 {s.get('idle_kib_per_ws_h2')} (h2/wss {s.get('idle_memory_ratio_h2_h1')})")
    elif s.get("mode") == "handshake":
        print(f"{head}: {ok}; {s.get('completed')} done, {s.get('handshakes_per_s')}/s, cpu/handshake {s.get('cpu_us_per_handshake')} µs")
    else:
        print(f"{head}: {ok}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--brief":
        brief(*sys.argv[2:7])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--raw", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--chart-spec", required=True)
    p.add_argument("--chart", required=True)
    p.add_argument("--chart-bin", required=True)
    p.add_argument("--elapsed", type=float, default=0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", default="0")
    p.add_argument("--proxy-cpu", default="1")
    p.add_argument("--load-cpu", default="0")
    p.add_argument("--idle-conns", type=int, default=9000)
    p.add_argument("--idle-hold", default="15s")
    p.add_argument("--rate", type=int, default=20000)
    p.add_argument("--rate-conns", type=int, default=200)
    p.add_argument("--rate-duration", default="10s")
    p.add_argument("--rate-warmup", default="2s")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--hs-duration", default="8s")
    p.add_argument("--hs-concurrency", type=int, default=4)
    p.add_argument("--drain-conns", type=int, default=9000)
    p.add_argument("--drain-window", type=int, default=30)
    p.add_argument("--nofile", type=int, default=20000)
    p.add_argument("--h2-handshakes", type=int, default=2000)
    p.add_argument("--h2-conns", type=int, default=4000)
    p.add_argument("--workdir", default="")
    p.add_argument("--commit", default="")
    p.add_argument("--dirty-file", default="")
    p.add_argument("--no-build", default="0")
    write_report(p.parse_args())


if __name__ == "__main__":
    main()
