"""Where one fairseq-train step of each compared system spends its time: a few training steps
under torch.profiler, after a warm-up, summarised per system as milliseconds a step, the share
of that time the GPU is busy running kernels, the host waits (stream and device synchronisations,
reads of a value back to the host) and the operators launched.

    python benchmarks/train_step_profile.py DATA_BIN [--scale gpu] [--systems a,b]
        [--steps 5] [-- extra fairseq-train flags, e.g. --bf16]

Each system is built and stepped in this process by fairseq's own Trainer, with the flags of
fairseq_smlp/comparison/systems.py and those after '--'; on a CPU the GPU column is left empty.
"""

import argparse
import sys
import time

import torch
from fairseq import tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.distributed import utils as distributed_utils
from fairseq.trainer import Trainer
from torch.profiler import ProfilerActivity, profile
from train_throughput import split_at_double_dash, training_flags

from fairseq_smlp.comparison.flops import parse_training_args
from fairseq_smlp.comparison.systems import SCALES, SYSTEMS

# Runtime calls after which the host has waited for the device, and aten's read of a value.
HOST_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "aten::_local_scalar_dense")


def profile_steps(cfg, warmup: int, steps: int) -> dict:
    """The figures of ``steps`` training steps after ``warmup`` of the system ``cfg`` builds."""
    task = tasks.setup_task(cfg.task)
    task.load_dataset(cfg.dataset.train_subset)
    trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))
    batches = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=True)
    cuda = trainer.cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for _ in range(warmup):
        trainer.train_step([next(batches)])
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step([next(batches)])
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    events = prof.key_averages()
    busy = sum(event.self_device_time_total for event in events) / 1e6 if cuda else None
    waits = sum(event.count for event in events if event.key in HOST_WAITS)
    operators = sum(event.count for event in events if event.key.startswith("aten::"))
    return {"ms": 1e3 * seconds / steps, "busy": None if busy is None else busy / seconds,
            "waits": waits / steps, "operators": operators / steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a binarized data directory (examples/prepare_data.sh)")
    parser.add_argument("--scale", choices=SCALES, default="gpu")
    parser.add_argument("--systems", default=",".join(s.name for s in SYSTEMS))
    parser.add_argument("--batch-size", type=int, default=16, help="sequences a step")
    parser.add_argument("--warmup", type=int, default=3, help="steps before profiling")
    parser.add_argument("--steps", type=int, default=5, help="steps profiled")
    own, extra = split_at_double_dash(sys.argv[1:])
    args = parser.parse_args(own)
    print(f"{'system':<20}{'ms/step':>10}{'GPU busy':>10}{'host waits':>12}{'operators':>11}")
    for name in args.systems.split(","):
        flags = training_flags(args.data, name, args.scale, args.batch_size, extra)
        cfg = convert_namespace_to_omegaconf(parse_training_args(flags))
        figures = {}
        # fairseq's entry, so that the plugin's edge (--bf16 on any device) applies as in
        # fairseq-train.
        distributed_utils.call_main(
            cfg, lambda cfg: figures.update(profile_steps(cfg, args.warmup, args.steps)))
        busy = "-" if figures["busy"] is None else f"{figures['busy']:.0%}"
        print(f"{name:<20}{figures['ms']:>10.1f}{busy:>10}{figures['waits']:>12.1f}"
              f"{figures['operators']:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
