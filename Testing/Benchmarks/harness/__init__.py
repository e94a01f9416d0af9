"""The benchmark harness: experiment-only code that the shipped package ``ASSFTActive`` does not carry.

- :mod:`.splits`: source / development / test splits by group (ACDC: by patient), reserved cases excluded;
- :mod:`.shifts`: simulated scanner-appearance shifts (a "new site" whose labels stay valid);
- :mod:`.diagnostics`: how well each per-case score predicts the model's error (hidden labels).

Import it as ``Testing.Benchmarks.harness`` from the repository root (on ``sys.path`` in the tests, the benchmark
scripts and ``scripts/``).
"""
