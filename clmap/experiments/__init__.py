"""Experiment recipes built from the trainer and the evaluator (``python -m clmap.experiments.<name>``).

``ablation``: the paper's claim at small scale, following its continued-pretraining protocol: one base
model, every variant (NTP only, pairs as text, CL both ways, CL + map, CL one way) continued from it with
the same budget, seeds and tokenizer, scored in and out of domain. One module per concern: ``recipe``
(the runs), ``results`` (the results file), ``stats`` (intervals and deltas), ``writeup`` and ``plots``
(the generated tables, figures and blocks of ``docs/ablation.md``), ``ablation`` (the command line).
"""
