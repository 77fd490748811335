"""The benchmark suite of this backend (not part of the installed package): see
docs/benchmarks.md. ``python benchmarks/run.py`` runs every section; the other scripts here
measure one question each."""
