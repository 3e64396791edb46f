"""MLflow's distributed-tracing example as two separate processes exporting OTLP to traceloom.

Usage: distributed.py ENDPOINT PROTOCOL WORKDIR
  ENDPOINT  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT for both services
  PROTOCOL  grpc | http/protobuf
The server (Flask, service "mlflow-server") joins the caller's trace from the W3C `traceparent`
header and records `server-handler`; the client (service "mlflow-client") opens `client-root`
and calls it. Prints the client's trace id (32 hex) on the last line.

What makes MLflow export reliably (and what this script does): MLflow exports OTLP through a
batch span processor, so a process must flush before it exits. The client exits normally
(OpenTelemetry flushes at exit); the server is stopped with SIGINT, not SIGKILL, and a short
OTEL_BSP_SCHEDULE_DELAY makes its spans leave within 100 ms of ending.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

SERVER = r'''
import os, flask, mlflow
from mlflow.tracing import set_tracing_context_from_http_request_headers
app = flask.Flask("server")
@app.post("/handle")
def handle():
    headers = dict(flask.request.headers)
    with set_tracing_context_from_http_request_headers(headers):
        with mlflow.start_span("server-handler") as span:
            span.set_attribute("status", "ok")
    return "ok"
@app.get("/ready")
def ready():
    return "yes"
app.run(host="127.0.0.1", port=int(os.environ["PORT"]))
'''

CLIENT = r'''
import os, requests, mlflow
from mlflow.tracing import get_tracing_context_headers_for_http_request
with mlflow.start_span("client-root") as root:
    headers = get_tracing_context_headers_for_http_request()
    assert "traceparent" in headers, headers
    r = requests.post(os.environ["SERVER_URL"] + "/handle", headers=headers, timeout=30)
    r.raise_for_status()
print(headers["traceparent"].split("-")[1])
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(endpoint, protocol, workdir):
    base = dict(os.environ)
    base.update({
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "MLFLOW_USE_BATCH_SPAN_PROCESSOR": "false",
        "MLFLOW_TRACKING_URI": f"file://{workdir}/mlruns",
    })
    port = free_port()
    server_env = dict(base, OTEL_SERVICE_NAME="mlflow-server", PORT=str(port))
    server = subprocess.Popen([sys.executable, "-c", SERVER], env=server_env, cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1)
                break
            except Exception:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("server did not start: " + server.stderr.read().decode()[-2000:])
                time.sleep(0.2)
        client_env = dict(base, OTEL_SERVICE_NAME="mlflow-client", SERVER_URL=f"http://127.0.0.1:{port}")
        client = subprocess.run([sys.executable, "-c", CLIENT], env=client_env, cwd=workdir,
                                capture_output=True, text=True, timeout=120)
        if client.returncode != 0:
            raise RuntimeError("client failed: " + client.stderr[-2000:])
        trace_id = client.stdout.strip().splitlines()[-1]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    print(trace_id)


if __name__ == "__main__":
    main(*sys.argv[1:4])
