"""The GPU, its torch, the dtypes torch's grouped matrix product takes there, the time of one
balanced assignment (its Triton kernel, its recorded-graph replay, its plain launches), and a
check that a training step of every routing path runs under CUDA's sync debug mode set to
error, which raises at any operation that makes the host wait for the device.

    python benchmarks/gpu_device_check.py
"""

import time

import torch
import torch.nn.functional as F

from fairseq_smlp.modules import balanced_assignment as assignment
from fairseq_smlp.modules.balanced_assignment_kernel import assign
from fairseq_smlp.modules.experts import BatchedFeedForwardExperts
from fairseq_smlp.modules.gates import BalancedGate, TopKGate
from fairseq_smlp.modules.moe_layer import MoELayer
from fairseq_smlp.modules.smoe import PartialPredictionSMoE
from fairseq_smlp.modules.tmoe import TokenMoE


def grouped_mm_dtypes(device):
    works = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        x = torch.randn(64, 64, device=device, dtype=dtype)
        w = torch.randn(4, 64, 64, device=device, dtype=dtype)
        offsets = torch.tensor([16, 32, 48, 64], device=device, dtype=torch.int32)
        try:
            F.grouped_mm(x, w, offs=offsets)
            works.append(str(dtype).split(".")[-1])
        except (RuntimeError, AttributeError):
            pass
    return works


def main():
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}")
    print(f"grouped_mm takes: {', '.join(grouped_mm_dtypes(device)) or 'nothing'}")
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(16384, 1024, device=device, dtype=dtype)
        w = torch.randn(16, 1024, 4096, device=device, dtype=dtype)
        offsets = torch.arange(1, 17, device=device, dtype=torch.int32) * 1024
        grouped = milliseconds(lambda: F.grouped_mm(x, w, offs=offsets))
        batched = milliseconds(lambda: torch.bmm(x.view(16, 1024, 1024), w))
        torch.cuda.set_sync_debug_mode("error")
        try:
            F.grouped_mm(x, w, offs=offsets)
            syncs = "no host sync"
        except RuntimeError:
            syncs = "host sync"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        print(f"grouped_mm {str(dtype).split('.')[-1]}, 16 x (1024 x 1024 @ 1024 x 4096): "
              f"{grouped:.3f} ms ({syncs}), bmm {batched:.3f} ms")
    for shape in [(1, 16384, 16), (16, 2048, 16)]:
        scores = torch.randn(*shape, device=device)
        fused = milliseconds(lambda: assign(scores))
        replayed = milliseconds(lambda: assignment.replayed(scores))
        launched = milliseconds(lambda: assignment.solve(scores))
        agree = float(assign(scores).eq(assignment.solve(scores)).float().mean())
        print(f"balanced assignment {shape}: {fused:.3f} ms one kernel ({agree:.2%} of the items "
              f"as op by op), {replayed:.3f} ms replayed, {launched:.3f} ms op by op")
    modules = {
        "tMoE": TokenMoE(256, 1024, 16),
        "top-1": MoELayer(TopKGate(256, 16, 1), BatchedFeedForwardExperts(16, 256, 1024), 16),
        "top-2": MoELayer(TopKGate(256, 16, 2), BatchedFeedForwardExperts(16, 256, 1024), 16),
        "balanced": MoELayer(BalancedGate(256, 16), BatchedFeedForwardExperts(16, 256, 1024), 16),
    }
    for name, module in modules.items():
        check(name, module, torch.randn(4, 512, 256))
    check("partial sMoE", PartialPredictionSMoE(512, 16, 512, 102), torch.randn(4, 512, 512))


# Calls before timing or checking: the balanced assignment records its graph on a shape's
# second call, and recording waits for the device.
WARM_UP = 3


def milliseconds(fn, repeats=20):
    for _ in range(WARM_UP):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def check(name, module, x):
    module = module.cuda().to(torch.bfloat16).train()
    x = x.cuda().to(torch.bfloat16).requires_grad_()
    for _ in range(WARM_UP):  # allocations, autotuning, graph recording
        module(x).float().square().mean().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        module(x).float().square().mean().backward()
        verdict = "no host sync"
    except RuntimeError as error:
        verdict = f"SYNCS: {str(error).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    print(f"training step of {name}: {verdict}")


if __name__ == "__main__":
    main()
