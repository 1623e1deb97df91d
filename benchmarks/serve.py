"""Serving benchmark: requests/s and p50/p99 latency of ``podium serve`` under a bounded local load.

    python benchmarks/serve.py --duration 10 --clients 4 --max-requests 20000
    python benchmarks/serve.py --compare-mlflow        # also MLflow's own scoring server

What it does: trains the default digits MLP (64-128-64-10) for a few epochs, exports it to ONNX,
starts ``python -m tracking.serving.server`` on 127.0.0.1 as a subprocess and drives it from
``--clients`` threads, each on its own keep-alive connection, sending batch-1 ``{"inputs": [<one
1x8x8 image>]}`` requests until ``--duration`` seconds or ``--max-requests`` requests, whichever
comes first. Latency is measured at the client (request sent to response read). With
``--compare-mlflow`` the same ONNX model, logged with ``mlflow.onnx``, is served by ``mlflow models
serve --env-manager local`` and driven the same way. Client and server share this machine's cores:
the numbers are a lower bound of what a separate client would see. Prints a table and one JSON line
per server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_and_export(folder: Path, epochs: int) -> tuple[Path, list]:
    import torch

    from workers.models import build_model
    from workers.tasks import load_task

    data = load_task("digits", 0)
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "hidden": [128, 64]}, data.input_shape, data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    for _ in range(epochs):
        for i in range(0, len(data.x_train), 64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                model(data.x_train[i : i + 64]), data.y_train[i : i + 64]
            )
            loss.backward()
            opt.step()
    model.eval()
    path = folder / "model.onnx"
    torch.onnx.export(
        model,
        (data.x_test[:2],),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}},
        dynamo=False,
    )
    # Shaped examples (1x8x8): MLflow's server feeds them to the graph as they come.
    return path, data.x_test[:256].tolist()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ping(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("server did not answer /ping")


def drive(port: int, rows: list, clients: int, duration: float, max_requests: int) -> dict:
    """Bounded closed-loop load: ``clients`` threads, each one request in flight at a time."""
    bodies = [json.dumps({"inputs": [r]}).encode() for r in rows]
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    first_error: dict[str, str] = {}
    budget = threading.Semaphore(max_requests)
    stop_at = time.perf_counter() + duration

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = k
        while time.perf_counter() < stop_at and budget.acquire(blocking=False):
            body = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
            lat[k].append((time.perf_counter() - t0) * 1e3)
            if resp.status != 200 or b"predictions" not in payload:
                errors[k] += 1
                first_error.setdefault("body", payload[-700:].decode(errors="replace"))
            i += clients
        conn.close()

    for _ in range(20):  # warm-up: sessions, connections, first-call allocations
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/invocations", bodies[0], {"Content-Type": "application/json"})
        c.getresponse().read()
        c.close()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_lat = sorted(x for lst in lat for x in lst)
    n = len(all_lat)
    return {
        "requests": n,
        "errors": sum(errors),
        "wall_s": round(wall, 2),
        "requests_per_s": round(n / wall, 1),
        "p50_ms": round(statistics.median(all_lat), 3),
        "p99_ms": round(all_lat[min(n - 1, int(0.99 * n))], 3),
        "clients": clients,
        **({"first_error": first_error["body"]} if first_error else {}),
    }


def run_server(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_ping(port, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per server")
    ap.add_argument("--max-requests", type=int, default=20000, help="request cap per server")
    ap.add_argument("--clients", type=int, default=4, help="concurrent keep-alive clients")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument(
        "--compare-mlflow", action="store_true", help="also bench `mlflow models serve`"
    )
    args = ap.parse_args()
    # mlflow models serve execs `uvicorn` by name: the venv's bin must be on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PATH": path,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="podium-bench-serve-") as tmp:
        onnx_path, rows = train_and_export(Path(tmp), args.epochs)

        def serve_and_drive(command: list[str]) -> dict:
            """Start a server (the ``{port}`` argument becomes a free port), load it, stop it."""
            port = free_port()
            proc = run_server([str(port) if c == "{port}" else c for c in command], port, env)
            try:
                return drive(port, rows, args.clients, args.duration, args.max_requests)
            finally:
                stop(proc)

        results["podium serve (ONNX Runtime, uvicorn)"] = serve_and_drive(
            [
                sys.executable,
                "-m",
                "tracking.serving.server",
                str(onnx_path.parent),
                "--port",
                "{port}",
            ]
        )
        if args.compare_mlflow:
            import mlflow.onnx
            import numpy as np
            import onnx
            from mlflow.models import infer_signature

            model_dir = Path(tmp) / "mlflow-model"
            # A float32 tensor signature, so MLflow casts JSON numbers to what the graph takes.
            x = np.asarray(rows[:2], dtype=np.float32)
            sig = infer_signature(x, np.zeros((2, 10), dtype=np.float32))
            mlflow.onnx.save_model(onnx.load(str(onnx_path)), str(model_dir), signature=sig)
            mlflow_cli = str(Path(sys.executable).parent / "mlflow")
            results["mlflow models serve (same ONNX)"] = serve_and_drive(
                [mlflow_cli, "models", "serve", "-m", str(model_dir), "--env-manager", "local"]
                + ["-h", "127.0.0.1", "-p", "{port}"]
            )
    print(f"{'server':<52} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'errors':>6}")
    for name, r in results.items():
        print(
            f"{name:<52} {r['requests_per_s']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} "
            f"{r['requests']:>9} {r['errors']:>6}"
        )
    for name, r in results.items():
        print(json.dumps({"server": name, **r, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
