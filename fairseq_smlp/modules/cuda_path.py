"""Which of its two implementations a routing or mixing module runs: the one written for CUDA
(packed grouped products, the fixed-work balanced assignment, einsum causal products) or the
one written for the CPU (padded buffers, the compiled auction, CPU autograd functions).

Inside ``cuda_path_on_cpu()`` CPU tensors take the CUDA implementation too, operator for
operator, so that a machine without a GPU can check what a GPU runs: its results against a
reference, its host waits and the operators it launches (benchmarks/op_counts.py).
"""

from contextlib import contextmanager

import torch

_CUDA_PATH_ON_CPU = False


def takes_cuda_path(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda or (_CUDA_PATH_ON_CPU and tensor.device.type == "cpu")


@contextmanager
def cuda_path_on_cpu():
    global _CUDA_PATH_ON_CPU
    before, _CUDA_PATH_ON_CPU = _CUDA_PATH_ON_CPU, True
    try:
        yield
    finally:
        _CUDA_PATH_ON_CPU = before
