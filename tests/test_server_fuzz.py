"""Fuzz every route of zen serve with schemathesis, from the OpenAPI schema FastAPI generates for the app:
no input may get a 5xx, and the server must answer /health afterwards. A tiny random model keeps it fast;
examples per route are bounded, generation lengths are clamped, and the run is derandomized (repeatable)."""

import time

import httpx
import pytest
import schemathesis
import tiny_server
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

EXAMPLES = 10  # per route
LONG = 8  # generated lengths in (LONG, context] are clamped to LONG; larger ones stay (they get a 400 at once)
LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "num_predict")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    llm = tiny_server.tiny_llm(tmp_path_factory.mktemp("tiny"))
    app = tiny_server.app(llm)
    running = tiny_server.Running(app)
    yield app, running.url, llm
    running.stop()
    llm.close()


def clamp(body, context: int):
    """Keep generation short: lengths that would run (not be refused) are cut to LONG, n to 4."""
    if isinstance(body, dict):
        for k, v in body.items():
            if k in LENGTH_FIELDS and isinstance(v, int) and not isinstance(v, bool) and LONG < v <= context:
                body[k] = LONG
            elif k == "n" and isinstance(v, int) and not isinstance(v, bool) and 4 < v <= 256:
                body[k] = 4
            else:
                clamp(v, context)
    elif isinstance(body, list):
        for v in body:
            clamp(v, context)


def test_no_input_gets_a_5xx_and_the_server_stays_up(served):
    app, url, llm = served
    schema = schemathesis.openapi.from_dict(app.openapi())
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15  # every route is in the schema
    failures, calls, start = [], 0, time.monotonic()
    for op in operations:

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(), served_model=st.booleans())
        def run(case, served_model):
            nonlocal calls
            body = case.body
            if isinstance(body, dict):
                if served_model and "model" in body:
                    body["model"] = "tiny"  # half the cases get past the model check, into generation
                # no length given means "up to the context": give one, so the run stays short
                if op.path.startswith("/api/") and isinstance(body.setdefault("options", {}), dict):
                    body["options"].setdefault("num_predict", LONG)
                elif op.path == "/v1/chat/completions" and "max_completion_tokens" not in body:
                    body.setdefault("max_tokens", LONG)
                clamp(body, llm.config.context_length)
            response = case.call(base_url=url, timeout=60)
            calls += 1
            if response.status_code >= 500:
                failures.append(f"{op.method.upper()} {op.path} {repr(body)[:400]} -> {response.status_code} "
                                f"{response.text[:300]}")

        began = time.monotonic()
        run()
        print(f"{op.method.upper()} {op.path}: {time.monotonic() - began:.1f} s")
    assert not failures, "\n".join(failures[:10])
    assert calls >= EXAMPLES * 5
    assert httpx.get(url + "/health").json() == {"status": "ok"} and llm.alive
    assert time.monotonic() - start < 600  # bounded: a stuck route would show here, not hang the suite
