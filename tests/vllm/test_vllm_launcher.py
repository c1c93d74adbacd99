"""The vllm backend's parts that need no vLLM: the command built from the Hydra config, VllmServer's messages,
metrics parsing, and the configuration errors a user can cause."""
from __future__ import annotations

import sys
import venv as venv_module

import pytest

from balanceroute.backends import make_backend
from balanceroute.config import ConfigError
from balanceroute.experiment import check_config
from balanceroute.serving import ServerError, VllmServer, engine_counter, free_port, option_args, serve_command


def test_option_args_skip_unset_values_and_make_flags():
    assert option_args({"max_model_len": 1024, "enforce_eager": True, "trust_remote_code": False, "dtype": None,
                        "gpu_memory_utilization": 0.9}) == [
        "--max-model-len", "1024", "--enforce-eager", "--gpu-memory-utilization", "0.9"]


def test_serve_command_from_the_model_and_parallel_config(compose):
    cfg = compose(["backend=vllm", "model=qwen3_30b_a3b", "parallel.dp=4", "parallel.tp=2",
                   "model.vllm.args=[--enable-prefix-caching]"])
    from omegaconf import OmegaConf
    model = OmegaConf.to_container(cfg.model.vllm, resolve=True)
    cmd = serve_command("/v/bin/vllm", model, dp=cfg.parallel.dp, tp=cfg.parallel.tp, ep=cfg.parallel.ep,
                        host="127.0.0.1", port=8123, api_server_count=1, extra_args=["--seed", "3"])
    assert cmd == ["/v/bin/vllm", "serve", "Qwen/Qwen3-30B-A3B", "--host", "127.0.0.1", "--port", "8123",
                   "--data-parallel-size", "4", "--tensor-parallel-size", "2", "--enable-expert-parallel",
                   "--api-server-count", "1", "--max-model-len", "32768", "--dtype", "auto", "--kv-cache-dtype",
                   "auto", "--gpu-memory-utilization", "0.9", "--max-num-seqs", "256", "--enable-prefix-caching",
                   "--seed", "3"]


def test_dense_models_do_not_ask_for_expert_parallelism(compose):
    from omegaconf import OmegaConf
    cfg = compose(["backend=vllm", "model=tiny_dense", "model.vllm.model=/m"])
    model = OmegaConf.to_container(cfg.model.vllm, resolve=True)
    cmd = serve_command("vllm", model, dp=2, tp=1, ep=cfg.parallel.ep, host="h", port=1)
    assert "--enable-expert-parallel" not in cmd and cmd[2] == "/m"
    assert cmd[cmd.index("--served-model-name") + 1] == "tiny_dense" and "--load-format" in cmd


# ---- the managed server (process-group behaviour: tests/serving/test_managed_server.py) ------------------------
def test_vllm_server_errors_name_vllm_serve(tmp_path):
    """The generic behaviour is tested in tests/serving; here only what VllmServer adds: its name in messages."""
    prog = "import sys; print('loading model'); print('CUDA out of memory', file=sys.stderr); sys.exit(3)"
    cmd = [sys.executable, "-c", prog]
    with pytest.raises(ServerError) as err:
        VllmServer(cmd, tmp_path / "server.log", "127.0.0.1", free_port(), ready_timeout_s=60).start()
    message = str(err.value)
    assert message.startswith("vllm serve exited with status 3 before it was ready")
    assert "loading model\nCUDA out of memory" in message and str(tmp_path / "server.log") in message


def test_engine_counter_sums_other_labels_per_engine():
    text = ("# TYPE vllm:request_success_total counter\n"
            'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 2.0\n'
            'vllm:request_success_total{engine="1",finished_reason="length",model_name="m"} 3.0\n'
            'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 4.0\n'
            'vllm:request_success_total_created{engine="0"} 1.7e9\n'
            'vllm:prompt_tokens_total{engine="1",model_name="m"} 99.0\n')
    assert engine_counter(text, "vllm:request_success_total", 3) == [6.0, 3.0, 0.0]
    assert engine_counter(text, "vllm:prompt_tokens_total", 2) == [0.0, 99.0]
    assert engine_counter(text, "vllm:request_success_total", 2, {"finished_reason": "length"}) == [4.0, 3.0]


# ---- the backend's configuration errors --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A Python whose environment lacks balanceroute (so the plugin check must fail)."""
    where = tmp_path_factory.mktemp("bare")
    venv_module.create(where, with_pip=False)
    return where / "bin" / "python"


@pytest.fixture
def fake_vllm(tmp_path):
    exe = tmp_path / "vllm"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize("overrides, message", [
    (["model=tiny"], "model.vllm: model 'tiny' has no vllm serve settings"),
    (["model=tiny_dense"], "model.vllm.model: no model to serve"),
    (["model=tiny_dense", "model.vllm.model=/m", "backend.vllm_bin=/nowhere/vllm"],
     "backend.vllm_bin: the vllm executable given (/nowhere/vllm) is not an executable file"),
    (["model=tiny_dense", "model.vllm.model=/m", "backend.api_server_count=0"],
     "backend.api_server_count: must be an integer >= 1 or null, got 0"),
    (["model=tiny_dense", "model.vllm.model=/m", "backend.ready_timeout_s=-1"],
     "backend.ready_timeout_s: must be a number > 0, got -1"),
    (["model=tiny_dense", "model.vllm.model=/m", "+backend.bench.rate=3"],
     "backend.bench.rate: unknown key; backend.bench has endpoint, stream,"),
    (["model=tiny_dense", "model.vllm.model=/m", "backend.multinode=mpi"],
     "backend.multinode: unknown multi-node mode 'mpi'; valid modes: ray, native"),
])
def test_bad_settings_name_the_key(overrides, message, compose, fake_vllm):
    cfg = compose(["backend=vllm", f"backend.vllm_bin={fake_vllm}", *overrides])
    with pytest.raises(ConfigError) as err:
        make_backend(check_config(cfg))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_vllm_environment_without_the_plugin_is_refused_before_starting(compose, fake_vllm, bare_python):
    cfg = compose(["backend=vllm", "model=tiny_dense", "model.vllm.model=/m", f"backend.vllm_bin={fake_vllm}",
                   f"backend.python={bare_python}"])
    with pytest.raises(ConfigError) as err:
        make_backend(check_config(cfg))
    assert str(err.value).startswith("backend.python: BALANCEROUTE_DP_ROUTER would be ignored: the vLLM "
                                     f"environment ({bare_python}) does not have balanceroute's")
    assert "install -e" in str(err.value)
    unpatched = compose(["backend=vllm", "model=tiny_dense", "model.vllm.model=/m", f"backend.vllm_bin={fake_vllm}",
                         f"backend.python={bare_python}", "backend.plugin=false"])
    make_backend(check_config(unpatched))  # unpatched vLLM: no check


def test_backend_builds_the_server_with_the_router_environment(compose, fake_vllm, tmp_path):
    from balanceroute.backends import RunSpec
    from balanceroute.experiment import build_policy, build_workload, router_params
    cfg = compose(["backend=vllm", "model=tiny_moe", "model.vllm.model=/m", f"backend.vllm_bin={fake_vllm}",
                   "backend.plugin=false", "router=fast_phi", "router.K=4", "parallel.dp=2", "seed=5",
                   "+backend.env.VLLM_CPU_KVCACHE_SPACE=1", "backend.port=8555"])
    run = check_config(cfg)
    backend = make_backend(run)
    backend.backend.plugin = True  # as if checked: build the server's environment with the router
    spec = RunSpec(workload=build_workload(run.workload), policy=build_policy(run), router=router_params(run),
                   seed=5, run_dir=tmp_path)
    server = backend.server(spec)
    assert server.port == 8555 and server.cwd == tmp_path and server.log_path == tmp_path / "vllm_server.log"
    assert server.env["BALANCEROUTE_DP_ROUTER"] == "fast_phi" and server.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert '"K": 4' in server.env["BALANCEROUTE_DP_ROUTER_PARAMS"] and '"seed": 5' in server.env[
        "BALANCEROUTE_DP_ROUTER_PARAMS"]
    assert server.env["BALANCEROUTE_DECISION_LOG"] == str(tmp_path.absolute() / "decisions.jsonl")
    backend.backend.plugin = False
    assert backend.server(spec).env["BALANCEROUTE_DP_ROUTER"] == ""  # unpatched even if the caller's env names one
    assert "--enable-expert-parallel" in server.command and "--data-parallel-size" in server.command
