"""ztr benchmarks: start-up, scale, steady state and rotation latency, against the alternatives.

Run them all with ``make bench`` (``python -m bench``), or one with ``python -m bench startup``;
results go to ``bench/out/*.json`` and ``bench/RESULTS.md``. See bench/README.md.
"""
