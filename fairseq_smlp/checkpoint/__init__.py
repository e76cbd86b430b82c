"""The checkpoint format of models whose experts are spread over ranks: the files and their keys
(``layout.py``), what a model writes and loads of them (``expert_state.py``), and the merge of a
run's rank files into one checkpoint (``merge.py``). fairseq-train's side of saving and loading
them lives in the plugin's edge with fairseq-train, ``trainer/checkpoints.py``.
"""
