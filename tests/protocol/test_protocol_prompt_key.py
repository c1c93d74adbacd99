"""One prompt key everywhere: the simulator's workload, the emulator and the routing proxy key a prompt alike."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import orjson
import pytest

from balanceroute.emulate.protocol import parse_request
from balanceroute.protocol.prompt_key import prompt_hash
from balanceroute.proxy.prompt import prompt_parts
from balanceroute.workload import load_sharegpt


def test_text_keys_are_the_simulators_blake2b_values():
    # pinned: simulated results keyed by these values must not move
    assert prompt_hash("What is the capital of France?") == 6952481515807030793
    assert prompt_hash([101, 2054, 2003]) == 1655691652477094467


def test_a_prompt_is_keyed_the_same_however_its_tokens_are_held():
    ids = [101, 2054, 2003]
    assert prompt_hash(ids) == prompt_hash(tuple(ids)) == prompt_hash(np.array(ids)) != prompt_hash(ids[::-1])
    assert prompt_hash(["be brief", "hi"]) == prompt_hash("be brief\nhi")


def test_no_prompt_is_zero_and_a_prompt_never_is():
    assert prompt_hash("") == prompt_hash([]) == prompt_hash(None) == 0
    keys = [prompt_hash(str(i)) for i in range(2000)] + [prompt_hash([i]) for i in range(2000)]
    assert all(0 < k < 2 ** 63 for k in keys) and len(set(keys)) == len(keys)


def test_token_id_keys_do_not_depend_on_the_process():
    code = "from balanceroute.protocol.prompt_key import prompt_hash; print(prompt_hash([1, 2, 3]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == prompt_hash([1, 2, 3])


@pytest.mark.parametrize("body, chat", [
    ({"prompt": "What is the capital of France?"}, False),
    ({"prompt": [101, 2054, 2003]}, False),
    ({"messages": [{"role": "system", "content": "be brief"},
                   {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]}, True),
])
def test_the_emulator_and_the_proxy_key_a_request_alike(body, chat):
    emulated = parse_request(orjson.dumps({**body, "max_tokens": 4}), chat=chat, served_model="m", max_model_len=100)
    text, token_ids = prompt_parts(body, chat)
    assert emulated.prompt_hash == prompt_hash(text or token_ids) != 0


def test_a_workload_prompt_sent_as_text_reaches_the_emulator_with_the_simulators_key(tmp_path):
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": f"Question {i}: how far?"},
                                                   {"from": "gpt", "value": "Far enough."}]} for i in range(3)]))
    workload = load_sharegpt(path, shuffle=False)
    for text, key in zip(workload.prompts, workload.prompt_hash.tolist()):
        request = parse_request(orjson.dumps({"prompt": text, "max_tokens": 1}), chat=False, served_model="m",
                                max_model_len=1000)
        assert request.prompt_hash == key
