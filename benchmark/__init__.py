"""The benchmark layer: paper tables as data, sweeps of their runs, the tables and plots of them, the demo.

Above ``pretrain`` and ``downstream`` (which it calls as libraries, ``pretrain.run`` / ``downstream.run``) and
below the ``python -m benchmark`` command line (``__main__``). Modules:

* ``published``: the papers' tables (``benchmark/published/*.yaml``) as validated dataclasses;
* ``suites``: a table's runs as jobs (rows x columns x seeds x folds), run and resumed; ``pretrain_runs``: the
  rows' shared pretraining runs;
* ``provenance``: which records are a row's own; ``cells``: a cell's statistics; ``tables`` and ``plots``:
  markdown / CSV / LaTeX tables and figures;
* ``demo_spec``, ``demo``, ``demo_data`` (+ ``demo_audio``), ``demo_results``: the built-in demo, its
  generated corpus, and its records published in ``results/demo``;
* ``speed`` (+ ``speed_measure``): throughput and MFU; ``features_demo``: one clip through every upstream;
* ``probe_curves``: k-NN probe accuracy against pretraining steps, from the runs' ``losses.jsonl``.
"""
