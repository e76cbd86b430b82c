"""Where the tokens go: a checkpoint run over one batch of a data split, and a picture of the
tokens each expert of each MoE layer took (the tMoE of sMLP's sparse blocks, the Transformer
baselines' MoE layers) and of the feature columns each sMoE expert took (smlp_partial), with the
share of choices dropped over capacity.

    python -m fairseq_smlp.routing_map CHECKPOINT DATA_BIN [--out routing.png] [--subset valid]
        [--batch-size 16] [--inference]

The batch is routed as in training (capacities, balanced assignment), with dropout off; with
--inference, as in evaluation and generation (greedy, nothing dropped). The counts are printed
too, one line per routing module.
"""

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

# fairseq's import sets the root logger to DEBUG: keep matplotlib's debug messages out.
logging.getLogger("matplotlib").setLevel(logging.WARNING)

import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from .models.routing_stats import routing_modules  # noqa: E402
from .modules.moe_layer import MoELayer  # noqa: E402
from .modules.smoe import PartialPredictionSMoE  # noqa: E402
from .zero_shot.checkpoint import load_checkpoint  # noqa: E402


@dataclass(frozen=True)
class ExpertCounts:
    module: str  # layer{i}.{tmoe,smoe,moe}
    unit: str  # what is routed: tokens or feature columns
    kept: List[int]  # by expert
    dropped: int  # choices over capacity

    @property
    def dropped_share(self) -> float:
        return self.dropped / max(1, sum(self.kept) + self.dropped)


def routing_counts(layers: Sequence[nn.Module]) -> List[ExpertCounts]:
    """What each routing module of ``layers`` did in its last forward."""
    counts = []
    for name, module in routing_modules(layers):
        if isinstance(module, MoELayer):
            kept = module.last_kept_load.long()
            dropped = int((module.last_load - module.last_kept_load).sum())
            counts.append(ExpertCounts(name, "tokens", kept.tolist(), dropped))
        elif isinstance(module, PartialPredictionSMoE):
            columns = torch.bincount(module.last_assignment.reshape(-1),
                                     minlength=module.num_experts)
            counts.append(ExpertCounts(name, "feature columns", columns.tolist(), 0))
    return counts


def plot(counts: Sequence[ExpertCounts], title: str, out: Path) -> None:
    figure = Figure(figsize=(6.4, 1.9 * len(counts) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    for axes, module in zip(figure.subplots(len(counts), 1, squeeze=False)[:, 0], counts):
        axes.bar(range(len(module.kept)), module.kept, color="tab:blue")
        axes.set_title(f"{module.module}: {sum(module.kept):,} {module.unit} kept, "
                       f"{module.dropped_share:.1%} of the choices dropped", fontsize=9)
        axes.set_xticks(range(len(module.kept)))
        axes.set_xlabel("expert", fontsize=8)
        axes.set_ylabel(module.unit, fontsize=8)
    figure.savefig(out, dpi=100)


def route_one_batch(model: nn.Module, task, subset: str, batch_size: int,
                    inference: bool) -> None:
    task.load_dataset(subset)
    batches = task.get_batch_iterator(task.dataset(subset), max_sentences=batch_size,
                                      max_positions=model.max_positions(),
                                      ignore_invalid_inputs=True).next_epoch_itr(shuffle=False)
    batch = next(batches)
    model.train(not inference)
    for module in model.modules():  # routing as in training, without dropout's noise
        if isinstance(module, nn.Dropout) or type(module).__name__ == "FairseqDropout":
            module.eval()
    with torch.no_grad():
        model(**batch["net_input"])


def decoder_layers(model: nn.Module) -> Sequence[nn.Module]:
    decoder = model.decoder
    return decoder.layers if hasattr(decoder, "layers") else decoder.blocks


def argument_error(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the command line's values, checked before the checkpoint loads."""
    if args.batch_size < 1:
        return f"--batch-size must be at least 1; got {args.batch_size}"
    if not args.subset.strip():
        return "--subset must name a split of DATA_BIN (train, valid, test, ...); got ''"
    if args.checkpoint.is_dir():
        return (f"CHECKPOINT {args.checkpoint} is a directory; give a checkpoint file, e.g. "
                f"{args.checkpoint / 'checkpoint_best.pt'}")
    if not (args.data / "dict.txt").is_file():
        what = "is not a directory" if not args.data.is_dir() else "holds no dict.txt"
        return (f"DATA_BIN {args.data} {what}; give the binarized data directory the checkpoint "
                f"was trained on (fairseq-preprocess's output, with its dict.txt)")
    formats = FigureCanvasAgg.get_supported_filetypes()
    if args.out.is_dir():
        return f"--out {args.out} is a directory; give a file name, e.g. {args.out / 'routing.png'}"
    if args.out.suffix[1:].lower() not in formats:
        return (f"--out {args.out} must end in the extension of a picture format, e.g. .png; "
                f"valid: {', '.join('.' + name for name in sorted(formats))}")
    if not args.out.parent.is_dir():
        return f"--out {args.out}: there is no directory {args.out.parent} to write it in"
    return None


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fairseq_smlp.routing_map",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help="a checkpoint of one process")
    parser.add_argument("data", type=Path, metavar="DATA_BIN",
                        help="the binarized data directory it was trained on")
    parser.add_argument("--out", type=Path, default=Path("routing.png"), help="the PNG written")
    parser.add_argument("--subset", default="valid", help="the split whose first batch is routed")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences in the batch")
    parser.add_argument("--inference", action="store_true",
                        help="route as in evaluation (greedy, nothing dropped)")
    args = parser.parse_args(argv)
    error = argument_error(args)
    if error:
        parser.error(error)
    try:
        model, task, _ = load_checkpoint(args.checkpoint, args.data)
        route_one_batch(model, task, args.subset, args.batch_size, args.inference)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    counts = routing_counts(decoder_layers(model))
    if not counts:
        parser.exit(1, f"{parser.prog}: error: {args.checkpoint} has no routing module (a dense "
                       f"model): nothing to draw\n")
    for module in counts:
        print(f"{module.module}: {module.unit} per expert {module.kept}, "
              f"{module.dropped_share:.1%} of the choices dropped")
    mode = "inference" if args.inference else "training"
    plot(counts, f"{args.checkpoint.name}: {args.subset} batch, routed as in {mode}", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
