#!/usr/bin/env python3
"""Load test of a deployed polypi: certs + dealer + server, then N concurrent clients.

For each N in --n, a FRESH dealer + server pair is started (so the peak RSS figures belong to that
N alone), then N client threads each run --queries queries one after the other; one query = one
`polypi query --json` process with one sample image (rotating through data/samples/*.png), i.e. a
full session: TLS handshakes to the server and the dealer, session setup, one private inference.

Measured per N: ok/failed queries (failure = non-zero exit or unreadable JSON; stderr kept),
queries/s (ok queries / wall time of the whole N step), p50/p95 per-query latency (wall time of
the query process, ok queries only), peak RSS (VmHWM) of the server and the dealer, and the largest
peak RSS of any client process (ru_maxrss from wait4 of each client).

Standard library only. See scripts/load.sh and docs/serving.md.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine():
    info = {"cpus": os.cpu_count()}
    try:
        txt = open("/proc/cpuinfo").read()
        m = re.search(r"^model name\s*:\s*(.*)$", txt, re.M)
        info["cpu"] = m.group(1).strip() if m else "?"
        flags = set(re.findall(r"\b(avx2|avx512f)\b", txt))
        info["features"] = sorted(flags)
    except OSError:
        pass
    try:
        info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    return info


def proc_status_kb(pid, key):
    """VmRSS / VmHWM of a live process, kB (None if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid):
    """user + system CPU seconds of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tck
    except (OSError, IndexError, ValueError):
        return None


class Daemon:
    """A `polypi serve` / `polypi dealer` process with stdout in a file, its RSS polled."""

    def __init__(self, name, argv, workdir):
        self.name = name
        self.out_path = os.path.join(workdir, f"{name}.out")
        self.err_path = os.path.join(workdir, f"{name}.err")
        self.out = open(self.out_path, "w")
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.err, cwd=ROOT,
                                     stdin=subprocess.DEVNULL)
        self.peak_rss_kb = 0
        self.stop_poll = threading.Event()
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self.poller.start()

    def _poll(self):
        while not self.stop_poll.is_set():
            v = proc_status_kb(self.proc.pid, "VmRSS")
            if v is not None:
                self.peak_rss_kb = max(self.peak_rss_kb, v)
            self.stop_poll.wait(0.05)

    def address(self, timeout=30.0):
        """The address from the first stdout line `listening on ADDR`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   + open(self.err_path).read()[-2000:])
            with open(self.out_path) as f:
                line = f.readline()
            if line.endswith("\n"):
                m = re.match(r"listening on (\S+)", line)
                if not m:
                    raise RuntimeError(f"{self.name}: unexpected first line {line!r}")
                return m.group(1)
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not print its address within {timeout} s")

    def stop(self):
        """Reads VmHWM, stops the process, returns (hwm_kb, cpu_s, stdout lines)."""
        hwm = proc_status_kb(self.proc.pid, "VmHWM")
        cpu = proc_cpu_s(self.proc.pid)
        self.stop_poll.set()
        self.poller.join()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        self.err.close()
        with open(self.out_path) as f:
            lines = f.read().splitlines()
        return max(hwm or 0, self.peak_rss_kb), cpu, lines


def run_query(argv):
    """One client process: (ok, seconds, maxrss_kb, error text, class)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    rss = ru.ru_maxrss  # kB on Linux
    if p.returncode != 0:
        return False, dt, rss, f"exit {p.returncode}: {stderr.strip()}", None
    try:
        doc = json.loads(stdout)
        cls = doc["results"][0]["class"]
    except (ValueError, KeyError, IndexError) as e:
        return False, dt, rss, f"bad JSON ({e}): {stdout[:200]!r} {stderr.strip()}", None
    return True, dt, rss, None, cls


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_n(args, n, tls, samples, workdir):
    d = Daemon(f"dealer-n{n}", [args.binary, "dealer", "--listen", "127.0.0.1:0",
                                "--tls-dir", tls] + args.dealer_opt, workdir)
    daddr = d.address()
    s = Daemon(f"server-n{n}", [args.binary, "serve", "--model", args.model,
                                "--listen", "127.0.0.1:0", "--dealer", daddr,
                                "--tls-dir", tls] + args.server_opt, workdir)
    try:
        saddr = s.address()
    except Exception:
        d.stop()
        raise
    results = []  # (ok, dt, rss, err, cls, image)
    lock = threading.Lock()
    start = threading.Barrier(n + 1)

    def client(i):
        start.wait()
        for q in range(args.queries):
            img = samples[(i * args.queries + q) % len(samples)]
            argv = [args.binary, "query", "--connect", saddr, "--dealer", daddr,
                    "--tls-dir", tls, "--input", img, "--json"] + args.query_opt
            r = run_query(argv)
            with lock:
                results.append(r + (os.path.basename(img),))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    time.sleep(0.2)  # let the last session lines reach the files
    s_rss, s_cpu, s_lines = s.stop()
    d_rss, d_cpu, d_lines = d.stop()
    ok = [r for r in results if r[0]]
    bad = [r for r in results if not r[0]]
    lat = [r[1] for r in ok]
    errors = {}
    for r in bad:
        # group by the first `error:` line (ports differ between runs: keep the text as is)
        first = next((l for l in r[3].splitlines() if "error" in l), r[3].splitlines()[0]
                     if r[3] else "?")
        errors[first] = errors.get(first, 0) + 1
    classes = {}
    for r in ok:
        classes.setdefault(r[5], set()).add(r[4])
    row = {
        "n": n,
        "queries": len(results),
        "ok": len(ok),
        "failed": len(bad),
        "wall_s": wall,
        "qps": len(ok) / wall if wall > 0 else 0.0,
        "p50_ms": percentile(lat, 0.5) * 1e3,
        "p95_ms": percentile(lat, 0.95) * 1e3,
        "max_ms": max(lat) * 1e3 if lat else float("nan"),
        "server_peak_rss_mb": s_rss / 1024,
        "dealer_peak_rss_mb": d_rss / 1024,
        "client_peak_rss_mb": max((r[2] for r in results), default=0) / 1024,
        "server_cpu_s": s_cpu,
        "dealer_cpu_s": d_cpu,
        "server_sessions": sum(1 for l in s_lines if l.startswith("session ")),
        "server_refused": sum(1 for l in s_lines if l.startswith("refused")),
        "server_failed_sessions": sum(1 for l in s_lines if ", failed:" in l),
        # the dealer prints finished sessions only (a pair it refuses as busy is logged at -v)
        "dealer_sessions": sum(1 for l in d_lines if l.startswith("session ")),
        "dealer_failed_sessions": sum(1 for l in d_lines if ", failed:" in l),
        "errors": errors,
        "classes_per_image": {k: sorted(v) for k, v in sorted(classes.items())},
    }
    if bad:
        row["stderr_examples"] = [r[3][-1500:] for r in bad[:3]]
        row["server_stdout_refused_examples"] = [l for l in s_lines if l.startswith("refused")][:3]
    return row


def table(rows):
    out = ["| N clients | queries ok / failed | queries/s | p50 ms | p95 ms | peak RSS server MB "
           "| peak RSS dealer MB | peak RSS client MB |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['n']} | {r['ok']} / {r['failed']} | {r['qps']:.2f} | "
                   f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['server_peak_rss_mb']:.0f} | "
                   f"{r['dealer_peak_rss_mb']:.0f} | {r['client_peak_rss_mb']:.0f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/netm-x2act-fmnist.safetensors")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 32, 128],
                    help="numbers of concurrent clients (default 1 2 4 8 32 128)")
    ap.add_argument("--queries", type=int, default=20, help="queries per client (default 20)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/polypi"))
    ap.add_argument("--json-out", help="write all rows (and the machine) as JSON here")
    ap.add_argument("--server-opt", action="append", default=[],
                    help="extra option for `polypi serve` (repeat; e.g. "
                         "--server-opt=--max-concurrent --server-opt=128)")
    ap.add_argument("--dealer-opt", action="append", default=[],
                    help="extra option for `polypi dealer` (repeat)")
    ap.add_argument("--query-opt", action="append", default=[],
                    help="extra option for `polypi query` (repeat)")
    ap.add_argument("--samples", default=os.path.join(ROOT, "data/samples"))
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (daemon stdout/stderr, certificates)")
    args = ap.parse_args()
    args.binary = os.path.abspath(args.binary)
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"error: {args.binary} is not an executable; build it with "
                 "`cargo build --release -p polypi-cli` or pass --binary")
    args.model = os.path.abspath(args.model)
    samples = sorted(glob.glob(os.path.join(args.samples, "*.png")))
    if not samples:
        sys.exit(f"error: no *.png in {args.samples}")
    if max(args.n) > 200:
        print("note: many clients: the file-descriptor and thread limits may bite", file=sys.stderr)
    workdir = tempfile.mkdtemp(prefix="polypi-load-")
    try:
        tls = os.path.join(workdir, "tls")
        subprocess.run([args.binary, "certs", "--out", tls], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        info = machine()
        rows = []
        for n in args.n:
            print(f"N={n}: {n} clients x {args.queries} queries ...", file=sys.stderr, flush=True)
            row = one_n(args, n, tls, samples, workdir)
            print(f"  ok {row['ok']} failed {row['failed']}, {row['qps']:.2f} q/s, "
                  f"p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, "
                  f"server {row['server_peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
            for e, c in row["errors"].items():
                print(f"  {c} x {e}", file=sys.stderr)
            rows.append(row)
        info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        print(f"model {os.path.relpath(args.model, ROOT)}, {args.queries} queries per client, "
              f"fresh server+dealer per N, server options {' '.join(args.server_opt) or '(defaults)'}")
        print()
        print(table(rows))
        failed = [r for r in rows if r["failed"]]
        for r in failed:
            print(f"\nN={r['n']}: {r['failed']} failed queries:")
            for e, c in r["errors"].items():
                print(f"  {c} x {e}")
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"model": os.path.relpath(args.model, ROOT), "queries": args.queries,
                           "server_opt": args.server_opt, "dealer_opt": args.dealer_opt,
                           "machine": info, "rows": rows}, f, indent=1)
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
