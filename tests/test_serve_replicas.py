"""`zen serve --replicas`: a real local Ray cluster (2 CPUs) running 2 replicas of a zen-tiny-shaped random model.

The real `openai` client talks to the one endpoint, plain and streamed; a repeated conversation stays on one
replica and hits its prefix cache (usage.prompt_tokens_details.cached_tokens); a replica killed mid-request
ends its requests with 503 + Retry-After (a streamed one with an error event) while the other replica's
finish, and Ray starts a new replica that then serves. Every wait is bounded; the cluster always shuts down.
Besides: without --replicas nothing imports Ray, and without Ray installed --replicas says how to get it.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import openai
import pytest
from serve_process import start
from tiny_train import write_model_dir

ZEN_TINY = dict(hidden_size=96, num_layers=4, num_heads=3, num_kv_heads=1, head_dim=32, intermediate_size=384,
                context_length=4096, tie_word_embeddings=False)  # zen-tiny's shape, the byte tokenizer's vocab
DEADLINE_S = 180


def wait_for(check, what: str, timeout: float = DEADLINE_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_serving_without_replicas_never_imports_ray(tmp_path):
    """A real single-process `zen serve`, every import it makes logged (-X importtime): none is Ray's."""
    model = write_model_dir(tmp_path / "tiny", **ZEN_TINY)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc, url = start(["--model", str(model), "--dtype", "float32"], tmp_path / "log", env)
    try:
        out = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0).completions.create(
            model=str(model), prompt="hi", max_tokens=2)
        assert out.usage.completion_tokens == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    imported = [line.rsplit("|", 1)[1].strip() for line in (tmp_path / "log").read_text().splitlines()
                if line.startswith("import time:") and "|" in line]
    assert "uvicorn" in imported and "zenlm.server.app" in imported  # the log does list the imports
    assert not [m for m in imported if m == "ray" or m.startswith("ray.")]


def test_replicas_without_ray_says_how_to_install_it(tmp_path):
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "zenlm", "serve", "--replicas", "2", "--model", "zen-tiny"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == ["zen: error: zen serve --replicas needs Ray Serve, which is not "
                                               "installed: pip install zenlm[ray]"]


def test_ray_flags_need_replicas():
    run = subprocess.run([sys.executable, "-m", "zenlm", "serve", "--ray-address", "auto"], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).parent)
    assert run.returncode == 1 and "--ray-address and --threads-per-replica need --replicas N" in run.stderr


def test_cli_serves_replicas_and_stops_cleanly(tmp_path):
    """The real `zen serve --replicas 1` process: its own local Ray cluster, one answer, Ctrl-C ends it all.
    (Runs before the module's cluster starts, so two clusters never share the 2 CPUs.)"""
    model = write_model_dir(tmp_path / "tiny", **ZEN_TINY)
    proc, url = start(["--model", str(model), "--dtype", "float32", "--replicas", "1", "--served-model-name",
                       "tiny"], tmp_path / "log", timeout=DEADLINE_S)
    try:
        out = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 3
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0
    assert "(1 replicas x 1 threads on Ray Serve)" in (tmp_path / "log").read_text()
    assert (tmp_path / "log").read_text().rstrip().endswith("zen serve: stopped")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray import serve

    from zenlm.server.replicas.deployments import EngineOptions, build
    from zenlm.server.replicas.launch import free_port

    model = write_model_dir(tmp_path_factory.mktemp("replicas") / "zen-tiny", **ZEN_TINY)
    port = free_port("127.0.0.1")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(EngineOptions(str(model), dtype="float32", served_name="tiny"), replicas=2), name="zen",
                  route_prefix="/")
        yield f"http://127.0.0.1:{port}", serve
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture()
def client(cluster):
    return openai.OpenAI(base_url=cluster[0] + "/v1", api_key="none", max_retries=0, timeout=DEADLINE_S)


def conversation(tag: str) -> list[dict]:
    system = f"[{tag}] " + "You are a careful assistant who answers in one short sentence. " * 5
    return [{"role": "system", "content": system}, {"role": "user", "content": "What is a replica?"}]


def ask(client, messages, **kw):
    """(replica id, pid, completion) for one non-streamed chat request."""
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=messages, **kw)
    replica, pid = raw.headers["x-zen-replica"].split(" pid=")
    return replica, int(pid), raw.parse()


def test_openai_client_plain_and_streamed(client):
    replica, pid, out = ask(client, [{"role": "user", "content": "hi"}], max_tokens=8, temperature=0,
                            extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 8 and out.choices[0].finish_reason == "length"
    assert pid != os.getpid() and replica
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 8
    assert text == out.choices[0].message.content  # greedy: the same model on every replica
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_prefix_affinity_keeps_a_conversation_on_one_replica(client):
    seen = {}
    for tag in ("alpha", "beta", "gamma"):
        messages = conversation(f"{tag}-{uuid.uuid4().hex}")
        runs = [ask(client, messages, max_tokens=4) for _ in range(3)]
        seen[tag] = {r for r, _, _ in runs}
        assert len(seen[tag]) == 1, f"{tag} went to {seen[tag]}"
        cached = [out.usage.prompt_tokens_details.cached_tokens for _, _, out in runs]
        prompt = runs[0][2].usage.prompt_tokens
        assert cached[0] < 64, cached  # a new system prompt: at most the template's opening is cached
        assert all(c >= prompt - 64 for c in cached[1:]), (cached, prompt)  # the repeats hit the prefix cache
    assert len(set().union(*seen.values())) == 2, seen  # new prefixes spread over both replicas


def test_killed_replica_ends_its_requests_with_503_and_is_replaced(client, cluster):
    # one conversation per replica: affinity sends its later requests to the same one
    owner = {}
    while len(owner) < 2:
        messages = conversation(uuid.uuid4().hex)
        replica, pid, _ = ask(client, messages, max_tokens=1)
        owner.setdefault((replica, pid), messages)
    (victim, victim_pid), (survivor, _) = list(owner)
    results, started = {}, {k: threading.Event() for k in owner}
    long = dict(max_tokens=3000, extra_body={"ignore_eos": True})

    def streamed(key):
        n = 0
        try:
            with client.chat.completions.with_streaming_response.create(model="tiny", messages=owner[key],
                                                                        stream=True, **long) as resp:
                replica = resp.headers["x-zen-replica"].split(" pid=")[0]
                for chunk in resp.parse():
                    n += 1
                    started[key].set()
            results[("stream", key[0])] = ("done", replica, n)
        except openai.APIError as e:
            results[("stream", key[0])] = ("error", str(e), n)
        finally:
            started[key].set()

    def plain(key):
        try:
            replica, _, out = ask(client, owner[key], **long)
            results[("plain", key[0])] = ("done", replica, out.usage.completion_tokens)
        except openai.APIStatusError as e:
            results[("plain", key[0])] = (e.status_code, e.response.headers.get("retry-after"), e.message)

    threads = [threading.Thread(target=f, args=(k,)) for k in owner for f in (plain, streamed)]
    for t in threads:
        t.start()
    for k in owner:
        assert started[k].wait(DEADLINE_S), "a stream did not start"
    os.kill(victim_pid, signal.SIGKILL)
    for t in threads:
        t.join(DEADLINE_S)
    assert not any(t.is_alive() for t in threads), results

    assert results[("plain", victim)][:2] == (503, "5"), results
    assert "died" in results[("plain", victim)][2]
    kind, message, chunks = results[("stream", victim)]
    assert kind == "error" and "died" in message and chunks > 0, results
    assert results[("plain", survivor)] == ("done", survivor, 3000), results
    assert results[("stream", survivor)][:2] == ("done", survivor), results

    # Ray replaces the dead replica; requests meanwhile and after go to live ones
    serve = cluster[1]

    def two_running():
        d = serve.status().applications["zen"].deployments["ZenEngine"]
        return d.replica_states.get("RUNNING", 0) == 2 and d.status == "HEALTHY"

    wait_for(two_running, "a second RUNNING ZenEngine replica")
    replicas = set()
    for _ in range(12):
        replica, pid, out = ask(client, conversation(uuid.uuid4().hex), max_tokens=2)
        assert pid != victim_pid and out.usage.completion_tokens == 2
        replicas.add(replica)
    assert victim not in replicas and len(replicas) == 2, replicas
