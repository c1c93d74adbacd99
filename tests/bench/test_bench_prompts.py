"""Prompt texts: the workload's own, or synthetic text of each request's length, shared where prompts are."""
from __future__ import annotations

import numpy as np

from balanceroute.bench.prompts import prompt_texts
from balanceroute.workload import Workload
from tests.support.bench import make_workload


def test_workload_texts_are_used_as_they_are():
    texts, lens = prompt_texts(make_workload(2, prompts=["a b", "c"]))
    assert texts == ["a b", "c"] and lens.tolist() == [16, 16]


def test_requests_sharing_a_prompt_hash_share_the_text():
    wl = Workload(np.zeros(4), np.array([5, 5, 5, 9]), np.ones(4), np.array([7, 0, 7, 7]))
    texts, lens = prompt_texts(wl, seed=1)
    assert texts[0] == texts[2] and texts[1] != texts[0] and texts[3] != texts[0]
    assert lens.tolist() == [5, 5, 5, 9]
    assert prompt_texts(wl, seed=1)[0] == texts and prompt_texts(wl, seed=2)[0] != texts

