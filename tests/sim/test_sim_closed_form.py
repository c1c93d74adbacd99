"""The step model by hand: small cases whose timings follow from ALGORITHMS.md section 3 with the tiny preset.

tiny: c_w = 10 ms, a = 1 ms/token, p = 0.1 ms/token, b = 0.5 ms/token (times the mean load), c_0 = 2 ms.
"""
from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import run, workload

from balanceroute.sim.presets import TINY

A, B, C0, CW, P = TINY.a, TINY.b, TINY.c0, TINY.cw, TINY.p


def test_one_request_on_one_worker_ttft_and_tpot_by_hand():
    s, o = 10, 5
    result, _ = run(workload([s], o), num_workers=1)
    req = result.requests.iloc[0]
    # step 1 prefills the prompt and samples the first token: L = s, prefill s tokens
    ttft = CW + A * s + P * s + B * s + C0
    # then o - 1 decode steps; in decode step k the worker holds s + k tokens
    decode = [CW + (A + B) * (s + k) + C0 for k in range(1, o)]
    assert req.status == "completed" and req.output_len == o
    assert req.first_token_s == pytest.approx(ttft, rel=1e-12)
    assert req.finish_s == pytest.approx(ttft + sum(decode), rel=1e-12)
    assert result.summary["mean_ttft_ms"] == pytest.approx(1000 * ttft)
    assert result.summary["mean_tpot_ms"] == pytest.approx(1000 * sum(decode) / (o - 1))
    assert result.summary["num_steps"] == o


def test_a_prompt_longer_than_the_token_budget_is_prefilled_in_chunks():
    s = TINY.max_num_batched_tokens + 44  # two chunks: 256 then 44 tokens
    result, _ = run(workload([s], 2), num_workers=1)
    req = result.requests.iloc[0]
    first = CW + A * 256 + P * 256 + B * 256 + C0
    second = CW + A * s + P * 44 + B * s + C0  # the last chunk completes the prompt and samples token 1
    assert req.first_token_s == pytest.approx(first + second)
    assert req.finish_s == pytest.approx(first + second + CW + (A + B) * (s + 1) + C0)


def test_disaggregated_ttft_adds_the_external_prefill_and_one_decode_step():
    s, o = 200, 3
    result, _ = run(workload([s], o), num_workers=1, prefill="disaggregated")
    req = result.requests.iloc[0]
    handoff = s / TINY.external_prefill_tokens_per_s
    # the decode worker computes the prompt's last token (L = s, no prefill charge) and samples token 1
    first = CW + (A + B) * s + C0
    assert req.first_token_s == pytest.approx(handoff + first)
    assert req.finish_s == pytest.approx(handoff + first + sum(CW + (A + B) * (s + k) + C0 for k in (1, 2)))


@pytest.mark.parametrize("barrier", [True, False])
def test_barrier_on_versus_off_on_a_skewed_assignment(barrier):
    """round_robin puts the 100-token prompt on worker 0 and the 10-token one on worker 1."""
    s0, s1, o = 100, 10, 6
    result, _ = run(workload([s0, s1], o), "round_robin", num_workers=2, barrier=barrier)
    assert result.requests.worker.tolist() == [0, 1]
    got = result.requests
    if barrier:
        # one clock: every step waits for worker 0 and shares b * mean L
        first = CW + (A + P) * s0 + B * (s0 + s1) / 2 + C0
        decode = sum(CW + A * (s0 + k) + B * ((s0 + s1) / 2 + k) + C0 for k in range(1, o))
        assert got.finish_s.tolist() == pytest.approx([first + decode] * 2)
        assert got.first_token_s.tolist() == pytest.approx([first] * 2)
        # worker 1 waits (a * (s0 - s1) + p * (s0 - s1)) in the prefill step and a * (s0 - s1) in each decode step
        idle = (A + P) * (s0 - s1) + (o - 1) * A * (s0 - s1)
        total = first + decode
        assert result.summary["barrier_idle_fraction"] == pytest.approx(idle / (2 * total))
    else:
        # each worker on its own clock with its own shared term b * L_g
        expect = [CW + (A + P + B) * s + C0 + sum(CW + (A + B) * (s + k) + C0 for k in range(1, o))
                  for s in (s0, s1)]
        assert got.finish_s.tolist() == pytest.approx(expect)


def test_every_step_lasts_the_slowest_local_time_plus_the_shared_term():
    """With p = 0 the timeline's loads alone give each step: T = max_g (c_w + a L_g) + b mean L + c_0."""
    model = TINY.with_overrides(p=0.0)
    rng = np.random.default_rng(3)
    wl = workload(rng.integers(5, 150, 24), rng.integers(2, 30, 24))
    result, _ = run(wl, num_workers=3, model=model)
    tl = result.timeline
    loads = tl.pivot(index="step", columns="worker", values="kv_load").to_numpy()
    times = tl.groupby("step").time_s.first().to_numpy()
    assert np.array_equal(tl.step.unique(), np.arange(len(times)))  # every step sampled
    expected = (CW + A * loads).max(axis=1) + B * loads.mean(axis=1) + C0
    finish = result.requests.finish_s.max()
    assert np.diff(np.append(times, finish)) == pytest.approx(expected, rel=1e-9)
