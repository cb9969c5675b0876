"""What the browser and SDK checks share: the FastAPI backend (backend.py) and
two chorus gateways in front of it, one plain (HTTP/1.1 and h2c) and one with
TLS (a self-signed certificate made by openssl, ALPN h2 and http/1.1), all on
127.0.0.1 and ephemeral ports; and the lines a check prints.

    with Stack(chorus_binary) as stack:
        stack.gateways   # [Gateway(name, url, admin, log), ...]: plain, then TLS
        stack.backend    # the backend's base URL; stack.stats() its counters
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_for_port(port, process, what):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} never listened on {port}")


async def until(predicate, timeout=10):
    """Polls `predicate` until it holds (True) or `timeout` s pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


class Checks:
    """Prints a PASS or FAIL line per check and keeps the names that failed."""

    def __init__(self):
        self.failures = []

    def check(self, name, ok, detail):
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            self.failures.append(name)
        return ok

    def finish(self, what):
        """Exits 1 naming the failures, if any."""
        if self.failures:
            sys.exit(f"{what}: {len(self.failures)} failed: {', '.join(self.failures)}")
        print(f"{what}: all passed")


@dataclass
class Gateway:
    name: str  # "plain" or "tls"
    url: str
    admin: str
    log: str  # warnings and the access log, a line per request

    def metrics(self):
        with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as response:
            return response.read().decode()

    def idle(self):
        """No flight and no subscriber left active."""
        return all(
            line.endswith(" 0")
            for line in self.metrics().splitlines()
            if line.startswith(("chorus_flights_active", "chorus_subscribers_active"))
        )


def gateway_config(tmp, name, port, admin_port, up_port, tls):
    path = os.path.join(tmp, name + ".toml")
    server = f'[server]\nlisten = "127.0.0.1:{port}"\n'
    if tls:
        server += f'[server.tls]\ncert = "{tmp}/cert.pem"\nkey = "{tmp}/key.pem"\n'
    with open(path, "w") as f:
        f.write(
            server + f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
            f'[[routes]]\nname = "llm"\npath_prefix = "/"\n'
            f'upstream = "http://127.0.0.1:{up_port}"\nwebsocket = true\n'
        )
    return path


class Stack:
    """The backend and both gateways, stopped on exit; their logs are printed
    to stderr when the block raised or `failed` was set."""

    def __init__(self, chorus):
        self.chorus = os.path.abspath(chorus)
        self.failed = False

    def __enter__(self):
        self.tmp = tempfile.TemporaryDirectory()
        tmp = self.tmp.name
        self.cert = f"{tmp}/cert.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{tmp}/key.pem", "-out", self.cert, "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        up_port = free_port()
        self.backend = f"http://127.0.0.1:{up_port}"
        self.logs = [os.path.join(tmp, "backend.log")]
        self.processes = [subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend:app", "--port", str(up_port),
             "--log-level", "warning"],
            cwd=HERE,
            env={**os.environ, "PAGE_ORIGINS": f"http://127.0.0.1:{up_port},http://localhost:{up_port}"},
            stdout=subprocess.DEVNULL, stderr=open(self.logs[0], "w"),
        )]
        self.gateways = []
        try:
            for name, scheme in (("plain", "http"), ("tls", "https")):
                port, admin = free_port(), free_port()
                config = gateway_config(tmp, name, port, admin, up_port, scheme == "https")
                log = os.path.join(tmp, name + ".log")
                self.logs.append(log)
                gateway = subprocess.Popen(
                    [self.chorus, "--config", config],
                    env={**os.environ, "RUST_LOG": "warn,chorus::response=info"},
                    stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                )
                self.processes.append(gateway)
                wait_for_port(port, gateway, f"chorus ({name})")
                self.gateways.append(Gateway(
                    name, f"{scheme}://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", log
                ))
            wait_for_port(up_port, self.processes[0], "the backend")
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def stats(self):
        return get_json(self.backend + "/stats")

    def __exit__(self, kind, value, traceback):
        for process in self.processes:
            process.terminate()
            process.wait(timeout=30)
        if kind is not None or self.failed:
            for path in self.logs:
                with open(path) as lines:
                    sys.stderr.write(f"--- {os.path.basename(path)}\n{lines.read()[-4000:]}")
        self.tmp.cleanup()
