"""The disaggregated prefill model (balanceroute.sim.prefill): a FIFO pool, so requests reach the decode router in
client order (never re-sorted by prompt length), and a finite pool throughput bounds how fast a burst drains."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_helpers import run, workload

from balanceroute.backends.sim import model_preset
from balanceroute.experiment import check_config
from balanceroute.sim.prefill import prefill_completion
from balanceroute.sim.presets import TINY

R_ONE = TINY.external_prefill_tokens_per_s  # 1e4 tokens/s: one request's prefill speed in the tiny preset


def loop_completion(client, prompt, r, pool):
    """The recurrence done_i = max(c_i + s_i / min(r, R), done_{i-1} + s_i / R), written out as a plain loop."""
    done, last = [], -math.inf
    for c, s in zip(client, prompt):
        per_pool = 0.0 if pool is None else s / pool
        alone = c + s / (r if pool is None else min(r, pool))
        last = max(alone, last + per_pool)
        done.append(last)
    return np.array(done)


# ---- (a) order is kept -----------------------------------------------------------------------------------------------
def test_a_long_prompt_sent_first_is_still_ready_first():
    done = prefill_completion(np.array([0.0, 0.001]), np.array([2000, 10]), R_ONE)
    # alone the short one would be ready at 0.002 s; FIFO holds it behind the long one (0.2 s)
    assert done.tolist() == pytest.approx([0.2, 0.2])
    assert np.all(np.diff(done) >= 0)


def test_a_finite_pool_adds_each_prompt_s_work_after_the_one_before():
    done = prefill_completion(np.array([0.0, 0.001]), np.array([2000, 10]), R_ONE, pool_rate=5e4)
    assert done.tolist() == pytest.approx([0.2, 0.2 + 10 / 5e4])


def test_one_request_is_never_prefilled_faster_than_the_whole_pool():
    done = prefill_completion(np.array([0.0, 5.0]), np.array([2000, 10]), R_ONE, pool_rate=5000.0)
    assert done.tolist() == pytest.approx([0.4, 5.0 + 10 / 5000])


@pytest.mark.parametrize("policy", ["round_robin", "jsq"])
def test_disaggregated_simulation_routes_requests_in_client_order(policy):
    """Client order: the long prompt first. The old model released the short one 0.2 s earlier, so it was routed
    first and took worker 0."""
    result, sim = run(workload([2000, 10], 4, arrival=[0.0, 0.001]), policy, num_workers=2, prefill="disaggregated")
    req = result.requests
    assert req.status.tolist() == ["completed", "completed"]
    assert req.worker.tolist() == [0, 1]
    assert sim.req.request_id.tolist() == [0, 1]
    assert sim.req.arrival.tolist() == pytest.approx([0.2, 0.2])
    # the short request waited behind the long one's prefill
    assert req.first_token_s.iloc[1] > 0.2


def test_requests_sent_together_are_not_sorted_by_prompt_length():
    """All at t = 0 (an infinite request rate): the decode router sees them in client order."""
    prompts = [900, 50, 700, 20, 300, 10]
    result, sim = run(workload(prompts, 3), "round_robin", num_workers=3, prefill="disaggregated")
    assert sim.req.request_id.tolist() == list(range(len(prompts)))
    assert result.requests.worker.tolist() == [0, 1, 2, 0, 1, 2]


# ---- (b) the vectorised form equals the recurrence -------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(0, 60), r=st.sampled_from([1e3, 1e4, math.inf]),
       pool=st.sampled_from([None, math.inf, 500.0, 2e4, 1e6]))
def test_vectorised_completion_equals_the_loop(data, n, r, pool):
    gaps = data.draw(st.lists(st.sampled_from([0.0, 1e-4, 0.01, 0.3, 2.0]), min_size=n, max_size=n))
    prompt = np.array(data.draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n)), dtype=np.int64)
    client = np.cumsum(np.array(gaps, dtype=np.float64))
    got = prefill_completion(client, prompt, r, pool)
    want = loop_completion(client, prompt, r, pool)
    assert got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(got) >= 0)
    assert np.all(got >= client + prompt / r - 1e-12)


@pytest.mark.parametrize("pool", [None, 3e4])
def test_vectorised_completion_equals_the_loop_on_a_long_poisson_run(pool):
    rng = np.random.default_rng(7)
    client = np.cumsum(rng.exponential(0.01, 5000))
    prompt = rng.integers(1, 4000, 5000)
    np.testing.assert_allclose(prefill_completion(client, prompt, R_ONE, pool),
                               loop_completion(client, prompt, R_ONE, pool), rtol=1e-12)


# ---- (c) a finite pool bounds throughput -----------------------------------------------------------------------------
@pytest.mark.parametrize("pool", [2e3, 1e4, 1e5])
def test_a_burst_drains_no_faster_than_the_pool_rate(pool):
    rng = np.random.default_rng(3)
    prompt = rng.integers(1, 3000, 200)
    done = prefill_completion(np.zeros(200), prompt, R_ONE, pool)
    assert done[-1] >= prompt.sum() / pool * (1 - 1e-12)
    # and every prefix too: the first k requests need their tokens' worth of pool time
    assert np.all(done >= np.cumsum(prompt) / pool * (1 - 1e-12))


def test_an_ample_pool_is_bounded_only_by_the_longest_prompt_so_far():
    prompt = np.array([100, 3000, 20, 500])
    done = prefill_completion(np.zeros(4), prompt, R_ONE)
    assert done.tolist() == pytest.approx(np.maximum.accumulate(prompt / R_ONE).tolist())


def test_simulated_first_tokens_respect_the_pool_rate():
    prompts = [400, 100, 250, 50, 300]
    pool = 2000.0
    model = TINY.with_overrides(prefill_pool_tokens_per_s=pool)
    result, _ = run(workload(prompts, 2), "round_robin", num_workers=2, prefill="disaggregated", model=model)
    first = result.requests.first_token_s.to_numpy()
    assert np.all(first > np.cumsum(prompts) / pool)


# ---- the preset field ------------------------------------------------------------------------------------------------
def test_prefill_pool_rate_defaults_to_ample_and_is_validated():
    assert TINY.prefill_pool_tokens_per_s is None
    assert TINY.with_overrides(prefill_pool_tokens_per_s=math.inf).prefill_pool_tokens_per_s == math.inf
    assert TINY.with_overrides(prefill_pool_tokens_per_s=5e4).prefill_pool_tokens_per_s == 5e4
    for bad in (0.0, -1.0, math.nan, "fast", True):
        with pytest.raises(ValueError, match="prefill_pool_tokens_per_s must be a number > 0"):
            TINY.with_overrides(prefill_pool_tokens_per_s=bad)


def test_prefill_pool_rate_is_a_model_config_override(compose):
    cfg = compose(["model=tiny", "model.prefill_pool_tokens_per_s=5000"])
    assert model_preset(check_config(cfg).model).prefill_pool_tokens_per_s == 5000
    assert model_preset(check_config(compose(["model=tiny"])).model).prefill_pool_tokens_per_s is None
