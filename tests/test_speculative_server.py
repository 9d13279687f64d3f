"""`zen serve --speculative ngram` as a real process driven by the openai client: the `speculative` request
field (on and off give the same greedy text), acceptance counters in /metrics, bad input (400, exit 1)."""

import os
import re
import subprocess
import sys

import httpx
import openai
import pytest
from serve_process import start

EDIT = [{"role": "user", "content": "```python\ndef area(w, h):\n    return w * h\n\n\ndef perimeter(w, h):\n"
                                    "    return 2 * (w + h)\n```\nRename `perimeter` to `border`. Return the "
                                    "whole file only."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start(["--dtype", "int4", "--speculative", "ngram", "--spec-tokens", "4"],
                      tmp_path_factory.mktemp("serve") / "stderr.txt", env={**os.environ, "ZEN_API_KEY": ""})
    yield url
    proc.kill()
    proc.wait()


def test_server_field_and_metrics(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0, timeout=600)
    kw = {"model": "default", "messages": EDIT, "max_tokens": 48, "temperature": 0}
    on = client.chat.completions.create(**kw)
    off = client.chat.completions.create(**kw, extra_body={"speculative": False})
    assert on.choices[0].message.content == off.choices[0].message.content
    metrics = httpx.get(server + "/metrics").text
    drafted = int(float(re.search(r"^zen_spec_decode_num_draft_tokens_total (\S+)", metrics, re.M).group(1)))
    accepted = int(float(re.search(r"^zen_spec_decode_num_accepted_tokens_total (\S+)", metrics, re.M).group(1)))
    assert drafted > 0 and 0 < accepted <= drafted
    r = httpx.post(server + "/v1/chat/completions", json={**kw, "speculative": "sometimes"})
    assert r.status_code == 400 and "speculative" in r.text


def test_cli_rejects_bad_spec_tokens():
    r = subprocess.run([sys.executable, "-m", "zenlm", "serve", "--speculative", "ngram", "--spec-tokens", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--spec-tokens must be at least 1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
