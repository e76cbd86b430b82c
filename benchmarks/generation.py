"""Decoding speed: tokens/s of fairseq's SequenceGenerator (greedy, the engine of fairseq-generate,
fairseq-interactive and the hub interface) for the all-MLP models decoding one position at a
time against the same models recomputing the whole prefix at every step, and against fairseq's
transformer_lm with its key/value cache. The models are the systems of the comparison at the
``cpu`` scale (comparison/systems.py: equal training FLOPs per token at T = 128), built with a
longer context, untrained: decoding costs the same whatever the weights.

    python benchmarks/generation.py data/sotu/bin [--context 512 --prompt 64 --batch 1 8]

Target: incremental decoding >= 5x the recomputation, and within 1.5x of the Transformer.
"""

import argparse
import contextlib
import functools
import logging
import warnings
from unittest import mock

import torch
from fairseq import tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_generator import SequenceGenerator

from fairseq_smlp.comparison.flops import model_costs, parse_training_args
from fairseq_smlp.comparison.systems import system
from fairseq_smlp.models.all_mlp import AllMlpDecoder
from spatial_mixers import time_in_turns

SYSTEMS = ("gmlp", "smlp_deterministic", "transformer")


def build(data: str, name: str, context: int):
    """The system's model at the cpu scale with a context of ``context`` tokens, its dictionary
    and its forward FLOPs per token at that context."""
    flags = system(name).flags("cpu")
    flags[flags.index("--tokens-per-sample") + 1] = str(context)
    args = parse_training_args([data, *flags, "--cpu"])
    config = convert_namespace_to_omegaconf(args)  # as fairseq-train builds its model
    task = tasks.setup_task(config.task)
    model = task.build_model(config.model).eval()
    flops = model_costs(args, len(task.target_dictionary)).forward_flops_per_token
    return model, task.target_dictionary, flops


def decode(model, dictionary, prompts: torch.Tensor, recompute: bool) -> None:
    """Greedy decoding after ``prompts`` (B, P) until the model's context is full."""
    length = model.max_decoder_positions() - 1  # the [eos] that decoding starts from is input
    generator = SequenceGenerator([model], dictionary, beam_size=1, max_len_a=0,
                                  max_len_b=length, min_len=length)
    sample = {"net_input": {"src_tokens": prompts,
                            "src_lengths": torch.full((len(prompts),), prompts.size(1))}}
    # Without incremental decoding, every step runs the decoder over every token so far.
    way = (mock.patch.object(AllMlpDecoder, "decodes_incrementally", False) if recompute
           else contextlib.nullcontext())
    with torch.no_grad(), way:
        generator.generate([model], sample, prefix_tokens=prompts)


def main():
    warnings.filterwarnings("ignore")  # hydra's and fairscale's deprecation notices
    logging.disable(logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a binarized data directory (examples/prepare_data.sh)")
    parser.add_argument("--context", type=int, default=512, help="the models' context T")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="prompts at once")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest counts")
    args = parser.parse_args()
    torch.manual_seed(0)
    new = args.context - 1 - args.prompt
    print(f"CPU, {torch.get_num_threads()} threads; greedy, {args.prompt}-token prompts, {new} "
          f"new tokens, T = {args.context}; the fastest of {args.repeats}, cases in turns")
    models = {name: build(args.data, name, args.context) for name in SYSTEMS}
    for name, (_, _, flops) in models.items():
        print(f"  {name}: {flops / 1e6:.2f} forward MFLOPs per token at T = {args.context}")
    for batch in args.batch:
        cases = {}
        for name, (model, dictionary, _) in models.items():
            prompts = torch.randint(dictionary.nspecial, len(dictionary), (batch, args.prompt))
            ways = [False, True] if isinstance(model.decoder, AllMlpDecoder) else [False]
            for recompute in ways:
                way = "recomputed" if recompute else "incremental"
                if name == "transformer":
                    way = "key/value cache"
                cases[f"{name}, {way}"] = functools.partial(decode, model, dictionary, prompts,
                                                            recompute)
        seconds = time_in_turns(cases, args.repeats, warmup=1)
        rates = {case: batch * new / s for case, s in seconds.items()}
        cached = rates["transformer, key/value cache"]
        print(f"\nbatch {batch}\n{'decoding':<34}{'tokens/s':>10}{'x recomputed':>14}"
              f"{'x transformer':>15}")
        for case, rate in rates.items():
            recomputed = rates.get(case.replace("incremental", "recomputed"))
            speedup = f"{rate / recomputed:.2f}" if "incremental" in case else ""
            print(f"{case:<34}{rate:>10,.0f}{speedup:>14}{rate / cached:>15.2f}")


if __name__ == "__main__":
    main()
