"""Where a checkpoint meets a dictionary, binarized data or a disk: each fault set up for real
stops with one line that names the files and the fix, and leaves the files as they were."""

import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import fairseq_smlp
from fairseq_smlp.checkpoint.dictionary import DICTIONARY_KEY
from fairseq_smlp.zero_shot.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
USER_DIR = str(Path(fairseq_smlp.__file__).parent)
ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           PYTHONWARNINGS="ignore::FutureWarning:fairscale.experimental.nn.offload")
BLOCK = "32"


def run(*command, limit_file_size=None):
    def limit():
        if limit_file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run([sys.executable, "-m", *command], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)


def train_flags(data_dir, save_dir, max_update, block=BLOCK):
    return ["fairseq_cli.train", str(data_dir), "--user-dir", USER_DIR, "--task",
            "language_modeling", "--arch", "gmlp_lm_tiny", "--decoder-layers", "1", "--tokens-per-sample", block, "--batch-size", "4",
            "--optimizer", "adam", "--lr", "1e-3", "--max-update", str(max_update),
            "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--cpu", "--num-workers",
            "0", "--log-format", "simple"]


def checksums(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A gmlp_lm_tiny checkpoint_last.pt of 2 updates on the test corpus."""
    save_dir = tmp_path_factory.mktemp("gmlp")
    result = run(*train_flags(data_dir, save_dir, 2))
    assert result.returncode == 0, result.stderr[-3000:]
    return save_dir / "checkpoint_last.pt"


def data_copy(data_dir, tmp_path, edit_dictionary=None):
    copy = tmp_path / "bin"
    shutil.copytree(data_dir, copy)
    if edit_dictionary:
        lines = (copy / "dict.txt").read_text().splitlines()
        (copy / "dict.txt").write_text("\n".join(edit_dictionary(lines)) + "\n")
    return copy


def load(checkpoint, data):
    return checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)],
                                                         arg_overrides={"data": str(data)})


def swap_two(lines):
    return [lines[1], lines[0], *lines[2:]]


def test_the_checkpoint_holds_its_dictionarys_fingerprint_and_loads_on_its_data(data_dir,
                                                                              trained):
    saved = checkpoint_utils.load_checkpoint_to_cpu(str(trained))[DICTIONARY_KEY]
    assert saved["data"] == str(data_dir.resolve())
    assert saved["size"] == len((data_dir / "dict.txt").read_text().splitlines()) + 4
    load(trained, data_dir)


def test_eval_lm_refuses_a_dictionary_of_the_same_size_in_one_line(data_dir, trained, tmp_path):
    other = data_copy(data_dir, tmp_path, swap_two)
    before = checksums(other)
    result = run("fairseq_cli.eval_lm", str(other), "--user-dir", USER_DIR, "--path",
                 str(trained), "--gen-subset", "valid", "--cpu", "--tokens-per-sample", BLOCK)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("eval_lm.py: error: "), last
    assert (f"was trained with the dictionary of {data_dir.resolve()}" in last and
            f"the dictionary of {other}" in last and "the same size but other tokens" in last), last
    assert checksums(other) == before


def test_a_dictionary_of_another_size_is_named_with_both_sizes(data_dir, trained, tmp_path):
    other = data_copy(data_dir, tmp_path, lambda lines: lines[:-1])
    with pytest.raises(ValueError, match=r"\((\d+) entries\); the dictionary of .* \(\d+ "
                                         r"entries\) is another one \(another size\)"):
        load(trained, other)


def test_zero_shot_finds_the_training_data_from_elsewhere_and_checks_the_dictionary(
        data_dir, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the checkpoint's own --data would be relative to elsewhere
    _, _, found = load_checkpoint(trained)
    assert found == data_dir.resolve()
    with pytest.raises(ValueError, match="the same size but other tokens"):
        load_checkpoint(trained, data_copy(data_dir, tmp_path, swap_two))


def test_a_checkpoint_cut_short_is_named(data_dir, trained, tmp_path):
    cut = tmp_path / "checkpoint_last.pt"
    cut.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    for loader in (lambda: load(cut, data_dir), lambda: load_checkpoint(cut, data_dir)):
        with pytest.raises(ValueError, match=f"{cut} is not a complete checkpoint"):
            loader()


def test_a_missing_checkpoint_beside_rank_files_says_to_merge_them(data_dir, tmp_path):
    fixture = REPO / "tests" / "fixtures" / "checkpoint_0c33807"
    for rank_file in fixture.glob("checkpoint_best-rank-*.pt"):
        shutil.copy(rank_file, tmp_path)
    missing = tmp_path / "checkpoint_best.pt"
    with pytest.raises(FileNotFoundError, match=rf"{missing} does not exist, but 2 rank files "
                                                r".*merge them into it with `python -m "
                                                r"fairseq_smlp.consolidate_checkpoint"):
        load(missing, data_dir)


def language_modeling(data):
    """fairseq's language_modeling task on ``data``, set up as fairseq-train sets it up."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data), "--task", "language_modeling",
                                                "--arch", "transformer_lm"])
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


def test_a_missing_split_is_named_with_the_splits_there(data_dir):
    with pytest.raises(FileNotFoundError, match=rf"no split 'tset' in {data_dir} \(no tset.idx "
                                                r"and tset.bin\): it holds test, train, valid"):
        language_modeling(data_dir).load_dataset("tset")


def test_binarized_data_cut_short_is_refused_before_reading(data_dir, tmp_path):
    data = data_copy(data_dir, tmp_path)
    cut = data / "valid.bin"
    size = cut.stat().st_size
    cut.write_bytes(cut.read_bytes()[: size - 10])
    with pytest.raises(ValueError, match=rf"{cut} holds {size - 10} bytes where its index "
                                         rf"valid.idx describes {size}: .* cut short"):
        language_modeling(data).load_dataset("valid")


def refused_resume(data_dir, trained, tmp_path, max_update, block=BLOCK, limit_file_size=None):
    """The last line of fairseq-train resuming a copy of ``trained``, which must fail without a
    traceback and leave the copy as it was."""
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    shutil.copy(trained, save_dir)
    before = checksums(save_dir)
    result = run(*train_flags(data_dir, save_dir, max_update, block),
                 limit_file_size=limit_file_size)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert checksums(save_dir) == before, sorted(checksums(save_dir))
    return result.stderr.strip().splitlines()[-1]


def test_resuming_gmlp_at_another_block_length_is_one_line(data_dir, trained, tmp_path):
    last = refused_resume(data_dir, trained, tmp_path, 4, block="16")
    assert last.startswith("train.py: error: ") and "--tokens-per-sample" in last, last


def test_a_save_onto_a_full_disk_is_one_line_and_keeps_the_earlier_checkpoint(data_dir, trained,
                                                                               tmp_path):
    # Files of at most half a checkpoint: the save at update 3 runs out (EFBIG); its partial
    # file is removed.
    last = refused_resume(data_dir, trained, tmp_path, 3,
                          limit_file_size=trained.stat().st_size // 2)
    assert last.startswith(f"train.py: error: writing a checkpoint to {tmp_path / 'run'} "
                           f"failed") and "The checkpoints saved before are intact" in last, last


def test_resuming_past_max_update_is_refused_and_keeps_the_checkpoint(data_dir, trained,
                                                                     tmp_path):
    """fairseq would train one more update and overwrite the last and best checkpoints."""
    last = refused_resume(data_dir, trained, tmp_path, 1)
    assert "checkpoint_last.pt was saved at update 2 and --max-update is 1: the run is over" \
        in last, last
