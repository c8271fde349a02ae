"""Scoring and ablation: the competition scorer (`competition_scorer`, run by `python -m eval.score`),
metrics, final round, prompt fidelity, tables and ablation. Benchmarks, probes and stand-in face
models live in `eval.bench`."""
