"""`llama-rs serve --ray`: a real Ray cluster of two nodes (one CPU each) on this machine,
Ray Serve's proxy and our ingress in front of two replicas, one per node. The routes answer
as `serve` does (the same checks as test_serve.py), requests spread over both replicas, a
killed worker or replica fails only its own request, with our errors, and comes back, a full
queue is refused with our 503, and shutdown leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

ray = pytest.importorskip("ray")

from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray._private import state as ray_state  # noqa: E402

import serve_checks  # noqa: E402
from llama_rs.server import ray_serve  # noqa: E402
from serve_helpers import Endpoint, free_port, pid_alive, wait_until, write_slow_model  # noqa: E402

#: Greedy requests that run for tens of seconds on the slow model, on each generating route
#: (the token limit is the route's own field).
SLOW = {
    "/v1/completions": ({"prompt": "t5 t6 t7", "repeat_penalty": 1.0, "temperature": 0}, "max_tokens"),
    "/v1/chat/completions": (
        {"messages": [{"role": "user", "content": "t5 t6 t7"}], "repeat_penalty": 1.0, "temperature": 0},
        "max_tokens",
    ),
    "/api/completion": ({"prompt": "t5 t6 t7", "repeat_penalty": 1.0, "temp": 0}, "tokens"),
}


def slow_body(path: str, tokens: int, stream: bool = False) -> dict:
    body, limit = SLOW[path]
    return {**body, limit: tokens, **({"stream": True} if stream else {})}


#: The actor class of the model deployment's replicas (not the ingress's).
MODEL_REPLICA = f"ServeReplica:{ray_serve.APP_NAME}:{ray_serve.APP_NAME}"

#: Ray's own processes are spread over the nodes; keep their memory small.
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


class Ray:
    """The cluster, Serve's proxy on the head node, and the one application deployed."""

    def __init__(self):
        self.cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
        self.cluster.add_node(**NODE)
        # Replicas log to their own files (Ray's session logs): not into the test output.
        ray.init(address=self.cluster.address, logging_level="WARNING", log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        self.endpoint = Endpoint(f"http://127.0.0.1:{port}")
        self.app: str | None = None
        #: Every replica and worker process seen, for the shutdown check.
        self.pids: set[int] = set()
        self.replica_pids: set[str] = set()
        self.up = self.serve_up = True

    def deploy(self, name: str, app) -> Endpoint:
        if self.app != name:
            if self.app is not None:
                serve.delete(ray_serve.APP_NAME)
            self.app = None
            ray_serve.deploy(app)
            self.app = name
        return self.endpoint

    def replicas(self) -> dict[str, dict]:
        """replica id -> {pid, node, worker} of each live replica, from Ray's actor table (Serve's
        ingress sends /health to a replica of its choice, so HTTP cannot list them)."""
        out = {}
        for a in ray_state.actors().values():  # (GCS's table: no dashboard needed)
            if a["State"] == "ALIVE" and a["ActorClassName"] == MODEL_REPLICA and a["Pid"]:
                pid, workers = a["Pid"], worker_pids(a["Pid"])
                out[a["Name"].rsplit("#", 1)[-1]] = {
                    "pid": pid,
                    "node": a["Address"]["NodeID"],
                    "worker": workers[0] if workers else None,
                }
                self.pids |= {pid, *workers}
                self.replica_pids.add(str(pid))
        return out

    def stop_serve(self) -> None:
        if self.serve_up:
            self.app, self.serve_up = None, False
            serve.shutdown()

    def shutdown(self) -> None:
        if self.up:
            self.stop_serve()
            self.up = False
            ray.shutdown()
            self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster():
    c = Ray()
    yield c
    c.shutdown()


DEMO = ray_serve.ReplicaSpec(model=None, threads=1, parallel=4, max_body=20000)


@pytest.fixture
def demo(cluster: Ray) -> Endpoint:
    return cluster.deploy("demo", ray_serve.application(DEMO, replicas=2))


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    return write_slow_model(tmp_path_factory.mktemp("ray") / "slow.gguf")


@pytest.fixture
def slow(cluster: Ray, slow_model: Path) -> Endpoint:
    # Built from text, as `serve run llama_rs.server.ray_serve:build ...` and a Serve config
    # file give it. One sequence per replica: Serve must send a second request to the other;
    # one request waits for a free replica, the next one is refused.
    args = {"model": str(slow_model), "threads": "1", "parallel": "1", "n_ctx": "2048", "replicas": "2"}
    args["queue_limit"] = "1"
    return cluster.deploy("slow", ray_serve.build(args))


# -- the same answers as `serve` ----------------------------------------------------------------


def test_routes_answer_as_serve_does(cluster: Ray, demo: Endpoint) -> None:
    serve_checks.check_seed_completion(demo)
    serve_checks.check_openai_completions(demo)  # streaming included
    serve_checks.check_openai_chat(demo)
    h = serve_checks.check_health_docs_and_page(demo, workers=1)
    replica = cluster.replicas()[h["replica"]["id"]]
    assert h["replica"] == {"id": h["replica"]["id"], "node": replica["node"], "pid": replica["pid"]}
    assert h["workers"][0]["pid"] == replica["worker"]
    serve_checks.check_unknown_route(demo)
    r = httpx.get(demo.url + "/metrics")
    assert r.status_code == 200 and "llama_rs_" in r.text


@pytest.mark.parametrize("path,body,status,needle", serve_checks.BAD_REQUESTS)
def test_bad_requests_get_json_errors(demo: Endpoint, path: str, body, status: int, needle: str) -> None:
    serve_checks.check_bad_request(demo, path, body, status, needle)


def test_requests_spread_over_replicas_on_both_nodes(cluster: Ray, demo: Endpoint) -> None:
    replicas = cluster.replicas()
    assert len(replicas) == 2 and all(r["worker"] for r in replicas.values())
    nodes = {r["node"] for r in replicas.values()}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # one replica per node
    served: list[str] = []

    def one(i: int) -> None:
        r = demo.post("/api/completion", {"prompt": "Q:", "tokens": 200, "seed": i})
        assert r.status_code == 200
        served.append(r.headers["x-llama-rs-replica"])

    # Each replica takes --parallel (4) requests at once: eight at once need both.
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(served) == 8 and set(served) == set(replicas), served


def test_unreadable_model_fails_the_health_check(cluster: Ray, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF but not really")
    spec = ray_serve.ReplicaSpec(model=str(bad), threads=1, parallel=1)
    with pytest.raises(RuntimeError, match="cannot open the model .*not-a-model.gguf.*unsupported GGUF version"):
        cluster.deploy("bad", ray_serve.application(spec))
    cluster.app = "bad"  # deployed, failed: the next deploy replaces it


def test_autoscaling_starts_at_its_least(cluster: Ray) -> None:
    app = ray_serve.application(DEMO, min_replicas=1, max_replicas=2)
    endpoint = cluster.deploy("autoscaled", app)
    assert len(cluster.replicas()) == 1
    config = serve.status().applications[ray_serve.APP_NAME].deployments[ray_serve.APP_NAME]
    assert config.status == "HEALTHY"
    serve_checks.check_seed_completion(endpoint)


# -- faults ----------------------------------------------------------------------------------------


class Stream:
    """A streaming completion that has begun: its replica is known from the header."""

    def __init__(self, endpoint: Endpoint, tokens: int, path: str = "/v1/completions"):
        self.client = httpx.Client(timeout=120)
        self.cm = self.client.stream("POST", endpoint.url + path, json=slow_body(path, tokens, stream=True))
        r = self.cm.__enter__()
        assert r.status_code == 200
        self.replica = r.headers["x-llama-rs-replica"]
        self.lines = r.iter_lines()
        self.events = [next(line for line in self.lines if line.startswith("data:"))]
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        try:
            self.events += [line for line in self.lines if line.startswith("data:")]
        except httpx.HTTPError as e:
            self.error = e
        finally:
            self.cm.__exit__(None, None, None)
            self.client.close()

    def finish(self) -> list[dict | str]:
        self.thread.join(timeout=120)
        return [e[6:] if e == "data: [DONE]" else json.loads(e[6:]) for e in self.events]

    def completed(self) -> None:
        """It ran to its end: [DONE], no transport error, text in its events."""
        done = self.finish()
        assert done[-1] == "[DONE]" and self.error is None, (done[-1], self.error)
        assert any(e["choices"] for e in done[:-1])


def two_streams(
    cluster: Ray, slow: Endpoint, path: str = "/v1/completions", tokens: int = 2000
) -> tuple[Stream, Stream]:
    """A long stream on one replica (the victim), a shorter one on the other."""
    victim = Stream(slow, tokens, path)
    other = Stream(slow, 300)  # one sequence per replica: Serve sends it to the other one
    assert {victim.replica, other.replica} == set(cluster.replicas())
    return victim, other


def test_killed_worker_fails_its_request_and_comes_back(cluster: Ray, slow: Endpoint) -> None:
    victim, other = two_streams(cluster, slow)
    worker = cluster.replicas()[victim.replica]["worker"]
    os.kill(worker, signal.SIGKILL)
    events = victim.finish()
    assert "worker" in events[-1]["error"]["message"], events[-1]  # as under `serve`: an error event
    done = other.finish()
    assert done[-1] == "[DONE]" and other.error is None
    assert sum(len(e["choices"][0]["text"]) > 0 for e in done[:-1] if e["choices"]) >= 290
    # The replica stays; its pool starts a new worker.
    wait_until(lambda: cluster.replicas()[victim.replica]["worker"] not in (None, worker), timeout=60)
    for _ in range(4):
        assert slow.post("/api/completion", {"prompt": "t5", "tokens": 3}).status_code == 200


def replaced(cluster: Ray, slow: Endpoint, dead: dict, dead_id: str) -> None:
    """The dead replica's worker went with it (it dies with its parent), Serve has a new
    replica in its place, with its worker, and the new one serves (two streams at once, one
    sequence per replica: one on each)."""
    wait_until(lambda: not pid_alive(dead["worker"]), timeout=30)
    wait_until(lambda: dead_id not in cluster.replicas() and len(cluster.replicas()) == 2, timeout=180)
    wait_until(lambda: all(r["worker"] for r in cluster.replicas().values()), timeout=120)

    def both_serve() -> bool:
        # (Serve tells the ingress of the new replica a moment after it runs: until then
        # both streams go to the old one, one after the other.)
        first, second = Stream(slow, 60), Stream(slow, 60)
        first.completed()
        second.completed()
        return {first.replica, second.replica} == set(cluster.replicas())

    wait_until(both_serve, timeout=120)


def died_error(err: dict) -> None:
    """Our error body for a request whose replica died: `serve`'s shape for a dead worker."""
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["type"] == "worker_error" and "replica" in err["message"] and "retry" in err["message"], err


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_killed_replica_ends_its_stream_with_our_error_event(cluster: Ray, slow: Endpoint, path: str) -> None:
    # A stream that has begun: it ends with our error event (as a dead worker's under
    # `serve`), not cut off; the other replica's stream runs to its end.
    victim, other = two_streams(cluster, slow, path)
    dead = cluster.replicas()[victim.replica]
    os.kill(dead["pid"], signal.SIGKILL)
    events = victim.finish()
    assert victim.error is None, victim.error
    died_error(events[-1]["error"])
    assert "[DONE]" not in events and all("choices" in e for e in events[:-1])
    other.completed()
    replaced(cluster, slow, dead, victim.replica)


@pytest.mark.parametrize("path", list(SLOW))
def test_killed_replica_answers_its_waiting_request_with_our_json(cluster: Ray, slow: Endpoint, path: str) -> None:
    # A request still waiting for its answer: 502 with our JSON error body.
    other = Stream(slow, 300)
    victim_id = next(i for i in cluster.replicas() if i != other.replica)
    dead = cluster.replicas()[victim_id]
    out: dict = {}
    request = threading.Thread(target=lambda: out.update(r=slow.post(path, slow_body(path, 2000))))
    ticks = cpu_ticks(dead["worker"])
    request.start()
    wait_until(lambda: cpu_ticks(dead["worker"]) > ticks + 20, timeout=60)  # it is generating there
    os.kill(dead["pid"], signal.SIGKILL)
    request.join(timeout=120)
    assert out["r"].status_code == 502, out["r"].text
    assert out["r"].headers["content-type"] == "application/json"
    died_error(out["r"].json()["error"])
    other.completed()
    replaced(cluster, slow, dead, victim_id)


def test_client_that_leaves_frees_its_replica(cluster: Ray, slow: Endpoint) -> None:
    # Through the ingress as directly: a client that closes its stream cancels the
    # generation on the replica, whose one sequence slot serves the next request at once.
    other = Stream(slow, 2000)
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", slow.url + "/v1/completions", json=slow_body("/v1/completions", 2000, True)) as r:
            left = r.headers["x-llama-rs-replica"]  # (the other replica: one sequence each)
            next(line for line in r.iter_lines() if line.startswith("data:"))
    assert left != other.replica
    r = slow.post("/api/completion", slow_body("/api/completion", 3))
    assert r.status_code == 200 and r.headers["x-llama-rs-replica"] == left
    # Had the generation gone on, the request would have waited for it, which began after
    # the other one and is as long.
    assert other.thread.is_alive()
    other.completed()


def test_full_queue_is_refused_with_our_json(cluster: Ray, slow: Endpoint) -> None:
    # Both replicas busy (one sequence each) and --queue 1: of two more requests, one waits
    # for a free replica and the other is refused at once, with `serve`'s 503.
    first, second = two_streams(cluster, slow, tokens=300)
    answers: list[httpx.Response] = []
    waiting = [
        threading.Thread(target=lambda: answers.append(slow.post("/api/completion", slow_body("/api/completion", 3))))
        for _ in range(2)
    ]
    for t in waiting:
        t.start()
    for t in waiting:
        t.join(timeout=120)
    assert sorted(r.status_code for r in answers) == [200, 503], [r.text for r in answers]
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["content-type"] == "application/json" and refused.headers["retry-after"]
    err = refused.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "server_busy", err
    assert "retry" in err["message"], err
    first.completed()
    second.completed()


def cpu_ticks(pid: int) -> int:
    """CPU time a process has used (user + system, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_build_refuses_unknown_arguments() -> None:
    with pytest.raises(ValueError, match="unknown argument.*thread"):
        ray_serve.build({"thread": "2"})


def test_cli_usage_errors() -> None:
    run = [sys.executable, "-m", "llama_rs_cli.app", "serve", "--ray", "local"]
    r = subprocess.run([*run, "-w", "2"], capture_output=True, text=True)
    assert r.returncode == 2 and "--replicas" in r.stderr
    r = subprocess.run([*run, "--min-replicas", "2"], capture_output=True, text=True)
    assert r.returncode == 2 and "--max-replicas" in r.stderr


# -- last: shutdown -------------------------------------------------------------------------------


def test_shutdown_leaves_no_processes(cluster: Ray, slow: Endpoint) -> None:
    assert len(cluster.replicas()) == 2
    pids, replica_pids = set(cluster.pids), set(cluster.replica_pids)
    ray_pids = {
        p.process.pid
        for node in cluster.cluster.list_all_nodes()
        for infos in node.all_processes.values()
        for p in infos
        if p.process is not None
    }
    assert pids and ray_pids
    session = cluster.cluster.head_node.get_session_dir_path()
    cluster.stop_serve()
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=60)
    # No worker of any of our replicas, including ones started after the last /health.
    assert not [
        a for a in cmdlines() if "llama_rs.server.worker" in a and a[a.index("--parent-pid") + 1] in replica_pids
    ]
    cluster.shutdown()
    wait_until(lambda: not any(pid_alive(p) for p in ray_pids), timeout=60)
    # Nor any of Ray's worker processes of this cluster's session.
    wait_until(lambda: not [a for a in cmdlines() if any(session in arg for arg in a)], timeout=60)


def test_cli_serve_ray_local_and_its_shutdown(tmp_path: Path) -> None:
    """`llama-rs serve --ray local`: a Ray instance of its own, the app, and on SIGTERM none of
    its processes left (after the cluster above is gone: one Ray at a time on two cores)."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    cli = subprocess.Popen(
        [sys.executable, "-m", "llama_rs_cli.app", "serve", "--ray", "local", "-t", "1", "-l", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    endpoint = Endpoint(f"http://127.0.0.1:{port}")
    try:
        wait_until(lambda: b"ready at" in Path(log.name).read_bytes() or cli.poll() is not None, timeout=180)
        assert cli.poll() is None, Path(log.name).read_text()
        serve_checks.check_seed_completion(endpoint)
        family = descendants(cli.pid)
        h = endpoint.health()
        assert {h["replica"]["pid"], h["workers"][0]["pid"]} <= family  # Ray, the replica, its worker
    finally:
        cli.send_signal(signal.SIGTERM)
        code = cli.wait(timeout=120)
    assert code == 0, Path(log.name).read_text()[-3000:]
    wait_until(lambda: not any(pid_alive(p) for p in family), timeout=60)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for child, parent in parents().items():
        children.setdefault(parent, []).append(child)
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit():
                out[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def worker_pids(parent: int) -> list[int]:
    """The llama-rs worker processes whose parent is `parent`."""
    out = []
    for pid, ppid in parents().items():
        try:
            if ppid == parent and b"llama_rs.server.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid) if pid_alive(pid) else None
        except OSError:
            continue
    return out


def cmdlines() -> list[list[str]]:
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and pid_alive(int(p.name)):
                out.append((p / "cmdline").read_bytes().decode(errors="replace").split("\0"))
        except OSError:
            continue
    return out
