"""Calibration: fit the simulator's step model to live vLLM runs (``balanceroute calibrate``, docs/fidelity.md)."""
