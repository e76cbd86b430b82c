"""fairseq's fp32 master copy of the parameters under --fp16 and --bf16, with experts spread over
ranks.

fairseq's FP16Optimizer steps an fp32 copy of every parameter and measures the gradient norm on
that copy. By default it flattens the copy into one tensor, where this rank's experts can no
longer be told from the shared weights: the norm would take them for shared and differ between
ranks. Unflattened (--fp16-no-flatten-grads) each copy gets the ``expert`` mark but not the
placement, so with more ranks than experts the norm would count an expert once per replica. Once
a model places experts over ranks, the copy is made here instead: flattening is refused with the
flags that avoid it, and every copy keeps its placement. --memory-efficient-fp16 and --amp step
the model's own parameters and need none of this (fairseq's --bf16 is a TPU option).
"""

from fairseq.optim.fp16_optimizer import _FP16OptimizerMixin

_fairseq_build_fp32_params = _FP16OptimizerMixin.build_fp32_params.__func__


def build_fp32_params_with_experts(cls, args, params, flatten=True):
    placed = [p for p in params if hasattr(p, "expert_placement")]
    if flatten and placed:
        raise ValueError(
            f"--fp16 and --bf16 flatten the fp32 copy of the parameters into one tensor, which "
            f"cannot keep this rank's {len(placed)} expert parameters apart from the shared ones "
            f"(experts spread over {placed[0].expert_placement.world_size} ranks); add "
            f"--fp16-no-flatten-grads (for --bf16 too), or use --memory-efficient-fp16 or --amp"
        )
    fp32_params = _fairseq_build_fp32_params(cls, args, params, flatten)
    if not flatten:
        for parameter, copy in zip(params, fp32_params):
            if hasattr(parameter, "expert_placement"):
                copy.expert_placement = parameter.expert_placement
    return fp32_params


def install_expert_fp32_copies() -> None:
    """Make fairseq's FP16Optimizer build its fp32 copies through the function above."""
    _FP16OptimizerMixin.build_fp32_params = classmethod(build_fp32_params_with_experts)
