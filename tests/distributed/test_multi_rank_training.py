"""fairseq-train on 2 CPU ranks through examples/train_cpu_ranks.sh: the same losses as one
process over the same global batches, checkpoints that resume exactly and merge into one that a
single process evaluates to the same validation loss, and a dead rank that stops the run."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fairseq_smlp

REPO = Path(__file__).resolve().parents[2]
USER_DIR = str(Path(fairseq_smlp.__file__).parent)
ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
UPDATES = 6


def train_flags(data_dir, arch, save_dir, max_update):
    return [
        str(data_dir), "--user-dir", USER_DIR, "--task", "language_modeling", "--arch", arch,
        "--criterion", "moe_cross_entropy", "--decoder-layers", "2", "--dropout", "0",
        "--tokens-per-sample", "64", "--sample-break-mode", "none", "--batch-size", "4",
        "--optimizer", "adam", "--lr", "3e-3", "--max-update", str(max_update),
        "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--num-workers", "0",
        "--seed", "1", "--log-format", "simple", "--log-interval", "1",
    ]


def run(command, check=True):
    # A hang fails the test instead of the suite.
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    if check and result.returncode != 0:
        raise AssertionError(f"{command[:3]} failed:\n{output[-4000:]}")
    return output


def two_ranks(flags, check=True):
    return run(["bash", "examples/train_cpu_ranks.sh", "2", *flags], check=check)


def one_process(flags, check=True):
    return run([sys.executable, "-m", "fairseq_cli.train", *flags, "--cpu", "--update-freq", "2"],
               check=check)


def losses(log):
    """update number -> logged training loss."""
    return {int(n): float(loss) for n, loss in
            re.findall(r"train_inner \| epoch 001:\s+(\d+) / \d+ loss=([\d.]+)", log)}


def valid_loss(log):
    return float(re.findall(r"valid on 'valid' subset \| loss ([\d.]+)", log)[-1])


@pytest.mark.parametrize("arch", ["smlp_deterministic_tiny", "transformer_lm_switch_tiny"])
def test_two_ranks_match_one_process_and_checkpoints_round_trip(data_dir, tmp_path, arch):
    whole = two_ranks(train_flags(data_dir, arch, tmp_path / "whole", UPDATES))
    reference = losses(whole)
    assert sorted(reference) == list(range(1, UPDATES + 1)), whole[-3000:]
    assert {p.name for p in (tmp_path / "whole").iterdir()} == {
        f"checkpoint_{kind}-rank-{rank}.pt" for kind in ["best", "last"] for rank in [0, 1]}

    # One process over the same global batches: the 2 ranks' batches as 2 micro-batches.
    single = losses(one_process(train_flags(data_dir, arch, tmp_path / "single", UPDATES)))
    assert single == pytest.approx(reference, abs=2e-3)

    if arch == "smlp_deterministic_tiny":  # the resume does not depend on the arch
        check_resume(data_dir, tmp_path, arch, reference)

    # A single process cannot read one rank's share; the merged file gives the run's last
    # validation loss (nothing is dropped in evaluation, so routing does not see the batch).
    def validate(checkpoint, check=True):
        return run([sys.executable, "-m", "fairseq_cli.validate", str(data_dir), "--user-dir",
                    USER_DIR, "--path", str(checkpoint), "--task", "language_modeling",
                    "--tokens-per-sample", "64", "--batch-size", "4", "--cpu",
                    "--num-workers", "0"], check=check)

    refused = validate(tmp_path / "whole" / "checkpoint_last-rank-1.pt", check=False)
    assert "holds the experts of rank 1 of a 2-rank run and cannot be loaded by a single " \
           "process" in refused
    merged = tmp_path / "whole" / "checkpoint_last.pt"
    run([sys.executable, "-m", "fairseq_smlp.consolidate_checkpoint", str(merged)])
    assert valid_loss(validate(merged)) == valid_loss(whole)


def check_resume(data_dir, tmp_path, arch, reference):
    """Stopped at update 3 and resumed, the run takes updates 4 to 6 as the uninterrupted one."""
    two_ranks(train_flags(data_dir, arch, tmp_path / "resumed", 3))
    resumed = two_ranks(train_flags(data_dir, arch, tmp_path / "resumed", UPDATES))
    assert "Loaded checkpoint" in resumed and "checkpoint_last-rank-0.pt" in resumed
    assert losses(resumed) == {n: reference[n] for n in range(4, UPDATES + 1)}


def rank_process(save_dir, rank):
    """The pid of the fairseq-train process of ``rank`` writing to ``save_dir``."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(save_dir).encode() in argv and b"--distributed-rank" in argv:
            if argv[argv.index(b"--distributed-rank") + 1] == str(rank).encode():
                return int(entry.name)
    return None


def test_a_dead_rank_stops_the_run(data_dir, tmp_path):
    save_dir = tmp_path / "run"
    log = tmp_path / "log"
    flags = train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 100_000)
    with open(log, "w") as out:
        launcher = subprocess.Popen(["bash", "examples/train_cpu_ranks.sh", "2", *flags],
                                    cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "train_inner" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.5)
            victim = rank_process(save_dir, 1)
            assert victim is not None, log.read_text()[-3000:]
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            returncode = launcher.wait(timeout=60)
        finally:
            launcher.kill()
    assert returncode != 0
    assert time.monotonic() - killed < 60
    assert rank_process(save_dir, 0) is None  # rank 0 did not stay behind
    assert re.search(r"rank\s*:\s*1", log.read_text()), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def rank_files(data_dir, tmp_path_factory):
    """checkpoint_last-rank-{0,1}.pt of a real 2-rank run, 3 updates."""
    save_dir = tmp_path_factory.mktemp("two_ranks")
    two_ranks(train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 3))
    return save_dir


def consolidate_cli(*args):
    return run([sys.executable, "-m", "fairseq_smlp.consolidate_checkpoint", *map(str, args)],
               check=False)


def test_consolidation_refuses_rank_files_of_different_updates(rank_files, tmp_path):
    """As after a save that rank 1 did not finish: its file is a step behind rank 0's."""
    for path in rank_files.glob("checkpoint_last-rank-*.pt"):
        shutil.copy(path, tmp_path)
    stale = tmp_path / "checkpoint_last-rank-1.pt"
    state = torch.load(stale, weights_only=False)
    state["optimizer_history"][-1]["num_updates"] = 2
    torch.save(state, stale)
    before = sorted(p.name for p in tmp_path.iterdir())
    output = consolidate_cli(tmp_path / "checkpoint_last.pt")
    assert ("saved at different updates (checkpoint_last-rank-0.pt at update 3, "
            "checkpoint_last-rank-1.pt at update 2)") in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_consolidation_refuses_rank_files_of_two_runs(rank_files, tmp_path):
    for path in rank_files.glob("checkpoint_last-rank-*.pt"):
        shutil.copy(path, tmp_path)
    other = tmp_path / "checkpoint_last-rank-1.pt"
    state = torch.load(other, weights_only=False)
    state["model"]["_expert_shards"]["run"] = "another run"
    torch.save(state, other)
    output = consolidate_cli(tmp_path / "checkpoint_last.pt")
    assert "the rank files come from different training runs" in output, output
    assert "checkpoint_last-rank-1.pt of run another run" in output
    assert not (tmp_path / "checkpoint_last.pt").exists()


def test_consolidation_overwrites_only_with_force(rank_files, tmp_path):
    merged = tmp_path / "merged.pt"
    merged.write_bytes(b"an earlier merge")
    output = consolidate_cli(rank_files / "checkpoint_last.pt", "--output", merged)
    assert f"{merged} exists: add --force to overwrite it" in output, output
    assert merged.read_bytes() == b"an earlier merge"
    consolidate_cli(rank_files / "checkpoint_last.pt", "--output", merged, "--force")
    assert torch.load(merged, weights_only=False)["optimizer_history"][-1]["num_updates"] == 3


def copy_rank_files(rank_files, save_dir):
    save_dir.mkdir()
    for path in rank_files.glob("checkpoint_last-rank-*.pt"):
        shutil.copy(path, save_dir)
    return sorted(p.name for p in save_dir.iterdir())


def test_rank_files_of_different_updates_stop_every_rank(data_dir, rank_files, tmp_path):
    """As after a save that rank 1 did not finish: its checkpoint_last is a step behind."""
    save_dir = tmp_path / "run"
    copy_rank_files(rank_files, save_dir)
    stale = save_dir / "checkpoint_last-rank-1.pt"
    state = torch.load(stale, weights_only=False)
    state["optimizer_history"][-1]["num_updates"] = 2
    torch.save(state, stale)
    log = two_ranks(train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 6), check=False)
    assert ("the ranks resumed from checkpoints of different updates (rank 0 at update 3, "
            "rank 1 at update 2)") in log, log[-3000:]
    assert "train_inner" not in log


def test_one_process_refuses_to_start_over_beside_rank_files(data_dir, rank_files, tmp_path):
    save_dir = tmp_path / "run"
    before = copy_rank_files(rank_files, save_dir)
    log = one_process(train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 6), check=False)
    assert "2 rank files of an expert-parallel run do (checkpoint_last-rank-0.pt, ...)" in log, \
        log[-3000:]
    assert "resume on 2 ranks, or merge them" in log
    assert sorted(p.name for p in save_dir.iterdir()) == before


def test_one_process_refuses_to_resume_from_a_merge(data_dir, rank_files, tmp_path):
    """The merge has no optimizer state: fairseq would resume it at update 0."""
    save_dir = tmp_path / "run"
    copy_rank_files(rank_files, save_dir)
    consolidate_cli(save_dir / "checkpoint_last.pt")
    log = one_process(train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 6), check=False)
    assert (f"{save_dir / 'checkpoint_last.pt'} merges the 2 rank files of an expert-parallel run "
            f"and has no optimizer state") in log, log[-3000:]
    assert f"--finetune-from-model {save_dir / 'checkpoint_last.pt'}" in log
    assert "train_inner" not in log


def test_two_ranks_refuse_to_start_over_beside_a_single_process_checkpoint(data_dir, rank_files,
                                                                           tmp_path):
    save_dir = tmp_path / "run"
    copy_rank_files(rank_files, save_dir)
    consolidate_cli(save_dir / "checkpoint_last.pt")  # a checkpoint_last.pt of one process
    for path in save_dir.glob("*-rank-*.pt"):
        path.unlink()
    log = two_ranks(train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 6), check=False)
    assert "holds a run without experts spread over ranks and there are no rank files" in log, \
        log[-3000:]
    assert f"--finetune-from-model {save_dir / 'checkpoint_last.pt'}" in log
    assert sorted(p.name for p in save_dir.iterdir()) == ["checkpoint_last.pt"]


def test_a_truncated_checkpoint_falls_back_to_the_newest_intact_one(data_dir, rank_files,
                                                                    tmp_path):
    save_dir = tmp_path / "run"
    shutil.copytree(rank_files, save_dir)  # checkpoint_last and checkpoint_best, update 3
    cut = save_dir / "checkpoint_last-rank-0.pt"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a save killed midway
    log = two_ranks(train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 4))
    assert (f"{cut} is not a complete checkpoint (a save cut short?): resuming from "
            f"checkpoint_best-rank-0.pt") in log, log[-3000:]
    assert sorted(losses(log)) == [4]


def saved_update(path):
    return torch.load(path, weights_only=False)["optimizer_history"][-1]["num_updates"]


def test_a_save_that_fails_on_one_rank_leaves_every_rank_its_previous_file(data_dir, rank_files,
                                                                           tmp_path):
    save_dir = tmp_path / "run"
    shutil.copytree(rank_files, save_dir)  # update 3
    for name in ["checkpoint_best", "checkpoint_last"]:  # rank 1 cannot write its next file
        (save_dir / f"{name}-rank-1.pt.pending.tmp").mkdir()
    log = two_ranks(train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 4), check=False)
    assert "IsADirectoryError" in log, log[-3000:]
    for path in save_dir.glob("*-rank-*.pt"):
        assert saved_update(path) == 3, path.name


def test_rank_files_of_two_runs_stop_every_rank(data_dir, rank_files, tmp_path):
    """As when two runs shared a --save-dir: rank 1's file is another run's, at the same update."""
    save_dir = tmp_path / "run"
    copy_rank_files(rank_files, save_dir)
    other = save_dir / "checkpoint_last-rank-1.pt"
    state = torch.load(other, weights_only=False)
    state["model"]["_expert_shards"]["run"] = "another run"
    torch.save(state, other)
    log = two_ranks(train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 6), check=False)
    assert "the ranks resumed from checkpoints of different training runs" in log, log[-3000:]
    assert "rank 1 of run another run" in log
    assert "train_inner" not in log


def checksums(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_a_merge_copied_over_a_rank_file_stops_every_rank_before_any_exchange(data_dir,
                                                                             rank_files,
                                                                             tmp_path):
    """The merge written beside the rank files, copied over rank 0's checkpoint_last: rank 0
    would skip the exchange of the shared weights that rank 1 enters, and both would wait."""
    save_dir = tmp_path / "run"
    copy_rank_files(rank_files, save_dir)
    consolidate_cli(save_dir / "checkpoint_last.pt")
    shutil.copy(save_dir / "checkpoint_last.pt", save_dir / "checkpoint_last-rank-0.pt")
    before = checksums(save_dir)
    log = two_ranks(train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 6), check=False)
    assert ("rank 0: checkpoint_last-rank-0.pt is the merge of 2 rank files "
            "(consolidate_checkpoint), not one rank's share") in log, log[-3000:]
    assert "rank 1:" not in log.split("cannot resume 2 ranks")[1].split("\n")[0]
    assert "train_inner" not in log
    assert checksums(save_dir) == before


def test_resuming_at_or_past_max_update_is_refused_and_keeps_the_checkpoints(data_dir,
                                                                             rank_files,
                                                                             tmp_path):
    save_dir = tmp_path / "run"
    copy_rank_files(rank_files, save_dir)  # update 3
    before = checksums(save_dir)
    # At --max-update itself fairseq would still train one update (past it: one process, below).
    log = two_ranks(train_flags(data_dir, "smlp_deterministic_tiny", save_dir, 3), check=False)
    assert ("checkpoint_last-rank-0.pt was saved at update 3 and --max-update is 3: the run is "
            "over") in log, log[-3000:]
    assert "train_inner" not in log
    assert checksums(save_dir) == before


def test_consolidation_never_writes_over_a_rank_file_it_reads(rank_files, tmp_path):
    save_dir = tmp_path / "run"
    copy_rank_files(rank_files, save_dir)
    before = checksums(save_dir)
    output = consolidate_cli(save_dir / "checkpoint_last.pt", "--output",
                             save_dir / "checkpoint_last-rank-1.pt", "--force")
    assert "checkpoint_last-rank-1.pt is one of the rank files being merged" in output, output
    assert checksums(save_dir) == before
