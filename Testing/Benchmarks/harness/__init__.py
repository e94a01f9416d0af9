"""The benchmark harness (issue 23): experiment-only code that the shipped package ``ASSFTActive`` does not carry.

One run, in the order the data flows:

- :mod:`.splits`: source / development / test by a hash of each group (ACDC: the patient), reserved cases excluded;
  committed as ``Testing/Benchmarks/splits/<anatomy>.json`` with the rule that made them;
- :mod:`.shifts`: simulated scanner-appearance shifts (a "new site" whose labels stay valid);
- :mod:`.tasks`: settings (uniform controls, multi-site hippocampus, ACDC-Path) and tasks (one pool replicate of
  a setting on one split part, with its evaluation cases);
- :mod:`.arms`: a query strategy (any ``QueryConfig`` strategy) + Adapt Model's recipe, guard off or on;
- :mod:`.work`: the units of work through the product (ranking pass, ``query.select``, ``adapt_model``, evaluation);
- :mod:`.runner`: profiles, one JSON record per unit written atomically, a rerun skips what exists;
- :mod:`.stats`: every statistic (paired and clustered gaps, random percentile, oracle-subset headroom, Wilcoxon);
- :mod:`.report`: Markdown, JSON and PNG from the records, and the goal rows of ``results/goals.json``;
- :mod:`.goals`: the goals file's one merge (by key, atomic; it names rows another result file wrote);
- :mod:`.diagnostics`: how well each per-case score predicts the model's error (hidden labels).
- :mod:`.sparse` / :mod:`.sparse_report`: effort as the budget (issue 27): slice and region arms, oracle partial
  labels, the effort spent per record, the Dice-against-effort table and the ``sparse`` goal rows.

Command line: ``python -m Testing.Benchmarks.harness {splits,plan,run,report}`` from the repository root (see
``__main__``). Imported as ``Testing.Benchmarks.harness`` (the repository root on ``sys.path``: the tests, the
benchmark scripts and ``scripts/`` put it there).
"""
