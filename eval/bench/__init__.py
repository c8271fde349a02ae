"""Benchmarks and probes (`python -m eval.bench.sample` and the rest), random-weight folders and the
stand-in face models that tests and benchmarks use in place of insightface's pack."""
