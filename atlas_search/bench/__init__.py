"""Benchmarks and measurements that print ratios or tables (DESIGN.md §9).

* :mod:`.capacity`: key/value recall capacity of linear, polynomial-feature and MLP memories
  written with the Omega-rule ops (ATLAS Proposition 1, Proposition 2, Theorem 1).
* :mod:`.ops_speed`: tokens/s of forward+backward of the preset memory layers, torch
  (chunk-parallel) backend vs reference loop, and scaling in T.

Run as ``python -m atlas_search.bench.capacity`` / ``python -m atlas_search.bench.ops_speed``.
"""
