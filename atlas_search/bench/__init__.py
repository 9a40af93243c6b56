"""Benchmarks and measurements that print ratios or tables (DESIGN.md §9).

* :mod:`.capacity`: key/value recall capacity of linear, polynomial-feature and MLP memories
  written with the Omega-rule ops (ATLAS Proposition 1, Proposition 2, Theorem 1).
* :mod:`.ops_speed`: tokens/s of forward+backward of the preset memory layers, torch
  (chunk-parallel) backend vs reference loop, and scaling in T.
* :mod:`.kernels_speed`: the Omega op alone, triton / torch / reference backends against
  flash-linear-attention's ``chunk_gated_delta_rule`` and SDPA flash (``atlas-search bench``).
* :mod:`.aot_check`: every Triton kernel compiled for a CUDA target without a GPU
  (registers, spills, shared memory per config; ``python -m atlas_search.bench.aot_check``).
* :mod:`.gpu_check`: kernel checks, GPU tests and the kernel benchmark in one command
  (``PYTHONPATH=. python -m atlas_search.bench.gpu_check --out DIR``; no pydantic needed).
* :mod:`.config_check`, :mod:`.prewarm`, :mod:`.children`: the GPU check's per-config
  checks and compute-sanitizer probe, its parallel compiles, its child processes.
* :mod:`.torch_bytes`: the bytes torch ops move around the Triton kernels (CPU, no GPU).
* :mod:`.pack_triton`: a Triton wheel packed small enough to carry to a GPU machine.

Run as ``python -m atlas_search.bench.capacity`` / ``python -m atlas_search.bench.ops_speed``.
"""
