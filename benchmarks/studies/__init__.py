"""One-question studies: each script answers one measured question (python
benchmarks/studies/<name>.py); the suite itself is benchmarks/run.py and its sections."""
