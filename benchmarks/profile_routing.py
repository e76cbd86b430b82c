"""Where a routing module's training step spends its GPU time, and which of its lines make the
host wait: the top CUDA kernels of one forward + backward (torch.profiler), then the source
lines that CUDA's sync debug mode flags.

    python benchmarks/profile_routing.py [--dtype bfloat16] [--rows 12]
"""

import argparse
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import PartialPredictionSMoE
from fairseq_smlp.modules.spatial_projection import CausalSpatialProjection
from fairseq_smlp.modules.tmoe import TokenMoE


def step(module, x):
    module(x).float().square().mean().backward()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--rows", type=int, default=12, help="kernels listed per module")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cases = {
        "dense SGU projection": (CausalSpatialProjection(1, 1024), (16, 1024, 2048)),
        "partial sMoE E=16": (PartialPredictionSMoE(2048, 16, 1024, 204), (16, 1024, 2048)),
        "tMoE E=16": (TokenMoE(1024, 4096, 16), (16, 1024, 1024)),
        "top-1 E=16": (MoELayer(TopKGate(1024, 16, 1), BatchedFeedForwardExperts(16, 1024, 4096),
                                16), (16, 1024, 1024)),
    }
    for name, (module, shape) in cases.items():
        module = module.cuda().to(dtype).train()
        x = torch.randn(*shape, device="cuda", dtype=dtype, requires_grad=True)
        for _ in range(3):  # allocations, autotuning, the assignment's graph recording
            step(module, x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(module, x)
            torch.cuda.synchronize()
        print(f"\n{name}, {args.dtype}, input {shape}")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows,
                                        max_name_column_width=60))
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(module, x)
        torch.cuda.set_sync_debug_mode("default")
        lines = sorted({f"{w.filename.split('site-packages/')[-1]}:{w.lineno}" for w in caught
                        if "synchronizing" in str(w.message)})
        print(f"host waits at: {', '.join(lines) or 'nowhere'}")


if __name__ == "__main__":
    main()
