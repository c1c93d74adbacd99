"""The code in docs/policies.md runs and its assertions hold (in a fresh interpreter: it registers a policy)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"


def test_documented_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 3
    for block in blocks:
        done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, f"{block}\n{done.stderr}"
