"""Runs a real MLflow tracking server (sqlite, loopback), posts each case's OTLP request to its
/v1/traces, and compares what MlflowClient().get_trace() returns with the trace traceloom built
from the same request.

Usage: server_compare.py CASES_DIR   (CASES_DIR holds NAME.pb and NAME.traceloom.json pairs)
Prints one JSON line {"cases": n, "problems": [...]}; exits 1 when a difference is unexplained.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from mlflow import MlflowClient

# Fields set aside, each for a stated reason (see tests/it/mlflow_oracle.rs).
SERVER_ONLY_TAGS = {"mlflow.artifactLocation", "mlflow.trace.spansLocation"}
COST = {"mlflow.trace.cost", "mlflow.llm.cost"}
TRACELOOM_ONLY_METADATA = {"mlflow.trace_schema.version", "mlflow.traceInputs", "mlflow.traceOutputs"}
TRACELOOM_ONLY_TAGS = {"mlflow.traceName", "traceloom.services"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url, proc, seconds=90):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not come up")


def decoded(value):
    """Attribute values compare as MLflow readers see them (json.loads, else raw): the REST read
    path re-serializes JSON text with Python's default separators."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def comparable(trace, exceptions):
    info = dict(trace["info"])
    info.pop("trace_location", None)  # the header's experiment, passed through
    metadata = {k: v for k, v in info.get("trace_metadata", {}).items()
                if k not in COST and k not in TRACELOOM_ONLY_METADATA}
    tags = {k: v for k, v in info.get("tags", {}).items()
            if k not in SERVER_ONLY_TAGS and k not in TRACELOOM_ONLY_TAGS and k not in exceptions}
    info["trace_metadata"], info["tags"] = metadata, tags
    spans = []
    for span in trace["data"]["spans"]:
        span = dict(span)
        span["attributes"] = {k: decoded(v) for k, v in span["attributes"].items()
                              if k not in COST and k not in exceptions}
        spans.append(span)
    return {"info": info, "spans": spans}


def main(cases_dir):
    tmp = tempfile.mkdtemp(prefix="mlflow-oracle-")
    port = free_port()
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
         "--default-artifact-root", f"{tmp}/artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    problems, count = [], 0
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/health", proc)
        client = MlflowClient(base)
        experiment = client.create_experiment("traceloom-oracle")
        for name in sorted(f[:-3] for f in os.listdir(cases_dir) if f.endswith(".pb")):
            count += 1
            with open(os.path.join(cases_dir, name + ".pb"), "rb") as f:
                body = f.read()
            with open(os.path.join(cases_dir, name + ".traceloom.json"), encoding="utf-8") as f:
                case = json.load(f)
            request = urllib.request.Request(
                f"{base}/v1/traces", data=body, method="POST",
                headers={"Content-Type": "application/x-protobuf",
                         "x-mlflow-experiment-id": experiment})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200, response.status
            ours = case["trace"]
            theirs = client.get_trace(ours["info"]["trace_id"], display=False).to_dict()
            exceptions = set(case.get("set_aside", []))
            a, b = comparable(ours, exceptions), comparable(theirs, exceptions)
            if a != b:
                problems.append({"case": name, "traceloom": a, "mlflow": b})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps({"cases": count, "problems": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
