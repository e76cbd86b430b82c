"""consolidate_checkpoint's command line on names and files it cannot merge: each is one line,
and no file is written or changed."""

import pytest
import torch

from fairseq_smlp.consolidate_checkpoint import main


def listing(directory):
    return {path.name: path.read_bytes() if path.is_file() else None
            for path in directory.rglob("*")}


def refused(capsys, argv):
    with pytest.raises(SystemExit) as exit:
        main([str(arg) for arg in argv])
    return str(exit.value.code)


@pytest.fixture
def run(tmp_path):
    """Two complete rank files (torch.save archives, as far as the checks look) and an output
    directory."""
    for rank in range(2):
        torch.save({"rank": rank}, tmp_path / f"checkpoint_best-rank-{rank}.pt")
    (tmp_path / "merged").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv,message", [
    (["{d}"], "consolidate_checkpoint: {d} is a directory; give the checkpoint's name in it "
     "without -rank-<R>, e.g. {d}/checkpoint_best.pt"),
    (["{d}/checkpoint_best-rank-1.pt"], "consolidate_checkpoint: {d}/checkpoint_best-rank-1.pt is "
     "one rank's file; give the checkpoint's name without -rank-1: {d}/checkpoint_best.pt"),
    (["{d}/checkpoint_best.pt", "--output", "{d}/merged", "--force"], "consolidate_checkpoint: "
     "--output {d}/merged is a directory; give the merged file's name, e.g. "
     "{d}/merged/checkpoint_best.pt"),
    (["{d}/checkpoint_best.pt", "--output", "{d}/missing/merged.pt"], "consolidate_checkpoint: "
     "--output {d}/missing/merged.pt: there is no directory {d}/missing to write it in"),
])
def test_names_it_cannot_use_are_refused(run, capsys, argv, message):
    before = listing(run)
    assert refused(capsys, [arg.format(d=run) for arg in argv]) == message.format(d=run)
    assert listing(run) == before


def test_a_whole_checkpoint_without_rank_files_is_not_offered_force(tmp_path, capsys):
    whole = tmp_path / "checkpoint_best.pt"
    torch.save({"model": {}}, whole)
    before = listing(tmp_path)
    assert refused(capsys, [whole]) == (
        f"consolidate_checkpoint: no rank files checkpoint_best-rank-<R>.pt next to {whole}: give "
        f"the checkpoint's name without the -rank-<R> suffix")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("damage", ["cut", "empty", "directory"])
def test_a_rank_file_cut_short_is_named(run, capsys, damage):
    rank_file = run / "checkpoint_best-rank-1.pt"
    if damage == "cut":
        rank_file.write_bytes(rank_file.read_bytes()[:200])
    elif damage == "empty":
        rank_file.write_bytes(b"")
    else:
        rank_file.unlink()
        rank_file.mkdir()
    before = listing(run)
    assert refused(capsys, [run / "checkpoint_best.pt", "--output", run / "merged.pt"]) == (
        f"consolidate_checkpoint: {rank_file} is not a complete checkpoint (a save or copy cut "
        f"short?): merge a set that every rank wrote in full, e.g. checkpoint_best or "
        f"checkpoint_last")
    assert listing(run) == before
