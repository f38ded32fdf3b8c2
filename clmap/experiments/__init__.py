"""Experiment recipes built from the trainer and the evaluator (``python -m clmap.experiments.<name>``).

``ablation``: the paper's claim at small scale (issue #7), NTP-only vs parallel-as-text vs the mapping
task and its parts, same token budget and tokenizer, every table and plot generated from the runs.
"""
