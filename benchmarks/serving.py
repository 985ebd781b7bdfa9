"""The model server under load (docs/benchmarks.md, section 8): ``mlflow models serve`` as the
team stack shipped it (one worker) against ``dae serve`` (a worker per core, a request-size
limit), both on one registered model, loaded in turn by the same clients: for 1-image and
100-image requests at 1, 8 and 32 concurrent clients, throughput (requests and images per
second), p50/p99 latency and every non-200 answer or client error.

    python benchmarks/serving.py --data-dir ../shared/data [--seconds 10] [--clients 1 8 32]

Needs ``hey`` (Debian: ``apt-get install hey``), the load generator. A smoke model is
trained and registered into a temporary store first (~20 s). Each load runs ``--seconds``;
the two servers take turns at each setting, so a slow spell of the machine hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
MODEL = "models:/dae-mnist-classifier@champion"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def load(url: str, body: Path, clients: int, seconds: int) -> dict[str, float | str]:
    """One ``hey`` run: its summary parsed."""
    done = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(clients), "-t", "20", "-m", "POST",
                           "-T", "application/json", "-D", str(body), f"{url}/invocations"],
                          capture_output=True, text=True, check=True)
    out = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    percentiles = dict(re.findall(r"(\d+)% in ([\d.]+) secs", out))
    statuses = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    _, _, error_lines = out.partition("Error distribution:")
    errors = sum(int(count) for count in re.findall(r"^\s+\[(\d+)\]\s", error_lines, re.MULTILINE))
    non_200 = sum(int(count) for status, count in statuses.items() if status != "200")
    return {"requests_per_s": rate, "p50_ms": 1000 * float(percentiles.get("50", "nan")),
            "p99_ms": 1000 * float(percentiles.get("99", "nan")), "non_200": non_200, "client_errors": errors}


def bodies(folder: Path) -> dict[int, Path]:
    rng = random.Random(0)
    paths = {}
    for images in (1, 100):
        rows = [[round(rng.random(), 3) for _ in range(784)] for _ in range(images)]
        paths[images] = folder / f"{images}.json"
        paths[images].write_text(json.dumps({"inputs": rows}))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("benchmarks/serving.py needs hey, the load generator: apt-get install hey")
    with tempfile.TemporaryDirectory(prefix="dae-serving-") as scratch_name:
        scratch = Path(scratch_name)
        env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
        # PATH: `mlflow models serve` runs `uvicorn` by name.
        env.update(MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}", PREFECT_HOME=str(scratch / "prefect"),
                   DAE_WORK_DIR=str(scratch / "work"), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        subprocess.run([str(BIN / "dae"), "run", "--preset", "smoke", "--data-dir", str(args.data_dir.resolve()),
                        "--no-download"], cwd=scratch, env=env, check=True, capture_output=True)
        ports = {"mlflow models serve (1 worker, as shipped)": free_port(), "dae serve": free_port()}
        commands = {
            "mlflow models serve (1 worker, as shipped)": [
                str(BIN / "mlflow"), "models", "serve", "--model-uri", MODEL, "--env-manager", "local",
                "--host", "127.0.0.1", "--workers", "1"],
            "dae serve": [str(BIN / "dae"), "serve", "--host", "127.0.0.1"],
        }
        servers = {}
        try:
            for name, command in commands.items():
                servers[name] = subprocess.Popen([*command, "--port", str(ports[name])], cwd=scratch,
                                                 env={**env, "MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"},
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, process in servers.items():
                wait_until_up(f"http://127.0.0.1:{ports[name]}", process)
            results = []
            print(f"{os.cpu_count()} cores; {args.seconds} s per load\n")
            print("| images per request | clients | server | images/s | requests/s | p50 | p99 | errors |")
            print("|---|---|---|---|---|---|---|---|")
            for images, body in bodies(scratch).items():
                for clients in args.clients:
                    for name in servers:
                        measured = load(f"http://127.0.0.1:{ports[name]}", body, clients, args.seconds)
                        results.append({"server": name, "images": images, "clients": clients, **measured})
                        print(f"| {images} | {clients} | {name} | **{measured['requests_per_s'] * images:,.0f}** | "
                              f"{measured['requests_per_s']:,.1f} | {measured['p50_ms']:.0f} ms | "
                              f"{measured['p99_ms']:.0f} ms | {measured['non_200']} non-200, "
                              f"{measured['client_errors']} client errors |", flush=True)
            oversized = scratch / "oversized.json"
            oversized.write_text(json.dumps({"inputs": [[0.5] * 784] * 20_000}))  # ~62 MB
            for name in servers:
                request = urllib.request.Request(f"http://127.0.0.1:{ports[name]}/invocations",
                                                 data=oversized.read_bytes(),
                                                 headers={"Content-Type": "application/json"})
                started = time.perf_counter()
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        status = response.status
                except urllib.error.HTTPError as error:
                    status = error.code
                except OSError as error:  # cut off while sending
                    status = f"no answer ({error})"
                print(f"\n{name}: a 20,000-image request ({oversized.stat().st_size / 1e6:.0f} MB) -> HTTP {status} "
                      f"in {time.perf_counter() - started:.2f} s")
                results.append({"server": name, "oversized_status": status})
        finally:
            for process in servers.values():
                process.terminate()
                process.wait(timeout=30)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
