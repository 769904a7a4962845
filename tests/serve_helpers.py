"""A real `llama-rs serve` for tests: a server process on a free loopback port, with its
worker processes, and the waits and probes the serve tests share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from reference import Shape, random_weights, write_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    """Where a server answers, and the requests the tests make of it (a `Server` here, or
    Ray Serve's proxy in front of replicas)."""

    def __init__(self, url: str, key: str | None = None):
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def post(self, path: str, body, **kw) -> httpx.Response:
        kw.setdefault("timeout", 120)
        headers = {**self.headers, **kw.pop("headers", {})}
        if isinstance(body, (bytes, str)):
            return httpx.post(self.url + path, content=body, headers=headers, **kw)
        return httpx.post(self.url + path, json=body, headers=headers, **kw)


class Server(Endpoint):
    def __init__(self, *args: str, key: str | None = None, own_group: bool = False):
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}", key)
        env = dict(os.environ)
        env.pop("LLAMA_RS_API_KEY", None)
        # The log goes to a file: a pipe nobody reads would fill up and stall the server.
        self.log_file = tempfile.NamedTemporaryFile("w+", prefix="llama-rs-serve-test-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_rs_cli.app", "serve", "-l", f"127.0.0.1:{self.port}", *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
            text=True,
            env=env,
            start_new_session=own_group,  # its own process group, for signals sent to a whole group
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def log(self) -> str:
        """Everything the server wrote on stderr so far."""
        return Path(self.log_file.name).read_text(errors="replace")

    def stop_group(self, sig: int = signal.SIGTERM) -> None:
        """`sig` to the server and its workers at once, as systemd or `timeout` send it."""
        os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


def wait_until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def busy_workers(s: Server) -> int:
    return sum(w["busy"] for w in s.health()["workers"])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its dead parent's reaper) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def write_slow_model(path: Path) -> Path:
    """Random weights, big enough that a long generation takes seconds. EOS's output row is
    zero, so its logit is 0 and greedy decoding (temp 0) never picks it: generations run
    until their token limit or until interrupted."""
    s = Shape(dim=512, n_layer=8, n_head=8, n_head_kv=4, ffn=1024, vocab=500)
    w = random_weights(s, seed=3)
    w["output.weight"][2] = 0.0
    write_model(path, s, w, "Q8_0")
    return path


def slow_model_server(tmp_path_factory, *args: str) -> Server:
    """`llama-rs serve` with `args` over a fresh slow model (write_slow_model)."""
    model = write_slow_model(tmp_path_factory.mktemp("slow") / "slow.gguf")
    return Server("-m", str(model), *args)


#: A greedy request that runs for tens of seconds on the slow model.
LONG = {"prompt": "t5 t6 t7", "tokens": 2000, "repeat_penalty": 1.0, "temp": 0}
