"""The decision benchmark runs and prints what it promises (figures are not checked: timing is not a test)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from balanceroute.load import LoadTracker
from balanceroute.policies import ClusterSnapshot, available_policies
from balanceroute.policies.bench import build_cluster, main


def test_json_output_has_percentiles_for_every_policy(capsys):
    assert main(["--workers", "3", "--active-per-worker", "4", "--iterations", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result) == available_policies()
    for name, row in result.items():
        assert 0 < row["p50_us"] <= row["p99_us"], name
        assert row["with_snapshot_p50_us"] > 0
        assert row["n"] == 5  # --iterations, well within the time budget
    assert {"assign_p50_us", "assign_p99_us"} <= set(result["br0"])  # pool-mode policies time assign too
    assert "assign_p50_us" not in result["jsq"]


def test_table_output_and_policy_selection(capsys):
    main(["--workers", "2", "--active-per-worker", "3", "--iterations", "5", "--policies", "br0,br_h"])
    out = capsys.readouterr().out
    assert "G=2 workers" in out and "choose p99" in out
    assert [line.split()[0] for line in out.splitlines()[3:]] == ["br0", "br_h"]


def test_slow_policies_get_fewer_calls_within_the_budget(capsys):
    main(["--workers", "2", "--active-per-worker", "3", "--iterations", "100000", "--budget-s", "0.01",
          "--policies", "phi", "--json"])
    assert json.loads(capsys.readouterr().out)["phi"]["n"] < 100000


def test_unknown_policy_is_rejected_with_the_valid_names(capsys):
    with pytest.raises(SystemExit):
        main(["--policies", "br0,nope"])
    err = capsys.readouterr().err
    assert "unknown policy nope" in err and "jsq_load" in err



@pytest.mark.parametrize("workers, active", [(3, 4), (8, 200)])
def test_the_cluster_snapshots_as_a_load_tracker_holding_its_requests_would(workers, active):
    cluster = build_cluster(workers, active, seed=5)
    table = cluster.requests
    assert len(table) == workers * active and np.all(table.generated < table.generated + table.remaining)
    tracker = LoadTracker(workers, max_num_seqs=active + 2)
    for i in range(len(table)):
        tracker.routed(i, int(table.worker[i]), int(table.prompt_len[i]), prompt_hash=int(table.prompt_hash[i]),
                       output_len=int(table.generated[i] + table.remaining[i]), running=True)
        tracker.tokens(i, int(table.generated[i]))
    for with_requests in (False, True):
        ours, theirs = cluster.snapshot(with_requests=with_requests), tracker.snapshot(with_requests=with_requests)
        for name in ClusterSnapshot.FIELDS:
            np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name), err_msg=name)
        assert (ours.requests is None) == (theirs.requests is None) == (not with_requests)
    ours, theirs = cluster.snapshot(with_requests=True).requests, tracker.request_table()
    for name in ("worker", "prompt_len", "generated", "remaining", "prompt_hash"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name), err_msg=name)
    assert np.all(cluster.snapshot().free_slots == 2)
