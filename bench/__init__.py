"""tinkerstore's benchmark suite: ``python -m bench`` (see ``docs/performance.md``).

Each benchmark measures ours and its baselines interleaved in one run and reports the median,
min, max and the ratio against ours; only ratios are meant to travel between machines.
"""

__all__: list[str] = []
