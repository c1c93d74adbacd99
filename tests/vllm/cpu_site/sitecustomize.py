"""CPU-only test support: run on interpreter start in every vLLM process (this folder is put on PYTHONPATH by
tests/vllm/venv.py for MoE models with data parallelism on the CPU build). It arranges for
:mod:`cpu_moe_dp` to patch two vLLM modules right after they are imported; nothing is imported eagerly, so
other Python processes (pip, the tokenizer maker) are unaffected. Not used by balanceroute at run time.
"""
import importlib.abc
import importlib.machinery
import sys

#: module name -> name of the cpu_moe_dp function that patches it
_PATCHES = {
    "vllm.distributed.device_communicators.cpu_communicator": "patch_communicator",
    "vllm.model_executor.layers.fused_moe.experts.cpu_moe": "patch_experts",
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds the listed modules with the normal finder and runs the patch after the module's own code."""

    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            import cpu_moe_dp
            getattr(cpu_moe_dp, _PATCHES[name])(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchAfterImport())
