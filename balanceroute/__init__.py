"""balanceroute: KV-aware data-parallel routing for MoE LLM serving."""

__version__ = "0.1.0"
