"""A new policy is one file in balanceroute/policies/ plus one yaml in conf/router/: nothing else to register."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

POLICY = '''
import numpy as np

from balanceroute.policies import Policy, register_policy


@register_policy("{name}")
class LastWorker(Policy):
    """Always the highest-numbered worker with a free slot (a test policy)."""

    def choose(self, snap, prompt_len, **request):
        return int(np.flatnonzero(snap.open_workers())[-1])
'''


def test_dropping_a_policy_file_and_a_router_yaml_is_enough(tmp_path, run_py):
    name = f"zz_last_worker_{uuid.uuid4().hex[:8]}"
    module = REPO / "balanceroute" / "policies" / f"{name}.py"
    router = REPO / "conf" / "router" / f"{name}.yaml"
    try:
        module.write_text(POLICY.format(name=name))
        router.write_text(f"_target_: balanceroute.policies.make_policy\nname: {name}\n")
        proc = run_py([f"router={name}", "parallel.dp=4", "workload.num_requests=30"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(next(tmp_path.rglob("result.json")).read_text())
        assert result["router"] == name and result["completed"] == 30
        assert result["worker_requests"][:3] == [0, 0, 0] and result["worker_requests"][3] == 30
    finally:
        module.unlink(missing_ok=True)
        router.unlink(missing_ok=True)
