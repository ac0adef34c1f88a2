"""The benchmark behind bench.py: the reference-style path, the runs, the report."""
