"""Every config group composes and builds what it names; validation names the key; config_hash is stable."""
from __future__ import annotations

import dataclasses
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from balanceroute.backends import make_backend
from balanceroute.backends.sim import model_preset
from balanceroute.config import ConfigError
from balanceroute.config_hash import config_hash
from balanceroute.experiment import HISTORY_SEED_OFFSET, build_policy, build_workload, check_config, router_params
from balanceroute.policies import Policy, available_policies
from balanceroute.sim.presets import PRESETS, ModelPreset
from balanceroute.workload import Workload

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    """The selectable configs of a group (files starting with _ are shared bases, not options)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


GROUPS = ("model", "router", "parallel", "workload", "backend", "logger", "paths", "data")


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option, data_dir, hydra_runtime, compose):
    cfg = hydra_runtime(compose([f"{group}={option}", f"data.data_dir={data_dir}"], hydra_config=True))
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    assert not OmegaConf.missing_keys(job)
    OmegaConf.to_container(job, resolve=True, throw_on_missing=True)  # every interpolation resolves


@pytest.mark.parametrize("launcher, target", [("basic", "BasicLauncher"), ("submitit_local", "LocalLauncher")])
def test_launchers_compose(launcher, target, compose):
    cfg = compose([f"hydra/launcher={launcher}"], hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_sweeps_valid_values(experiment, data_dir, hydra_runtime, compose):
    cfg = hydra_runtime(compose([f"+experiment={experiment}", f"data.data_dir={data_dir}"], hydra_config=True))
    assert cfg.name == experiment  # its runs get their own sweep folder
    check_config(cfg)
    sweep = cfg.hydra.sweeper.params
    assert sweep, "a pinned study says what it sweeps"
    for key, values in sweep.items():
        for value in str(values).split(","):
            if key in GROUPS:
                assert value in options(key), f"{key}={value}"
            else:
                check_config(compose([f"+experiment={experiment}", f"{key}={value}", f"data.data_dir={data_dir}"]))


def test_each_registered_policy_has_a_router_config_and_vice_versa():
    assert options("router") == available_policies()


@pytest.mark.parametrize("router", options("router"))
def test_every_router_instantiates(router, compose):
    run = check_config(compose([f"router={router}"]))
    policy = instantiate({"_target_": run.router["_target_"], **router_params(run)}, seed=3)
    assert isinstance(policy, Policy) and policy.name == router and policy.seed == 3
    assert build_policy(run).name == router


def test_each_preset_has_a_model_config_and_vice_versa(compose):
    # tiny_dense and tiny_moe (real vLLM CPU test models) reuse the simulator's `tiny` preset
    assert {compose([f"model={m}"]).model.name for m in options("model")} == set(PRESETS)


@pytest.mark.parametrize("model", options("model"))
def test_every_model_resolves_to_its_preset(model, compose):
    model = check_config(compose([f"model={model}"])).model
    preset = model_preset(model)
    assert preset == PRESETS[model.name]  # all overrides null: the preset unchanged
    preset_fields = {f.name for f in dataclasses.fields(ModelPreset)}
    assert {f.name for f in dataclasses.fields(model)} - preset_fields <= {"hf_repo", "moe", "vllm"}
    assert model.hf_repo is None or "/" in model.hf_repo


def test_model_overrides_apply_and_are_validated(compose):
    model = check_config(compose(["model=qwen3_30b_a3b", "model.b=0", "model.max_num_seqs=64"])).model
    preset = model_preset(model)
    assert preset.b == 0 and preset.max_num_seqs == 64 and preset.a == PRESETS["qwen3_30b_a3b"].a
    with pytest.raises(ConfigError, match=r"^model: .*a must be a number >= 0.0, got -1"):
        model_preset(check_config(compose(["model.a=-1"])).model)


def test_ep_and_barrier_follow_the_model(compose):
    assert compose(["model=qwen3_0_6b"]).backend.barrier is False
    cfg = compose(["model=qwen3_30b_a3b"])
    assert cfg.parallel.ep is True and cfg.backend.barrier is True
    assert compose(["parallel.ep=false"]).backend.barrier is False


@pytest.mark.parametrize("workload", options("workload"))
def test_every_workload_builds(workload, data_dir, compose):
    cfg = compose([f"workload={workload}", "workload.num_requests=20", f"data.data_dir={data_dir}"])
    wl = build_workload(check_config(cfg).workload)
    assert isinstance(wl, Workload) and len(wl) == 20 and wl.name == workload


def test_sim_backend_builds_from_the_config(compose):
    cfg = compose(["parallel.dp=5", "backend.dispatch=pool", "model=tiny"])
    sim_config = make_backend(check_config(cfg)).config
    assert sim_config.num_workers == 5 and sim_config.dispatch == "pool" and sim_config.model.name == "tiny"


# ---- validation: one line naming the key ---------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("rate=-1", "rate: must be > 0"),
    ("rate=0", "rate: must be > 0"),
    ("rate=null", "rate: null replays a trace's own timestamps, but workload 'synthetic' is generated"),
    ("seed=-2", "seed: must be an integer >= 0, got -2"),
    ("parallel.dp=0", "parallel.dp: must be an integer >= 1 (data-parallel workers), got 0"),
    ("workload.num_requests=0", "workload.num_requests: must be an integer >= 1, got 0"),
    ("+model.aa=1", "model.aa: unknown key; model has name, hf_repo, moe, a, b, c0"),
    ("+workload.rat=3", "workload.rat: unknown key; workload has _target_, name, num_requests, rate,"),
    ("+parallel.dpp=4", "parallel.dpp: unknown key; parallel has dp, tp, ep"),
    ("+backend.dispatchh=pool", "backend.dispatchh: unknown key; backend has name, dispatch, barrier,"),
    ("+logger.projct=x", "logger.projct: unknown key; logger has name"),
    ("+foo=1", "foo: unknown key; the configuration has name, rate, seed,"),
    ("+steady.warmup=0.2", "steady.warmup: unknown key; steady has warmup_fraction,"),
    ("steady.warmup_fraction=1.5", "steady: warmup_fraction (a fraction of the run) must be a number in [0, 1), got 1.5"),
])
def test_bad_values_name_the_key(override, message, compose):
    with pytest.raises(ConfigError) as err:
        check_config(compose([override]))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["logger=wandb", "+logger.projct=x"], "logger.projct: unknown key; logger has mode, project,"),
    (["backend=proxy", "+backend.bench.warm=1"], "backend.bench.warm: unknown key; backend.bench has endpoint,"),
    (["backend=proxy", "+backend.fleet.scale=2"], "backend.fleet.scale: unknown key; backend.fleet has host,"),
    (["model=qwen3_0_6b", "+model.vllm.enable_prefix_caching=true"],
     "model.vllm.enable_prefix_caching: unknown key; model.vllm has model, served_model_name,"),
])
def test_unknown_keys_of_an_option_and_of_nested_sections_are_refused(overrides, message, compose):
    with pytest.raises(ConfigError) as err:
        check_config(compose(overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, key", [("rate=fast", "rate"), ("parallel.tp=1.5", "parallel.tp"),
                                           ("resume=maybe", "resume"), ("model.aa=1", "model.aa"),
                                           ("backend.timeout_s=soon", "backend.timeout_s")])
def test_composition_refuses_wrong_types_and_unknown_keys_by_their_schema(override, key, compose):
    """Without ``+``, Hydra itself checks an override against the section's schema while composing."""
    with pytest.raises(ConfigCompositionException) as err:
        compose([override])
    assert f"full_key: {key}" in str(err.value.__cause__)


def test_a_group_file_with_a_misspelt_key_is_refused_while_composing(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    text = (conf / "model" / "tiny.yaml").read_text()
    (conf / "model" / "tiny.yaml").write_text(text + "max_num_seq: 4\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)), \
            pytest.raises(ConfigCompositionException) as err:
        hydra_compose(config_name="config", overrides=["model=tiny"])
    assert "Key 'max_num_seq' not in 'ModelConfig'" in str(err.value)


def test_missing_trace_names_the_file(tmp_path, compose):
    cfg = compose(["workload=azure_conv", f"data.data_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^workload.path: trace file '.*azure_llm_2023_conv.csv' not found"):
        check_config(cfg)


def test_trace_workload_accepts_null_rate_and_whole_trace(data_dir, compose):
    check_config(compose(["workload=azure_conv", "rate=null", "workload.num_requests=null",
                                 f"data.data_dir={data_dir}"]))


@pytest.mark.parametrize("group, override, key", [
    ("router", "router.K=0", "router: fast_phi: parameter K must be an integer >= 1"),
    ("backend", "backend.dispatch=sometimes", "backend:"),
    ("workload", "workload.burstiness=-1", "workload:"),
])
def test_component_errors_are_prefixed_with_their_group(group, override, key, compose):
    overrides = ["router=fast_phi", override]
    build = {"router": build_policy, "backend": make_backend,
             "workload": lambda run: build_workload(run.workload)}[group]
    with pytest.raises(ConfigError) as err:
        build(check_config(compose(overrides)))
    assert str(err.value).startswith(key)


# ---- config_hash ----------------------------------------------------------------------------------------------
def test_hash_ignores_order_spelling_and_where_results_go(compose):
    base = config_hash(compose(["router=jsq", "rate=3"]))
    assert config_hash(compose(["rate=3.0", "router=jsq"])) == base
    assert config_hash(compose(["router=jsq", "rate=3", "resume=false", "name=other",
                                       "paths.log_dir=/elsewhere", "data.data_dir=/data"])) == base


@pytest.mark.parametrize("override", ["rate=4", "seed=1", "router.K=3", "model.b=0", "parallel.dp=4",
                                      "workload.num_requests=7", "backend.prefill=disaggregated"])
def test_hash_changes_with_anything_run_defining(override, compose):
    assert config_hash(compose(["router=fast_phi", override])) != config_hash(
        compose(["router=fast_phi"]))


def test_hash_does_not_need_hydra_runtime(compose):
    """paths.output_dir interpolates ${hydra:...}; it is excluded before resolving."""
    cfg = compose()
    with open_dict(cfg):
        cfg.paths.output_dir = "${hydra:runtime.output_dir}"
    assert len(config_hash(cfg)) == 16


def test_readme_local_override_example_applies(tmp_path):
    """The README's conf/local/default.yaml example, dropped into a copy of conf/, overrides the folders."""
    readme = (CONF_DIR.parent / "README.md").read_text()
    section = readme.split("### Machine-specific settings", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "local" / "default.yaml").write_text(example)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = hydra_compose(config_name="config")
    expected = yaml.safe_load(example)
    assert cfg.paths.log_dir == expected["paths"]["log_dir"] and cfg.data.data_dir == expected["data"]["data_dir"]


def readme_run_commands() -> list[list[str]]:
    """The overrides of every ``python run.py`` example in the README (first value of each swept list)."""
    readme = (CONF_DIR.parent / "README.md").read_text().replace("\\\n", " ")  # join continued lines
    commands = []
    for line in readme.splitlines():
        if line.startswith("python run.py"):
            args = shlex.split(line.split("#", 1)[0])[2:]
            if "backend=vllm" in args:  # needs vLLM installed: the vllm tier runs such commands for real
                continue
            swept = [a for a in args if "=" in a and "=[" not in a]  # a list value ([a,b]) is one value
            commands.append([a.split(",")[0] if a in swept else a for a in args if a != "-m"])
    return commands


@pytest.mark.parametrize("overrides", readme_run_commands(), ids=" ".join)
def test_readme_examples_are_valid(overrides, data_dir, compose):
    run = check_config(compose([*overrides, f"data.data_dir={data_dir}"], hydra_config=True))
    build_policy(run)
    make_backend(run)
    build_workload(run.workload)


def test_sweep_folder_is_named_by_study_and_overrides(compose):
    hydra = compose(hydra_config=True).hydra
    assert OmegaConf.to_container(hydra.sweep)["dir"] == "${paths.log_dir}/multirun/${name}"
    assert OmegaConf.to_container(hydra.sweep)["subdir"] == "${hydra.job.override_dirname}"
    assert {"resume", "name", "experiment"} <= set(hydra.job.config.override_dirname.exclude_keys)


# ---- study arms: one dispatch meaning on every backend ------------------------------------------------------------
def _arm_dispatch(arm: str) -> str | None:
    spec = yaml.safe_load((CONF_DIR / "arm" / f"{arm}.yaml").read_text())
    return (spec.get("backend") or {}).get("dispatch")


@pytest.mark.parametrize("arm", [a for a in options("arm") if a.startswith(("br0", "br_h", "bf_io"))])
def test_every_br_and_bf_io_arm_places_from_the_pool(arm, compose):
    """Bu et al.'s and Chen et al.'s policies are pool policies: their arms set the pool, on any study."""
    assert _arm_dispatch(arm) == "pool"
    assert compose([f"+arm={arm}"]).backend.dispatch == "pool"
    assert compose(["+experiment=bu2026_g8", f"+arm={arm}"]).backend.dispatch == "pool"


@pytest.mark.parametrize("backend", ["emulated", "vllm"])
def test_a_backend_without_a_pool_refuses_a_pool_arm(backend, compose):
    cfg = compose([f"backend={backend}", "+arm=br0_pool", "model=tiny_moe", "model.vllm.model=/nonexistent"])
    with pytest.raises(ConfigError, match=rf"^backend.dispatch: 'pool' is not available with backend={backend} "):
        make_backend(check_config(cfg))


def test_the_proxy_honours_a_pool_arm(compose):
    run = check_config(compose(["backend=proxy", "+arm=br0_pool", "model=tiny"]))
    backend = make_backend(run)
    assert backend.dispatch == "pool"
    assert "--dispatch pool" in " ".join(backend.proxy_command(_spec(run), ["http://127.0.0.1:1"], 2))


def test_an_unknown_backend_key_is_refused(compose):
    with pytest.raises(ConfigError, match=r"^backend.dispach: unknown key; backend has name, dispatch, "):
        check_config(compose(["backend=proxy", "+backend.dispach=pool"]))


def _spec(run):
    from balanceroute.backends import RunSpec
    return RunSpec(workload=build_workload(run.workload), policy=build_policy(run), router=router_params(run),
                   seed=0, run_dir=Path("."))


# ---- warm start from history ---------------------------------------------------------------------------------------
def test_history_warm_start_draws_other_requests_of_the_same_workload(compose):
    run = check_config(compose(["+arm=br_h_survival", "workload.num_requests=50", "router.history_requests=300",
                                "seed=4"]))
    params = router_params(run)
    assert "history_requests" not in params
    lengths = params["prior_lengths"]
    assert len(lengths) == 300 and params["prior_weight"] == 300.0
    assert lengths[:50] != build_workload(run.workload).output_len.tolist()  # not this run's own requests
    history = dataclasses.replace(run.workload, seed=4 + HISTORY_SEED_OFFSET, num_requests=300)
    assert lengths == build_workload(history).output_len.tolist()  # the same generator, another seed
    policy = build_policy(run)
    assert policy.estimator.prior_mean == pytest.approx(np.mean(lengths))


def test_history_of_a_trace_workload_is_refused(data_dir, compose):
    cfg = compose(["+arm=br_h_survival", "workload=azure_conv", f"data.data_dir={data_dir}"])
    with pytest.raises(ConfigError, match=r"^router.history_requests: 2000 asks for history drawn from a generated "
                                          r"workload, but workload 'azure_conv' replays a trace"):
        router_params(check_config(cfg))
