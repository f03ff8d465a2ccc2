"""The model server over loopback HTTP: requests per second and latency of ``predict``.

    python benchmarks/server.py [--quick] [--models cnn-digits lenet-mnist] [--clients 2]

A real uvicorn on 127.0.0.1 (``maestro.server.local.background_server``, SQLite in a temporary
course directory, a student token, rate limit off, no budget) serves ``predict`` for zoo models.
The load comes from SEPARATE processes (``multiprocessing``, spawn): ``--clients`` workers, each
a closed loop of requests over one keep-alive connection (the standard library's http.client, or
httpx with ``--client httpx``), each stopping by itself after a bounded number of requests or a
bounded time. Request bodies are serialized once up front, so the client's own cost is small;
latency is the wall time of one request as the client sees it.

For batch 1 and batch 64, JSON lists, base64 ``.npy`` (``{"npy_b64": ...}`` in and
``?format=npy`` out) and raw ``.npy`` bodies (``application/x-npy`` both ways) side by side:
requests per second, inputs per second, p50 and p99 latency. Then, at batch 64, the in-process
``ModelWrapper.predict`` throughput on the same inputs (same process as the server, same torch
threads, measured while the server is idle right before and right after each HTTP run, the mean
of the two medians, so slow drifts in the machine's load hit both sides alike) and the ratio
in-process ÷ HTTP inputs per second (target ≤ 1.5: HTTP costs at most half as much again as
calling the model in-process). Last, per model, one process calling
``maestro.remote.connect(...).predict(x)`` on the batch of 64 in a closed loop: what a student's
notebook sees, the client's own checks and serialization included.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DATASET = {"cnn-digits": "digits", "lenet-mnist": "mnist"}
NPY = "application/x-npy"
ENCODINGS = ("json", "npy", "raw")


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def _headers(token: str, enc: str) -> dict:
    if enc == "raw":
        return {"Authorization": f"Bearer {token}", "Content-Type": NPY, "Accept": NPY}
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def _stdlib_client(url: str):
    """maestro.remote's standard-library transport (``maestro._http``: http.client, one
    keep-alive connection), as a ``post(path, content, headers) -> (status, body)`` function."""
    from maestro._http import HTTPClient

    http = HTTPClient(url, timeout=60)

    def post(path, content, headers):
        r = http.request("POST", path, content=content, headers=headers)
        return r.status_code, r.content

    return post


def _httpx_client(url: str):
    import httpx

    http = httpx.Client(base_url=url, timeout=60)

    def post(path, content, headers):
        r = http.post(path, content=content, headers=headers)
        return r.status_code, r.content

    return post


def _worker(url: str, path: str, body: bytes, headers: dict, max_requests: int, max_seconds: float,
            client: str, out) -> None:
    """One client process: a closed loop of POSTs; sends back the latencies (seconds)."""
    post = (_httpx_client if client == "httpx" else _stdlib_client)(url)

    lat, errors = [], []
    status, answer = post(path, body, headers)  # warm the connection
    assert status == 200, answer[:200]
    out.put(("ready", None))
    start = time.perf_counter()
    while len(lat) + len(errors) < max_requests and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        status, answer = post(path, body, headers)
        t1 = time.perf_counter()
        if status == 200:
            lat.append(t1 - t0)
        else:
            errors.append(f"{status} {answer[:200]!r}")
    out.put(("done", (lat, errors, time.perf_counter() - start)))


def _load(target, args: tuple, clients: int, max_seconds: float) -> dict:
    """Start ``clients`` processes of ``target(*args, queue)``; each sends "ready", then "done"
    with (latencies, error answers, wall seconds). Requests/s and latency percentiles."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = []
    while len(results) < clients:
        kind, value = out.get(timeout=max_seconds + 120)
        if kind == "done":
            results.append(value)
    for p in procs:
        p.join(30)
    lat = np.array([x for r in results for x in r[0]])
    errors = [e for r in results for e in r[1]]
    wall = max(r[2] for r in results)  # the workers start together after their warm-up
    return {"requests": len(lat), "errors": len(errors), "error_answers": sorted(set(errors)), "rps": len(lat) / wall,
            "p50_ms": 1e3 * float(np.percentile(lat, 50)), "p99_ms": 1e3 * float(np.percentile(lat, 99))}


def _remote_worker(url: str, token: str, task: str, x: np.ndarray, max_requests: int, max_seconds: float,
                   out) -> None:
    """``maestro.remote.connect(...).predict(x)`` in a closed loop (client checks included)."""
    import torch

    import maestro

    torch.set_num_threads(1)
    oracle = maestro.remote.connect(url, token, task)
    xt = torch.from_numpy(x)
    oracle.predict(xt)
    out.put(("ready", None))
    lat, start = [], time.perf_counter()
    while len(lat) < max_requests and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        oracle.predict(xt)
        lat.append(time.perf_counter() - t0)
    out.put(("done", (lat, [], time.perf_counter() - start)))


def _in_process(model, x, seconds: float, min_calls: int) -> float:
    """ModelWrapper.predict inputs per second on batch ``x`` (median of 5 timed blocks)."""
    for _ in range(3):
        model.predict(x)
    calls = max(min_calls, 1)
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            model.predict(x)
        rates.append(calls * len(x) / (time.perf_counter() - start))
        if time.perf_counter() - start > seconds:
            break
    return statistics.median(rates)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="cnn-digits only, fewer requests")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--clients", type=int, default=2, help="load-generating processes")
    ap.add_argument("--requests", type=int, default=None, help="requests per client and setting")
    ap.add_argument("--seconds", type=float, default=None, help="time limit per client and setting")
    ap.add_argument("--encodings", nargs="+", default=list(ENCODINGS), choices=ENCODINGS,
                    help="json: nested lists; npy: {\"npy_b64\": ...} in JSON; raw: application/x-npy both ways")
    ap.add_argument("--client", choices=("http.client", "httpx"), default="http.client",
                    help="the load generator's HTTP library (httpx: what maestro.remote uses)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (0: torch's default)")
    args = ap.parse_args(argv)
    models = args.models or (["cnn-digits"] if args.quick else ["cnn-digits", "lenet-mnist"])
    max_requests = args.requests or (60 if args.quick else 400)
    max_seconds = args.seconds or (5.0 if args.quick else 20.0)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import maestro
    from maestro.server import ServerConfig, create_app
    from maestro.server.local import background_server

    tasks = "\n".join(f'[tasks.{m}]\nmodel = "{m}"\ndataset = "{DATASET[m]}"\naccess = "labels"\n' for m in models)
    rows = []
    with tempfile.TemporaryDirectory() as course:
        Path(course, "server.toml").write_text(
            f'[server]\ndatabase = "bench.db"\nrate_limit = 0\nmax_body_bytes = 50_000_000\n\n{tasks}')
        app = create_app(ServerConfig.load(course))
        token = app.state.store.create_token("bench-student")
        with background_server(app) as url:
            for name in models:
                served = app.state.served[name].model
                data = maestro.datasets.load(DATASET[name], split="test")
                x64 = data.x[:64].float()
                timing = {"seconds": 3.0 if args.quick else 8.0, "min_calls": 5 if args.quick else 20}
                for batch in (1, 64):
                    x = x64[:batch].numpy()
                    want = served.predict(x64[:batch]).tolist()
                    for enc in args.encodings:
                        if enc == "raw":
                            body = _npy_bytes(x)
                        else:
                            inputs = x.tolist() if enc == "json" else {"npy_b64": _npy(x)}
                            body = json.dumps({"inputs": inputs}).encode()
                        path = f"/v1/tasks/{name}/predict" + ("?format=npy" if enc == "npy" else "")
                        headers = _headers(token, enc)
                        # the answer over HTTP is the in-process answer
                        import httpx

                        r = httpx.post(url + path, content=body, timeout=60, headers=headers)
                        r.raise_for_status()
                        if enc == "raw":
                            got = np.load(io.BytesIO(r.content), allow_pickle=False).tolist()
                        else:
                            got = r.json()["outputs"]
                        if enc == "npy":
                            got = np.load(io.BytesIO(base64.b64decode(got["npy_b64"])), allow_pickle=False).tolist()
                        assert got == want, (name, batch, enc)
                        before = _in_process(served, x64, **timing) if batch == 64 else None
                        res = _load(_worker, (url, path, body, headers, max_requests, max_seconds, args.client),
                                    args.clients, max_seconds)
                        direct = (before + _in_process(served, x64, **timing)) / 2 if batch == 64 else None
                        row = {"model": name, "batch": batch, "encoding": enc, "body_kb": len(body) / 1024, **res,
                               "inputs_per_s": res["rps"] * batch}
                        if batch == 64:
                            row["in_process_inputs_per_s"] = direct
                            row["ratio"] = direct / row["inputs_per_s"]
                        rows.append(row)
                        print(_fmt(row), flush=True)
                if "raw" in args.encodings:  # what a student's notebook sees: maestro.remote, one caller
                    before = _in_process(served, x64, **timing)
                    res = _load(_remote_worker, (url, token, name, x64.numpy(), max_requests, max_seconds), 1, max_seconds)
                    direct = (before + _in_process(served, x64, **timing)) / 2
                    row = {"model": name, "batch": 64, "encoding": "maestro.remote", "body_kb": rows[-1]["body_kb"],
                           **res, "inputs_per_s": res["rps"] * 64, "in_process_inputs_per_s": direct}
                    row["ratio"] = direct / row["inputs_per_s"]
                    rows.append(row)
                    print(_fmt(row), flush=True)
        app.state.store.close()
    load = os.getloadavg()
    print(f"\ntorch {torch.__version__}, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, "
          f"{args.clients} client process(es) on {args.client}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("\n" + _table(rows))
    return rows


def _fmt(r: dict) -> str:
    extra = f" in-process {r['in_process_inputs_per_s']:.0f}/s ratio {r['ratio']:.2f}" if "ratio" in r else ""
    return (f"{r['model']} batch {r['batch']} {r['encoding']}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
            f"p99 {r['p99_ms']:.2f} ms ({r['requests']} requests, {r['errors']} errors){extra}"
            + "".join(f"\n    error answer: {e}" for e in r["error_answers"]))


def _table(rows: list[dict]) -> str:
    lines = ["| model | batch | encoding | body KiB | requests (errors) | req/s | inputs/s | p50 ms | p99 ms "
             "| in-process inputs/s | in-process ÷ HTTP (≤ 1.5) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ip = f"{r['in_process_inputs_per_s']:.0f}" if "ratio" in r else ""
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        lines.append(f"| {r['model']} | {r['batch']} | {r['encoding']} | {r['body_kb']:.1f} | {r['requests']} ({r['errors']}) "
                     f"| {r['rps']:.0f} | {r['inputs_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ip} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
