"""The routing region of an MoE layer or of the partial sMoE (gate, routing, experts, combine)
under torch.compile, behind --compile-routing: compiled region by region, never fairseq's whole
decoder. On a GPU the region's many small operators then run as a few fused kernels.

The regions trace whole (tests/modules/test_compiled_region.py compiles each with fullgraph=True
and compares it with eager): the CPU auction is a custom operator, the CUDA assignment runs its
fixed-work steps inside the region instead of replaying its CUDA graph, and the causal products
take their einsum form. What would still break a graph (the fp16 padded path's warning, the
largest-load read of hash routing on padded buffers) only splits the region in two.
"""

import copy
from typing import Callable, Optional

import torch

# torch.compile's backend for the regions; tests trace with "aot_eager", which generates no code.
BACKEND = "inductor"


class CompiledRegion:
    """``function``, called as it is or, with ``compiled``, through torch.compile, which
    compiles it on the first call (and again for a new input shape, with dynamic shapes from the
    second)."""

    def __init__(self, function: Callable):
        self.function = function
        self.compiled_function: Optional[Callable] = None

    def __deepcopy__(self, memo) -> "CompiledRegion":
        # A copy of the module compiles its own function: the compiled one calls this module's.
        return CompiledRegion(copy.deepcopy(self.function, memo))

    def __call__(self, *args, compiled: bool = False):
        if not compiled:
            return self.function(*args)
        if self.compiled_function is None:
            self.compiled_function = torch.compile(self.function, backend=BACKEND)
        return self.compiled_function(*args)
