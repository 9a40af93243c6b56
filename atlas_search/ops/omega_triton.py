"""Triton backend of the linear-memory Omega rule (DESIGN.md §2, "chunk-parallel form").

``omega_linear(..., backend="triton")`` (and ``"auto"`` on CUDA) lands here for optimizers
``gd`` and ``momentum``, objectives ``l2`` and ``dot``, any window ``c >= 1``, any chunk
size ``b >= 1``, retention ``alpha`` and any ``T`` (a partial last chunk included).

Split of the work (the same maths as ``omega_linear._omega_torch``):

* **PyTorch** (momentum) pads the sequence to ``NT = ceil(T / b)`` chunks of ``b`` tokens
  and builds the small per-chunk coefficient tensors from the gates as ``_omega_torch`` does
  (``cumprod``, ``_decay_matrix``, the band mask ``W[n, i] = gamma_i [i in window(n)]``,
  times ``eta``): ``A [b]``, ``C`` (gd) or ``C_M`` (momentum) ``[b, N]`` with
  ``N = b + c - 1``, ``Bm [b]``, and the chunk-end coefficients ``A_end, Bm_end, Th_end``
  (scalars) and ``c_end`` / ``cM_end``, ``cS_end`` ``[N]``, taken from the last *real*
  token of each chunk (padding with ``alpha = 1, eta = 0`` is not a no-op for momentum,
  ``M_t = alpha M + S_t``, so the partial last chunk is handled by this gather, not by the
  padding). Gate gradients come from torch autograd through these constructions. For gd
  (any ``c``) two Triton kernels do this instead (:class:`_GdCoeffs`: ``_coef_fwd`` reads
  ``alpha, eta, gamma`` in the caller's ``[B, T, H]`` layout and builds ``A``, ``C``,
  ``A_end``, ``c_end`` per chunk in registers, ``_coef_bwd`` maps their gradients back to
  the gates exactly, with no division by a gate, and writes them token-major): no torch op
  pads, converts, windows or differentiates a gate, so the torch side of a gd call is a
  handful of allocations and views (:mod:`atlas_search.bench.torch_bytes`: at the
  benchmark's D = 64, T = 2k, 32k tokens, the bytes read by torch ops per fwd+bwd went
  from 7.1 GB (torch coefficients) to 0.09 GB (coefficient kernels) to 0.02 GB at c = 1,
  and from 9.8 to 0.94 to 0.28 GB at c = 16), which matters on a GPU as launches: each
  torch op is host time the short kernels do not hide. No copy of ``q, k, v`` is
  made: the kernels read them, and write ``O``, ``dQ``, ``dK``, ``dV``, in the caller's
  token-major ``[B, T, H, D]`` layout (the one the model's projections give; any other
  layout is copied into it once). Window row ``r`` of chunk ``j`` is token
  ``j b + r - (c - 1)``: tokens before the sequence come from the halo of the initial
  :class:`OmegaState` (zeros with ``gamma = 0`` on a fresh start), tokens past ``T`` are
  zeros. The backward writes the halo rows' ``dK, dV`` to small ``[B*H, NT, c - 1, D]``
  buffers that torch adds into the tokens they belong to (and into the initial halo's
  gradient): no ``unfold`` of ``[B, H, NT, N, D]`` windows, no ``cat`` with the halo.
* **Triton** (:class:`_ChunkScan`, a ``torch.autograd.Function``) runs the chunk
  recurrence. With ``M_s`` (``S_s``) the state at the chunk start (the anchor, DESIGN.md
  §2: ``t' = b floor((t-1)/b)``) and ``E = K_I M_s - V_I`` (l2) or ``-V_I`` (dot)::

      gd:       O = diag(A) Q M_s - (C ∘ Q K_I^T) E ;  M_end = A_end M_s - K_I^T (c_end ∘ E)
      momentum: O = diag(A) Q M_s + diag(Bm) Q S_s - (C_M ∘ Q K_I^T) E
                M_end = A_end M_s + Bm_end S_s - K_I^T (cM_end ∘ E)
                S_end = Th_end S_s - K_I^T (cS_end ∘ E)

  (``x ∘ E`` scales row ``n`` of ``E`` by ``x[n]``). For l2, ``E = K M - V`` contracts
  over ``Dk`` only, so each ``Dv`` column block of ``M`` evolves independently (the gates
  are per head): every kernel's grid has a ``Dv`` column-block axis.

  Kernel structure (as flash-linear-attention's ``chunk_fwd_h`` + ``chunk_fwd_o`` and
  ``chunk_bwd_dh`` + ``chunk_bwd_dqkw``): only the state recurrence is sequential over the
  chunks; everything that is local to a chunk given its start state (``Q K_I^T``,
  ``(C ∘ Q K_I^T) E``, ``Q M_s`` and the backward's ``P^T dO``, ``dQ``, ``dK_I``, ...)
  runs in programs parallel over all ``B*H*NT`` chunks, so on a GPU it is not serialised
  along ``T`` inside one program per head. Grids: ``(B*H, Dv blocks)`` for the sequential
  kernels, ``(B*H*NT, Dv blocks)`` for the parallel ones.

  Forward:

  1. ``_omega_states`` (sequential, one program per (batch*head, column block), its
     ``[BK, BV]`` block of ``M`` (and ``S``) in registers): per chunk only ``E`` and the
     state update; writes every chunk-start ``M_s`` (``S_s``) to a buffer
     ``[B*H, NT, Dk, Dv]``, the final ``M`` (``S``) and the anchor output (the start
     state of the last chunk).
  2. ``_omega_out`` (parallel): from its chunk's ``M_s`` (``S_s``), ``Q, K_I, V_I, A, C
     (, Bm)`` the output ``O``.

  The forward saves only its inputs; the backward recomputes the states. Per chunk, with
  ``P = C ∘ Q K_I^T``, ``U = -P^T dO``, ``W = Q^T diag(A) dO``, ``W_S = Q^T diag(Bm) dO``::

      dE   = U - diag(c_end) K_I dM_end [- diag(cS_end) K_I dS_end]
      dM_s = A_end dM_end + W [+ K_I^T dE (l2)]
      dS_s = Bm_end dM_end + Th_end dS_end + W_S
      dV_I = -dE ;  dP = -dO E^T ;  dQK = C ∘ dP ;  dC = dP ∘ Q K_I^T
      dQ   = dQK K_I + diag(A) dO M_s^T [+ diag(Bm) dO S_s^T]
      dK_I = dQK^T Q - (c_end ∘ E) dM_end^T [- (cS_end ∘ E) dS_end^T] [+ dE M_s^T (l2)]
      dA[t] = <dO_t, (Q M_s)_t> ;  dBm[t] = <dO_t, (Q S_s)_t>
      dA_end = <dM_end, M_s> ;  dBm_end = <dM_end, S_s> ;  dTh_end = <dS_end, S_s>
      dc_end[n] = -<E_n, (K_I dM_end)_n> ;  dcS_end[n] = -<E_n, (K_I dS_end)_n>

  Backward:

  3. ``_omega_states`` again: the chunk-start states.
  4. ``_omega_bwd_local`` (parallel): ``W`` (``W_S``) and ``U`` into buffers.
  5. ``_omega_bwd_dh`` (sequential reverse, ``dM`` (``dS``) block in registers): the
     recurrence above (the anchor-output gradient joins ``dM`` at the start of the last
     chunk; ``dE`` feeds ``dM_s`` for l2 only); writes every chunk's ``dM_end``
     (``dS_end``) to a buffer and ``dM_0`` (``dS_0``).
  6. ``_omega_bwd_dv`` (parallel over chunks and Dv column blocks): ``dE`` from ``U`` and
     ``dM_end`` (``dS_end``), written as ``dV_I = -dE``, (l2) ``E`` into a buffer, and
     ``dc_end`` (``dcS_end``) from the ``K_I dM_end`` (``K_I dS_end``) that ``dE`` needs
     anyway, per Dv block into zeroed partials summed in torch (it had been a fifth product
     per Dv block in step 7's inner loop).
  7. ``_omega_bwd_dqk`` (parallel over chunks and Dk blocks of at most 64, as fla's
     ``chunk_bwd_dqkwg``): loops over Dv, accumulating ``dP``, ``dO M_s^T``
     (``dO S_s^T``) and ``dK_I`` in fp32 registers, then writes ``dQ`` and ``dK_I``
     whole; the gradients that also sum over Dk (``dC, dA, dBm`` and ``dA_end, dBm_end,
     dTh_end``) are written per Dk block and summed in torch. (One kernel per (chunk, column block)
     holding ``dQ, dK_I`` for all of Dk spilled kilobytes of registers per thread at
     ``Dk = 128``, and wrote Dv/32 partial copies of them.)

  Memory: the price of the parallel kernels is ``[B*H, NT, Dk, Dv]`` buffers
  (``NT*Dk*Dv`` per head, i.e. ``T/b`` states instead of one; the computation dtype,
  except the chunk-start states and ``dM_end`` (``dS_end``), which are in the input dtype
  for bf16/fp16 inputs, as fla keeps its chunk states: :func:`_buffer_dtype`), alive
  only during one pass: the forward holds the states (x2 for momentum); the backward
  holds the states, ``dM_end`` and ``W`` (each x2 for momentum), ``U`` and ``E``
  (``[B*H, NT, N, Dv]``; ``W`` is freed after step 5, ``U`` after step 6), plus the
  per-Dk-block gradient partials. E.g. ``b = 16``, ``Dk = Dv = 128``, ``T = 4096``,
  fp32: 16 MiB per head and buffer.

Choices:

* Blocks: ``BK = max(16, next_pow2(Dk))``; a chunk's ``N = b + c - 1`` window rows are
  two row tiles, its own ``b`` tokens (``BL = max(16, next_pow2(b))``) and, for ``c > 1``,
  the ``c - 1`` halo tokens before it (``BH = max(16, next_pow2(c - 1))``): every product
  over the window rows is the sum of the two tiles' products (``@triton.jit`` helpers do
  one tile's work). One power-of-two tile would pad ``b + c - 1 = 79`` rows to 128 at
  ``b = 64, c = 16``; two tiles compute on 64 + 16, and an sm_90 compile of
  ``_omega_bwd_dqk`` at that shape spilled 256 instead of 992 bytes per thread. ``tl.dot``
  needs every dimension >= 16 when compiled; masks for the padding; int64 bases of a
  chunk's (batch, head) and its buffers, int32 offsets of tokens within one sequence
  (``T * H * D < 2**31``, else the torch backend). ``BV``:
  16 under the interpreter (one fixed small config, also the Dk block of
  ``_omega_bwd_dqk`` there, so small test shapes cover several blocks); on CUDA each
  kernel is autotuned over the configs of :func:`configs` (key: ``b, N, Dk, Dv`` as far
  as the kernel has them, and for the sequential kernels ``B*H`` rounded up to a power of
  two, :func:`_grid_rows`; :data:`AUTOTUNE` off: the first one), chosen from ahead-of-time
  sm_90 compiles specialized as a launch is (``python -m atlas_search.bench.aot_check``):
  at the benchmark's shapes (bf16, b = 64, Dk = Dv in {64, 128}, c in {1, 16}) no first
  config spills registers, except ``_omega_bwd_dqk`` with momentum at c = 16 (56 bytes
  per thread).
  Supported sizes: ``Dk <= 256`` and ``b + c - 1 <= 256`` (larger runs the torch backend).
* Dtypes: ``q, k, v`` may be fp16, bf16, fp32 or fp64. The computation dtype is fp64 for
  fp64 inputs, else fp32 (coefficients are built in it, every kernel load is converted to
  it; for fp32/fp64 ``tl.dot`` uses ``input_precision="ieee"``, so fp32 runs meet fp32
  budgets; for bf16/fp16 the ``tl.dot`` operands are cast to the input dtype (tensor cores)
  with fp32 accumulation and fp32 states, as in fla; see :func:`_lowp`). ``O`` is
  stored in ``q``'s dtype; states are kept in the computation dtype inside the kernels and
  returned in the dtype of the initial memory (as the torch backend does).
* Fallback (every one runs ``_omega_torch``, never raises): muon (Newton-Schulz stays the
  batched torch path by design, no warning), an empty sequence (no warning), a continued
  :class:`OmegaState` whose position is not a multiple of ``b``, an unsupported size or
  dtype, Triton not importable, CPU tensors without ``TRITON_INTERPRET=1``, a Triton
  imported in the other mode (see below), a compile/launch error, a case
  :func:`gpu_hazard` names (a measured CUDA fault or miscompile). With
  ``backend="triton"`` each reason warns once per process. ``"auto"`` uses Triton only for
  CUDA tensors in compiled mode (never the interpreter) and warns only for a
  compile/launch error (once; a real failure, not a choice). A failure of the backward
  kernels warns once and recomputes the gradients with the same chunk recurrence in torch
  (:func:`_backward_torch` over :func:`_scan_torch`).
* Interpreter: Triton fixes interpreter vs compiled mode when it is *first imported*
  (its standard library, e.g. ``tl.sum``, is decorated then), so ``TRITON_INTERPRET=1``
  must be set before anything imports triton, and be still set when the op runs. Then
  ``backend="triton"`` runs the kernels in the interpreter, for CPU (and CUDA) tensors.
  A process that imported triton in one mode and asks for the other falls back (warning).
* Debugging: set ``omega_triton.NAN_FILL = True`` (or the environment variable
  ``ATLAS_TRITON_NAN_FILL=1`` before the import) to allocate every kernel output buffer
  with NaN, so memory a kernel forgets to write is caught. ``stats`` counts successful
  kernel passes:
  ``forward`` +1 per forward (states + output), ``backward`` +1 per backward (its state
  recomputation included, not counted as a forward).
* No double backward (the Function is ``once_differentiable``).
"""

import functools
import os
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .omega_linear import (
    _blocks,
    _dual_coeffs,
    _new_halo,
    _State,
    _window_weights,
    _with_halo,
)

_TRUE = ("1", "true", "on", "yes")
NAN_FILL = os.environ.get("ATLAS_TRITON_NAN_FILL", "0").strip().lower() in _TRUE
"""Allocate every kernel output buffer filled with NaN (debugging: memory a kernel fails to
write shows up as NaN); set it, or ``ATLAS_TRITON_NAN_FILL=1`` before the import."""
AUTOTUNE = True
"""On CUDA, autotune each kernel over a few ``BV`` x ``num_warps`` configs (a compile per
config and shape). ``False`` (or the environment variable ``ATLAS_TRITON_AUTOTUNE=0``)
launches the first config of :func:`configs`: the tests and the kernel checks, which sweep
many shapes, use it to keep compile time down."""
AUTO_DTYPES = (torch.bfloat16, torch.float16)
"""Input dtypes for which ``backend="auto"`` picks the kernels on CUDA. fp32 inputs stay on
the torch backend (cuBLAS): fp32 runs ``tl.dot`` with ``input_precision="ieee"`` (no TF32,
to meet the fp32 error budget), which an sm_90 compile turns into FMA loops spilling
kilobytes of registers per thread at ``Dk = 64`` (:mod:`atlas_search.bench.aot_check`).
``backend="triton"`` runs them in any supported dtype."""
MAX_DK = 256
MAX_WINDOW_ROWS = 256  # b + c - 1
INTERPRET_BV = 16
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

stats = {"forward": 0, "backward": 0}  # successful kernel passes (tests check the path ran)
_WARNED: set[str] = set()
_BROKEN: set[tuple] = set()  # cases whose kernels failed to compile/launch (torch from then)

triton = None  # bound by _kernels(): the kernels resolve ``tl`` in this module's globals
tl = None


class _KernelError(RuntimeError):
    """A Triton compile or launch failure (caught by the dispatcher: torch fallback)."""


def _warn_once(reason: str, msg: str) -> None:
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(
            f"omega_linear backend 'triton': {msg}; using the torch backend",
            RuntimeWarning,
            stacklevel=4,
        )


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def _autotune() -> bool:
    return AUTOTUNE and os.environ.get("ATLAS_TRITON_AUTOTUNE", "1").strip().lower() in _TRUE


def _empty(shape, dtype, device) -> Tensor:
    if NAN_FILL:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


_TRITON: tuple[object, str] | Exception | None = None


def _load_triton() -> tuple[object, str]:
    """``(triton, mode)``, mode ``"interpret"`` or ``"compiled"``: the mode triton was first
    imported in (fixed for the process). Raises (ImportError, ...) when triton cannot be
    imported; the outcome is remembered for the process."""
    global _TRITON
    if _TRITON is None:
        try:
            import triton as _triton
            import triton.language as _tl

            interp = type(_tl.sum).__name__ == "InterpretedFunction"
            _TRITON = (_triton, "interpret" if interp else "compiled")
        except Exception as exc:  # ImportError, or a broken install
            _TRITON = exc
    if isinstance(_TRITON, Exception):
        raise _TRITON
    return _TRITON


def _lowp(q: Tensor, interpret: bool) -> bool:
    """bf16/fp16 inputs: ``tl.dot`` operands in that dtype (tensor cores), fp32 accumulation
    and fp32 states, as flash-linear-attention does; fp32/fp64 inputs: operands in the
    computation dtype with ``input_precision="ieee"`` (no TF32), so fp32 meets fp32 budgets.
    Under the interpreter bf16 operands stay fp32: Triton 3.9's interpreter returns garbage
    for a bf16 ``tl.dot`` (checked: a 16x16 product off by 1e10), so on CPU the low-precision
    operand path is exercised with fp16."""
    if q.dtype == torch.float16:
        return True
    return q.dtype == torch.bfloat16 and not interpret


def _np2(n: int) -> int:
    return max(16, 1 << max(0, (n - 1).bit_length()))


# ----------------------------------------------------------------------------- dispatch


def run(
    backend: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    eta: Tensor,
    gamma: Tensor,
    theta: Tensor | None,
    st: _State,
    c: int,
    b: int,
    optimizer: str,
    objective: str,
) -> tuple[Tensor, _State] | None:
    """Run the Triton path on the caller's token-major inputs ``q, k, v [B, T, H, D]``,
    gates ``[B, T, H]`` (``theta``: ``None`` for gd, which never reads it) and the state
    ``st`` (head-major halos) if ``backend`` (``"triton"`` or ``"auto"``) and the case
    allow it; returns ``o [B, T, H, Dv]`` and the new state, or ``None``: "use the torch
    backend" (after a once-per-reason warning when ``backend == "triton"``). No head-major
    views are taken on the gd path: each would be one more view op and one more autograd
    node per tensor in every call."""
    explicit = backend == "triton"

    def no(reason: str, msg: str) -> None:
        if explicit:
            _warn_once(reason, msg)
        return None

    if optimizer not in ("gd", "momentum") or q.shape[1] == 0:
        return None  # muon: batched torch Newton-Schulz by design; empty: nothing to do
    if not explicit and not q.is_cuda:
        return None  # auto: Triton only for CUDA tensors (no import, no warning)
    if not explicit and q.dtype not in AUTO_DTYPES:
        return None  # auto: half precision only (AUTO_DTYPES)
    if st.position % b:
        return no(
            "unaligned",
            f"a continued state at position {st.position} is not on a "
            f"chunk boundary (chunk size {b}); the kernel starts chunks at multiples of b",
        )
    dk = q.shape[-1]
    seq = q.shape[2] * (q.shape[1] + b) * max(dk, v.shape[-1])  # one sequence, padded
    if dk > MAX_DK or b + c - 1 > MAX_WINDOW_ROWS or seq >= 2**31:
        return no(
            "shape",
            f"Dk={dk}, b+c-1={b + c - 1}, H*T*D={seq} exceed the kernel limits "
            f"(Dk <= {MAX_DK}, b+c-1 <= {MAX_WINDOW_ROWS}, int32 token offsets)",
        )
    if q.dtype not in _DTYPES or any(x.dtype != q.dtype for x in (k, v)):
        return no("dtype", f"unsupported dtypes {q.dtype}, {k.dtype}, {v.dtype}")
    env = _env_interpret()
    if not q.is_cuda and not env:
        return no(
            "cpu",
            "CPU tensors need the Triton interpreter (set TRITON_INTERPRET=1 "
            "before triton is first imported)",
        )
    try:
        trt, mode = _load_triton()
    except Exception as exc:  # ImportError, or a broken install
        return no("import", f"triton is not importable ({exc!r})")
    if (mode == "interpret") != env:
        return no(
            "mode",
            f"triton was imported in {mode} mode but TRITON_INTERPRET is "
            f"{'set' if env else 'unset'} now (the mode is fixed at first import)",
        )
    if not explicit and mode == "interpret":
        return None  # auto never picks the (slow) interpreter
    if mode == "compiled" and q.is_cuda:
        hz = gpu_hazard(dk, v.shape[-1], c, _capability(q.device),
                        str(getattr(trt, "__version__", "0")))
        if hz is not None:
            reason, msg, blocks_explicit = hz
            if not explicit:
                return None
            if blocks_explicit:
                return no(reason, msg)
            _warn_once(reason, msg.replace("; runs the torch backend", "") + "; running the "
                       "kernels anyway (backend='triton')")
    key = _case_key(q, v, b, c, optimizer, objective)
    if key in _BROKEN:
        return None  # failed before (and warned): do not recompile on every call
    try:
        return _forward(q, k, v, alpha, eta, gamma, theta, st, c, b, optimizer, objective)
    except _KernelError as exc:  # a real failure: warned even under "auto"
        _BROKEN.add(key)
        _warn_once("launch", f"kernel compile/launch failed ({exc.__cause__!r})")
        return None


UNSAFE_ENV = "ATLAS_TRITON_UNSAFE"
"""Set to 1 to run the kernels in the cases :func:`gpu_hazard` refuses (to reproduce them)."""


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def gpu_hazard(dk: int, dv: int, c: int, capability: tuple[int, int], triton_version: str
               ) -> tuple[str, str, bool] | None:
    """A case the compiled kernels are known to get wrong on this GPU and Triton, as
    ``(reason, message, refused even for backend='triton')``, or None. Measured on an H100
    (README, Performance): sm_90 with Triton 3.4.0 <= version < 3.7.1, the range that
    miscompiles ``tl.trans`` of a ``tl.dot`` result on Hopper (flash-linear-attention #640,
    which refuses it too); the backward here uses that pattern, and with Triton 3.6.0 a
    4-warp config of the output kernel returned wrong outputs. ``backend='auto'`` runs
    torch; ``'triton'`` warns once and runs (the first configs pass the kernel checks
    there). ``ATLAS_TRITON_UNSAFE=1`` lifts it.

    No longer refused: ``max(Dk, Dv) > 64`` with a window ``c > 1``. At ``Dk = Dv = 128,
    c = 16`` the backward faulted at the benchmark's shape (Triton 3.6.0 and 3.7.1);
    ``compute-sanitizer`` placed it in ``_omega_bwd_local``, an out-of-bounds shared-memory
    read in ``tl.trans`` of the halo tile's ``P = C ∘ Q K^T`` (a dot result). ``_u_part``
    now builds ``P^T`` directly; on an H100 with Triton 3.7.1 every config then ran that
    case at the benchmark's shapes (T = 2k to 16k) and matched the fp32 torch backend to
    bf16 rounding (3e-3).
    """
    del dk, dv, c  # no case depends on the shape at present (D > 64 with c > 1 is fixed)
    if os.environ.get(UNSAFE_ENV, "0").strip().lower() in _TRUE:
        return None
    return _hazard(tuple(capability), triton_version)


@functools.cache
def _hazard(capability: tuple[int, int], triton_version: str) -> tuple[str, str, bool] | None:
    """:func:`gpu_hazard` without the environment switch (cached per GPU and Triton)."""
    if tuple(capability) == (9, 0) and (3, 4, 0) <= _version(triton_version) < (3, 7, 1):
        return ("hopper-triton",
                f"Triton {triton_version} on sm_90 is in the range that miscompiles tl.trans "
                "of tl.dot results (3.4.0 to 3.7.0; fla #640); runs the torch backend", False)
    return None


def _case_key(q: Tensor, v: Tensor, b: int, c: int, optimizer: str, objective: str) -> tuple:
    return (q.device.type, q.dtype, q.shape[-1], v.shape[-1], b, c, optimizer, objective)


def _forward(q, k, v, alpha, eta, gamma, theta, st, c, b, optimizer, objective):
    """Build the coefficients (torch, autocast off: gate products stay in the computation
    dtype), run :class:`_ChunkScan`, assemble the state."""
    with torch.autocast(q.device.type, enabled=False):
        return _forward_impl(q, k, v, alpha, eta, gamma, theta, st, c, b, optimizer, objective)


def _forward_impl(q, k, v, alpha, eta, gamma, theta, st, c, b, optimizer, objective):
    bsz, t_len, nh = q.shape[:3]
    hl = c - 1
    nt = -(-t_len // b)
    n = b + hl
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    momentum = optimizer == "momentum"
    if not momentum:  # the coefficients and their chunk ends in one kernel, from the gates
        hg = _flat(st.halo_gamma) if hl else None
        coef = _GdCoeffs.apply(alpha.contiguous(), eta.contiguous(), gamma.contiguous(), hg,
                               b, n, cd)
        cum_a, c_m, c_end, a_end = coef
        bm = bm_end = th_end = cs_end = None
    else:  # momentum: torch coefficients over head-major gates [B, H, T]
        ah, eh, gh, thh = (x.transpose(1, 2) for x in (alpha, eta, gamma, theta))
        pad = nt * b - t_len

        def tpad(x: Tensor) -> Tensor:  # zero-pad the time dim (2) to NT * b
            return x if pad == 0 else F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))

        gx = _with_halo(st.halo_gamma, tpad(gh)).to(cd)
        gw = _blocks(gx, 0, nt, n, b)  # [B,H,NT,N] (small: the gates)
        al = F.pad(ah.to(cd), (0, pad), value=1.0).reshape(bsz, nh, nt, b)
        et = F.pad(eh.to(cd), (0, pad), value=0.0).reshape(bsz, nh, nt, b)
        th = F.pad(thh.to(cd), (0, pad), value=1.0).reshape(bsz, nh, nt, b)
        wmat = _window_weights(gw, b, hl)  # W [B,H,NT,b,N] (c = 1: its diagonal)
        cum_a, c_m, c_s, b_m, cum_th = _dual_coeffs(al, et, th, wmat, momentum)
        last = (t_len - 1) % b

        def end(x: Tensor) -> Tensor:
            return _chunk_ends(x, 2, last)

        coef = [_flat(x) for x in (cum_a, c_m, b_m, end(c_m), end(cum_a), end(b_m),
                                   end(cum_th), end(c_s))]
        cum_a, c_m, bm, c_end, a_end, bm_end, th_end, cs_end = coef
    s0 = st.momentum if momentum else None
    m0 = st.memory
    o, m_fin, s_fin, m_anchor = _ChunkScan.apply(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        st.halo_k,
        st.halo_v,
        cum_a,
        c_m,
        bm,
        a_end,
        bm_end,
        th_end,
        c_end,
        cs_end,
        m0,
        s0,
        objective == "l2",
    )
    m_fin = m_fin.to(m0.dtype)
    anchor = m_fin if t_len % b == 0 else m_anchor.to(m0.dtype)
    new = _State(
        m_fin,
        s_fin.to(s0.dtype) if momentum else None,
        anchor,
        *_new_halos(st, k, v, gamma, hl),
        st.position + t_len,
    )
    return o, new


# ----------------------------------------------------------------------------- autograd


def _chunk_ends(x: Tensor, nt_dim: int, last: int) -> Tensor:
    """The coefficients at each chunk's last real token: ``x [..., NT, b, ...]`` (chunks at
    ``nt_dim``, their rows after it) -> row ``b - 1`` of every chunk but the final one and
    row ``last`` of that one (its padded rows past ``T`` are not no-ops for momentum)."""
    nt_dim %= x.dim()
    nt, b = x.shape[nt_dim], x.shape[nt_dim + 1]
    head = x.narrow(nt_dim, 0, nt - 1).select(nt_dim + 1, b - 1)
    tail = x.narrow(nt_dim, nt - 1, 1).select(nt_dim + 1, last)
    return torch.cat([head, tail], dim=nt_dim)


def _new_halos(st: _State, k: Tensor, v: Tensor, gamma: Tensor, hl: int
               ) -> tuple[Tensor, Tensor, Tensor]:
    """The new state's halos (head-major, :func:`omega_linear._new_halo`) from token-major
    ``k, v, gamma``; window 1 keeps the empty ones (no views taken)."""
    if not hl:
        return st.halo_k, st.halo_v, st.halo_gamma
    return tuple(_new_halo(h, x.transpose(1, 2))
                 for h, x in ((st.halo_k, k), (st.halo_v, v), (st.halo_gamma, gamma)))


def _windows(x: Tensor, hx: Tensor | None, b: int, nt: int) -> Tensor:
    """Token-major ``[B, T, H, D]`` (and the halo ``[B*H, HL, D]`` before it) -> the window
    rows ``[B*H, NT, b + HL, D]`` of every chunk, zero-padded to ``NT * b`` tokens (torch
    twin of the kernels' token addressing; differentiable)."""
    bsz, t_len, nh, d = x.shape
    xh = x.transpose(1, 2).reshape(1, bsz * nh, t_len, d)
    xh = F.pad(xh, (0, 0, 0, nt * b - t_len))
    hl = 0 if hx is None else hx.shape[1]
    if hl:
        xh = torch.cat([hx.unsqueeze(0).to(xh.dtype), xh], dim=2)
    return _blocks(xh, 0, nt, b + hl, b)[0]


def _fold_halo(d_tok: Tensor, d_halo: Tensor, b: int, nh: int) -> tuple[Tensor, Tensor]:
    """Add the gradients of the halo rows ``[B*H, NT, HL, D]`` (row ``r`` of chunk ``j``
    is token ``j b - HL + r``) into the token-major gradient ``[B, T, H, D]`` (in place);
    rows before the sequence form the gradient of the initial halo ``[B, H, HL, D]``."""
    bh, nt, hl, d = d_halo.shape
    bsz = bh // nh
    src = d_halo.reshape(bsz, nh, nt * hl, d)
    if hl <= b:  # chunk 0's halo rows are all before the sequence, chunk j's (j >= 1) are
        # the last hl tokens of chunk j - 1: one strided add, no index tensors
        src = src.view(bsz, nh, nt, hl, d)
        if nt > 1:
            body = d_tok[:, : (nt - 1) * b].view(bsz, nt - 1, b, nh, d)[:, :, b - hl :]
            body += src[:, :, 1:].permute(0, 2, 3, 1, 4).to(d_tok.dtype)
        return d_tok, src[:, :, 0]
    dev = d_tok.device
    # built on the device (no host-to-device copy, no sync); rows of the other kind are
    # added as zeros at a clamped index
    tok = (torch.arange(nt, device=dev)[:, None] * b - hl
           + torch.arange(hl, device=dev)[None, :]).reshape(-1)
    inside = (tok >= 0).to(src.dtype)[:, None]
    rows = (src * inside).transpose(1, 2).to(d_tok.dtype)
    d_tok.index_add_(1, tok.clamp(min=0), rows)
    d_init = d_halo.new_zeros(bsz, nh, hl, d)
    d_init.index_add_(2, (tok + hl).clamp(max=hl - 1), src * (1 - inside))
    return d_tok, d_init


def _flat(x: Tensor | None, dtype=None) -> Tensor | None:
    """``[B, H, ...] -> [B*H, ...]`` contiguous (optionally converted)."""
    if x is None:
        return None
    x = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return (x if dtype is None else x.to(dtype)).contiguous()


class _GdCoeffs(torch.autograd.Function):
    """gd: the dual-form coefficients of :func:`omega_linear._dual_coeffs` and their
    chunk-end values in one Triton kernel per direction (``_coef_fwd``, ``_coef_bwd``),
    instead of torch passes over ``[.., b, N]`` tensors and their autograd. Inputs: the
    gates ``al, et, ga [B, T, H]`` (retention, eta, gamma; token-major contiguous, any float
    dtype), the halo gammas ``hg [B*H, c-1]`` before the sequence (``None`` for ``c = 1``),
    the chunk size ``b``, ``N = b + c - 1`` and the computation dtype ``cd``; the kernels
    read the gates in place (no padded or windowed copies; :func:`_gate_blocks` is their
    torch twin; the forward kernel also writes them padded, per chunk, for the backward).
    Returns, flat over ``B*H`` in ``cd``: ``A [NT, b]`` (``cumprod(a)``),
    ``C [NT, b, N]`` (``Dec_a diag(eta) W``), ``C[last] [NT, N]`` and ``A[last] [NT]``,
    ``last = b - 1`` except in the final chunk. Both directions are scans down the chunk's
    rows (``_coef_scan``; the backward is their adjoint), with no matrix product and no
    division by a gate: exact for tiny or zero gates, like the torch construction. The
    backward writes the gate gradients token-major in the gates' dtypes; the halo rows'
    gamma gradients are added into their tokens by :func:`_fold_halo`."""

    @staticmethod
    def forward(ctx, al, et, ga, hg, b, n, cd):
        bsz, t_len, nh = al.shape
        bh, nt, dev = bsz * nh, -(-t_len // b), al.device
        cm = _empty((bh, nt, b, n), cd, dev)
        cum = _empty((bh, nt, b), cd, dev)
        ce = _empty((bh, nt, n), cd, dev)
        ae = _empty((bh, nt), cd, dev)
        gates = (_empty((bh, nt, b), cd, dev), _empty((bh, nt, b), cd, dev),
                 _empty((bh, nt, n), cd, dev))  # padded al, et and window gammas
        try:
            _call_plain(_kernels(), "coef_fwd", bh * nt,
                        (al, et, ga, al if hg is None else hg, cm, cum, ce, ae, *gates, nt,
                         t_len, nh, b, n), _coef_consts(b, n))
        except Exception as exc:
            raise _KernelError(str(exc)) from exc
        ctx.save_for_backward(al, et, ga, hg, *gates)
        ctx.meta = (b, n, cd)
        return cum, cm, ce, ae

    @staticmethod
    @once_differentiable
    def backward(ctx, dcum, dcm, dce, dae):
        al, et, ga, hg, *gates = ctx.saved_tensors
        b, n, cd = ctx.meta
        bsz, t_len, nh = al.shape
        bh, nt, hl, dev = bsz * nh, -(-t_len // b), n - b, al.device

        def grad(g, shape):
            return torch.zeros(shape, dtype=cd, device=dev) if g is None else g.to(cd)

        # gamma's own-row gradients in cd when the halo rows are added in afterwards
        dal, det = _empty(al.shape, al.dtype, dev), _empty(et.shape, et.dtype, dev)
        dga = _empty(ga.shape, cd if hl else ga.dtype, dev)
        hdg = _empty((bh, nt, hl), cd, dev) if hl else dga
        args = (*gates, grad(dcm, (bh, nt, b, n)),
                grad(dcum, (bh, nt, b)), grad(dce, (bh, nt, n)), grad(dae, (bh, nt)), dal,
                det, dga, hdg, nt, t_len, nh, b, n)
        try:
            _call_plain(_kernels(), "coef_bwd", bh * nt, args, _coef_consts(b, n))
        except Exception as exc:  # a real failure: the same gradients by torch autograd
            _warn_once("coef-backward", f"coefficient backward kernel failed ({exc!r}), "
                       "gradients recomputed by torch autograd")
            return (*_gd_coeffs_torch_grads(al, et, ga, hg, b, n, cd,
                                            (dcum, dcm, dce, dae)), None, None, None)
        dhg = None
        if hl:
            _, d_init = _fold_halo(dga.unsqueeze(-1), hdg.unsqueeze(-1), b, nh)
            dga = dga.to(ga.dtype)
            dhg = d_init.reshape(bh, hl).to(hg.dtype) if ctx.needs_input_grad[3] else None
        return dal, det, dga, dhg, None, None, None


@functools.cache
def _coef_consts(b: int, n: int) -> dict:
    """The constexprs of the coefficient kernels (``HALO``: ``c > 1``; cached, not changed
    by the callers)."""
    return dict(BL=_np2(b), BN=_np2(n), HALO=n > b)


def _gate_blocks(al: Tensor, et: Tensor, ga: Tensor, hg: Tensor | None, b: int, n: int,
                 cd: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Torch twin of the coefficient kernels' gate reads (differentiable): token-major
    gates ``[B, T, H]`` and halo gammas ``[B*H, c-1]`` -> ``al, et [B*H, NT, b]`` (padded
    past ``T`` with 1 and 0) and the window gammas ``gw [B*H, NT, N]`` (zero past ``T``)."""
    bsz, t_len, nh = al.shape
    nt = -(-t_len // b)

    def rows(x: Tensor, fill: float) -> Tensor:
        x = x.to(cd).transpose(1, 2).reshape(bsz * nh, t_len)
        return F.pad(x, (0, nt * b - t_len), value=fill)

    g = rows(ga, 0.0)
    if hg is not None:
        g = torch.cat([hg.to(cd), g], dim=1)
    return rows(al, 1.0).view(-1, nt, b), rows(et, 0.0).view(-1, nt, b), g.unfold(1, n, b)


def _gd_coeffs_torch(al: Tensor, et: Tensor, gw: Tensor, last: int):
    """:class:`_GdCoeffs` in torch (``[..., NT, b]`` gates, ``[..., NT, N]`` window gammas):
    the reference of the kernels and the fallback of their backward."""
    b, n = al.shape[-1], gw.shape[-1]
    cum, cm = _dual_coeffs(al, et, None, _window_weights(gw, b, n - b), False)[:2]
    return cum, cm, _chunk_ends(cm, -3, last), _chunk_ends(cum, -2, last)


def _gd_coeffs_torch_grads(al, et, ga, hg, b, n, cd, cots):
    """The gradients :class:`_GdCoeffs` returns for ``al, et, ga, hg``, by torch autograd
    through :func:`_gate_blocks` and :func:`_gd_coeffs_torch`."""
    leaves = [None if x is None else x.detach().requires_grad_() for x in (al, et, ga, hg)]
    live = [x for x in leaves if x is not None]
    with torch.enable_grad():
        outs = _gd_coeffs_torch(*_gate_blocks(*leaves, b, n, cd), (al.shape[1] - 1) % b)
        pairs = [(o, g) for o, g in zip(outs, cots, strict=True) if g is not None]
        got = torch.autograd.grad([o for o, _ in pairs], live,
                                  [g.reshape(o.shape) for o, g in pairs], allow_unused=True)
    return _leaf_grads(leaves, got)


def _leaf_grads(leaves: list, got) -> list:
    """The gradients ``got`` of the non-``None`` ``leaves`` in the order of ``leaves``:
    ``None`` for a ``None`` leaf, zeros for a leaf autograd left unused."""
    it = iter(got)
    grads = []
    for x in leaves:
        g = None if x is None else next(it)
        grads.append(torch.zeros_like(x) if (x is not None and g is None) else g)
    return grads


class _ChunkScan(torch.autograd.Function):
    """Chunk scan of DESIGN.md §2 (module docstring). Inputs: ``q, k, v [B, T, H, D]``
    token-major contiguous, the halos ``hk, hv [B, H, HL, D]`` before the sequence (``HL =
    c - 1``, possibly 0), the coefficients flat over ``B*H`` in the computation dtype: ``a
    [BH, NT, b]``, ``c [BH, NT, b, N]``, ``bm [BH, NT, b]``, ``ae, be, te [BH, NT]``, ``ce,
    cse [BH, NT, N]``, and ``m0, s0 [B, H, Dk, Dv]`` (``bm, be, te, cse, s0`` are ``None``
    for gd; ``m0, s0`` in the state's dtype, converted by the kernels). Returns ``o [B, T,
    H, Dv]`` (q's dtype), the final ``M`` and ``S`` and the start state of the last chunk
    (in the states' dtypes; ``S`` is an empty tensor for gd)."""

    @staticmethod
    def forward(ctx, q, k, v, hk, hv, a, c, bm, ae, be, te, ce, cse, m0, s0, l2):
        bsz, _, nh = q.shape[:3]
        cd = a.dtype
        mom = s0 is not None
        hl = hk.shape[2]
        halo = [_flat(hk, q.dtype), _flat(hv, q.dtype)] if hl else [None, None]
        coef = [a, c, bm, ae, be, te, ce, cse]
        st0 = [  # in the state's dtype: the kernels convert on load (no copy when contiguous)
            _flat(m0.expand(bsz, nh, *m0.shape[2:])),
            None if s0 is None else _flat(s0.expand(bsz, nh, *s0.shape[2:])),
        ]
        o, mf, sf, man = _launch_forward(q, k, v, *halo, *coef, *st0, mom, l2)
        ctx.save_for_backward(q, k, v, *[x for x in halo if x is not None],
                              *[x for x in coef if x is not None], *st0[: 1 + mom])
        ctx.meta = (bsz, nh, hl, mom, l2, cd, [x is not None for x in coef], hk.dtype)
        shape = (bsz, nh)
        sf_out = sf.view(*shape, *sf.shape[1:]) if mom else mf.new_zeros(0)
        return (
            o,
            mf.view(*shape, *mf.shape[1:]),
            sf_out,
            man.view(*shape, *man.shape[1:]),
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dmf, dsf, dman):
        bsz, nh, hl, mom, l2, cd, present, h_dt = ctx.meta
        saved = list(ctx.saved_tensors)
        q, k, v = saved[:3]
        it = iter(saved[3:])
        hk, hv = (next(it), next(it)) if hl else (None, None)
        coef = [next(it) if p else None for p in present]
        m0 = next(it)
        s0 = next(it) if mom else None
        cots = [dmf, dsf if mom else None, dman]
        cots = [None if g is None or g.numel() == 0 else g for g in cots]
        any_cot = any(g is not None for g in cots)

        def flat_grad(g):  # None when no state output has a cotangent (DMI = 0)
            if not any_cot:
                return None
            return torch.zeros(m0.shape, dtype=cd, device=m0.device) if g is None else \
                _flat(g, cd)

        do_f = (
            torch.zeros(q.shape[:-1] + v.shape[-1:], dtype=q.dtype, device=q.device)
            if do is None
            else do.to(q.dtype).contiguous()
        )
        dmf_f = flat_grad(cots[0])
        dsf_f = flat_grad(cots[1]) if mom else None
        dman_f = flat_grad(cots[2])
        args = (q, k, v, hk, hv, *coef, m0, s0, do_f, dmf_f, dsf_f, dman_f, mom, l2)
        try:
            grads = _launch_backward(*args)
        except _KernelError as exc:
            _warn_once(
                "launch-backward",
                f"backward kernel failed ({exc.__cause__!r}), "
                "gradients recomputed with the torch chunk scan",
            )
            grads = _backward_torch(*args)
        dq, dk, dv, dhk, dhv, da, dc, dbm, dae, dbe, dte, dce, dcse, dm0, ds0 = grads

        need = ctx.needs_input_grad

        def unflat(g, like, i):  # (no conversion for an input that needs no gradient)
            return None if g is None or not need[i] else \
                g.view(bsz, nh, *g.shape[1:]).to(like.dtype)

        dhk, dhv = (None if g is None or not need[i] else g.to(h_dt)
                    for i, g in ((3, dhk), (4, dhv)))
        return (dq, dk, dv, dhk, dhv, da, dc, dbm, dae, dbe, dte, dce, dcse,
                unflat(dm0, m0, 13), unflat(ds0, s0, 14), None)


# ----------------------------------------------------------------------------- torch twin


def _scan_torch(q, k, v, a, c, bm, ae, be, te, ce, cse, m0, s0, l2):
    """The chunk recurrence of :class:`_ChunkScan` in torch on flat ``[BH, ...]`` tensors
    (computation dtype: the coefficients'; the states may be in another); returns ``o,
    M_end, S_end, M_s(last chunk)``."""
    cd = a.dtype
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    m, s = m0.to(cd), None if s0 is None else s0.to(cd)
    outs = []
    anchor = m
    for j in range(q.shape[1]):
        anchor = m
        qj, kj, vj = q[:, j], k[:, j], v[:, j]
        e = kj @ m - vj if l2 else -vj
        p = c[:, j] * (qj @ kj.transpose(-1, -2))
        o = a[:, j, :, None] * (qj @ m) - p @ e
        kt = kj.transpose(-1, -2)
        m_new = ae[:, j, None, None] * m - kt @ (ce[:, j, :, None] * e)
        if s is not None:
            o = o + bm[:, j, :, None] * (qj @ s)
            m_new = m_new + be[:, j, None, None] * s
            s = te[:, j, None, None] * s - kt @ (cse[:, j, :, None] * e)
        m = m_new
        outs.append(o)
    return torch.stack(outs, 1), m, s, anchor


def _backward_torch(q, k, v, hk, hv, a, c, bm, ae, be, te, ce, cse, m0, s0, do, dmf, dsf,
                    dman, mom, l2):
    """Gradients of :func:`_scan_torch` over :func:`_windows` by torch autograd (fallback of
    the backward), in the layout :func:`_launch_backward` returns."""
    del mom
    coef = (a, c, bm, ae, be, te, ce, cse)
    nh = q.shape[2]
    leaves = [
        x.detach().requires_grad_() if x is not None else None
        for x in (q, k, v, hk, hv, *coef, m0, s0)
    ]
    b, nt = a.shape[-1], a.shape[1]
    with torch.enable_grad():
        lq, lk, lv, lhk, lhv = leaves[:5]
        o, m, s, man = _scan_torch(_windows(lq, None, b, nt), _windows(lk, lhk, b, nt),
                                   _windows(lv, lhv, b, nt), *leaves[5:], l2)
        outs, cots = [o, m, man], [_windows(do, None, b, nt).to(o.dtype), dmf, dman]
        if s is not None:
            outs.append(s)
            cots.append(dsf)
        outs, cots = zip(*[(x, g) for x, g in zip(outs, cots, strict=True) if g is not None],
                         strict=True)
        live = [x for x in leaves if x is not None]
        grads = _leaf_grads(leaves, torch.autograd.grad(outs, live, cots, allow_unused=True))
    for i in (3, 4):  # the halo gradients as [B, H, HL, D]
        if grads[i] is not None:
            grads[i] = grads[i].view(q.shape[0], nh, *grads[i].shape[1:])
    return grads


# ----------------------------------------------------------------------------- launches


class Cfg(NamedTuple):
    """One launch config: ``bv`` the Dv column block (``bwd_dqk``: the Dv block of its inner
    loop), ``warps`` (``num_warps``), ``loop`` the ``VLOOP`` form (:data:`LOOP_KERNELS`
    only), ``bk`` the Dk block of ``bwd_dqk`` (its grid axis; 0 for the other kernels)."""

    bv: int
    warps: int
    loop: bool = False
    bk: int = 0


def _dqk_bk(dk: int, interpret: bool = False) -> int:
    """The narrowest Dk block ``_omega_bwd_dqk`` may run (the partial sums over Dk blocks
    are sized by it): :data:`INTERPRET_BV` under the interpreter, else the smallest ``bk``
    of its :func:`configs`."""
    return INTERPRET_BV if interpret else min(cfg.bk for cfg in configs("bwd_dqk", dk, dk))


@functools.cache
def configs(name: str, dk: int, dv: int) -> tuple[Cfg, ...]:
    """The configs (:class:`Cfg`) kernel ``name`` is autotuned over on CUDA; the first one
    is the fixed config used when :data:`AUTOTUNE` is off. ``VLOOP`` (:data:`LOOP_KERNELS`):
    one program per chunk looping over the Dv blocks instead of one per (chunk, Dv block),
    so ``P = C ∘ Q K_I^T`` (``out``) or ``P^T`` (``bwd_local``) is computed once per chunk
    instead of once per block.

    Registers and shared memory below are from sm_90 compiles specialized as a launch is
    (:mod:`atlas_search.bench.aot_check`: bf16, b = 64, T = 4096, H*D = 2048, gd; pointers
    and integers divisible by 16 carry that hint, which lets loads vectorize and the
    pipeliner stage the key tiles). No first config spills. 8 warps unless said:

    * ``states``, ``bwd_dh`` (sequential over chunks: a ``[Dk, BV]`` state block per
      program, so the number of programs resident per SM sets how much of the per-chunk
      latency overlaps): ``BV`` 16 from ``Dk >= 128`` (97 / 104 registers at c = 1, two
      blocks per SM) and 32 below, then twice that, then 4-warp forms (states at Dk = 128,
      c = 1: ``BV = 16`` 128 registers, three blocks per SM by shared memory; ``BV = 32``
      197, two) and, at ``Dk >= 128``, ``BV = 64`` (one program reads each key tile once
      for half the columns; 210 registers, no spills for ``states``, 20 bytes for
      ``bwd_dh``). fla's state scan is autotuned over ``BV`` 32 / 64 with 2 and 4 warps.
    * ``bwd_dqk``: a Dk block ``bk`` of at most 64 (172 registers at Dk = 128, c = 1) and
      a Dv loop block of 16 or 32; at ``Dk = 128`` also ``bk = 128`` (252 registers, no
      spills at ``BV = 16``): one program per chunk instead of two, so ``dP = -dO E^T``, the
      loads of ``dO, E, dV`` and the ``dC`` partials are not duplicated across Dk blocks.
    * ``out``: no ``BV = 64`` (with Triton 3.7.1 on an H100 its bf16 compile at c = 16
      gave outputs 0.58 (D = 64) and 0.38 (D = 128) off the float64 torch backend,
      relative). Its ``VLOOP`` configs: on an H200 the per-block form ran 1.75 ms at
      D = 128, c = 16, T = 4k against 0.77 ms at c = 1; autotuning picked the loop form
      there: 0.51 ms at c = 16, 0.39 ms at c = 1 (0.61 -> 0.35 ms at D = 64).
      ``bwd_local`` has the same loop configs.
    * the other parallel kernels: ``BV`` 32 and 64.

    4-warp configs only for the sequential kernels: with Triton 3.6.0 on an H100 the output
    kernel at 4 warps returned wrong outputs. ``python -m atlas_search.bench.config_check``
    runs every config against the first on a GPU, and the GPU check leaves out of the
    benchmark any config that fails there (:data:`SKIP_ENV`)."""
    cap = _np2(dv)
    kb = min(64, _np2(dk))
    if name == "bwd_dqk":
        cands = [Cfg(16, 8, bk=kb), Cfg(32, 8, bk=kb)]
        if _np2(dk) == 128:
            cands.append(Cfg(16, 8, bk=128))
    elif name in ("states", "bwd_dh"):
        bv = 16 if _np2(dk) >= 128 else 32
        cands = [Cfg(bv, 8), Cfg(2 * bv, 8), Cfg(bv, 4), Cfg(2 * bv, 4)]
        if bv == 16:
            cands.append(Cfg(64, 8))
    elif name == "out":
        cands = [Cfg(32, 8), Cfg(16, 8), Cfg(16, 8, True), Cfg(32, 8, True)]
    elif name == "bwd_local":
        cands = [Cfg(32, 8), Cfg(64, 8), Cfg(16, 8, True), Cfg(32, 8, True)]
    else:
        cands = [Cfg(32, 8), Cfg(64, 8)]
    capped = [cfg._replace(bv=min(cfg.bv, cap)) for cfg in cands]
    skip = _skipped()
    out = []
    for cfg in capped:
        if cfg not in out and (name, cfg) not in skip:
            out.append(cfg)
    return tuple(out or capped[:1])


SKIP_ENV = "ATLAS_TRITON_SKIP_CONFIGS"
"""Environment variable: configs to leave out of autotuning, ``kernel:bv:warps:loop:bk``
entries separated by commas (``loop`` 0/1), e.g. ``states:16:4:0:0``. The GPU check sets it
for the benchmark to the configs that failed its config checks. A kernel whose every
config is skipped keeps its first."""


@functools.cache
def _skipped() -> frozenset:
    out = set()
    for item in os.environ.get(SKIP_ENV, "").split(","):
        parts = item.strip().split(":")
        if len(parts) == 5:
            try:
                bv, w, loop, bk = (int(x) for x in parts[1:])
            except ValueError:
                continue
            out.add((parts[0], Cfg(bv, w, bool(loop), bk)))
    return frozenset(out)


def skip_entry(name: str, cfg: Cfg) -> str:
    """The :data:`SKIP_ENV` entry of ``cfg`` of kernel ``name``."""
    return f"{name}:{cfg.bv}:{cfg.warps}:{int(cfg.loop)}:{cfg.bk}"


INTERPRET_VLOOP = False
"""``VLOOP`` of :data:`LOOP_KERNELS` under the interpreter (whose config is fixed: ``BV`` =
:data:`INTERPRET_BV`); the tests run both forms."""


LOOP_KERNELS = ("out", "bwd_local")
"""The kernels with a ``VLOOP`` form (:func:`configs`)."""


def _meta(name: str, cfg: Cfg) -> dict:
    """The config constexprs of kernel ``name``: ``BV``, ``VLOOP`` for
    :data:`LOOP_KERNELS`, ``BK`` for ``bwd_dqk``."""
    meta = {"BV": cfg.bv}
    if name in LOOP_KERNELS:
        meta["VLOOP"] = cfg.loop
    if name == "bwd_dqk":
        meta["BK"] = cfg.bk
    return meta


def _interpret_cfg(name: str) -> Cfg:
    """The fixed config under the interpreter (warps unused there)."""
    return Cfg(INTERPRET_BV, 0, INTERPRET_VLOOP and name in LOOP_KERNELS,
               INTERPRET_BV if name == "bwd_dqk" else 0)


def _call(kern: dict, name: str, g0: int, dk: int, dv: int, args: tuple, consts: dict
          ) -> Cfg:
    """Launch kernel ``name`` on the grid ``(g0, Dv column blocks)`` (one column when the
    config loops over them, ``VLOOP``; ``bwd_dqk``: its Dk blocks). Under the interpreter
    :func:`_interpret_cfg`; on CUDA autotuned over :func:`configs`, or its first config when
    :data:`AUTOTUNE` is off. Returns the config that ran."""

    def grid(cfg: Cfg) -> tuple[int, int]:
        if name == "bwd_dqk":
            return (g0, triton.cdiv(dk, cfg.bk))
        return (g0, 1 if cfg.loop else triton.cdiv(dv, cfg.bv))

    if name == "bwd_dqk":
        consts = {k: v for k, v in consts.items() if k != "BK"}
    if kern["interpret"]:
        cfg = _interpret_cfg(name)
        kern[name][grid(cfg)](*args, **_meta(name, cfg), **consts)
        return cfg
    cfgs = configs(name, dk, dv)
    if not _autotune():
        cfg = cfgs[0]
        kern[name][grid(cfg)](*args, **_meta(name, cfg), num_warps=cfg.warps, **consts)
        return cfg
    fn = kern["tuned"](name, cfgs)
    fn[lambda meta: grid(_cfg_of(meta))](*args, **consts)
    best = getattr(fn, "best_config", None)
    if best is None:  # the caller sums partial rows by it: never guess (-> torch fallback)
        raise RuntimeError(f"the autotuner of {name} did not say which config ran")
    return _cfg_of(best.kwargs, best.num_warps)


def _cfg_of(meta: dict, warps: int = 0) -> Cfg:
    """The :class:`Cfg` of a launch's config constexprs."""
    return Cfg(meta["BV"], warps, bool(meta.get("VLOOP", False)), meta.get("BK", 0))


TUNE_MS = (5, 25)
"""``(warmup, rep)`` in ms of the timing autotuning does per config (Triton's default is
25 / 100; these kernels take 0.1-2 ms, so 25 ms is 10-250 runs, and the benchmark's
sequential kernels are tuned per grid size: each of its implementation groups tunes
about a hundred configs)."""


def _tune_bench(fn, quantiles):
    """The autotuner's timing: ``triton.testing.do_bench`` with :data:`TUNE_MS`."""
    return triton.testing.do_bench(fn, warmup=TUNE_MS[0], rep=TUNE_MS[1], quantiles=quantiles)


_TUNERS: dict[tuple, object] = {}
"""The ``triton.autotune`` wrappers made so far, by ``(kernel, configs)``."""


def autotune_picks() -> list[dict]:
    """What autotuning chose in this process: per kernel and autotune key (``b, N, Dk, Dv``,
    and ``NBH`` for the sequential kernels) the config that won, as a :data:`SKIP_ENV`
    entry (``kernel:bv:warps:loop:bk``), and how many configs it chose from."""
    out = []
    for (name, cfgs), tuner in _TUNERS.items():
        for key, best in sorted(getattr(tuner, "cache", {}).items(), key=str):
            picked = _cfg_of(best.kwargs, best.num_warps)
            out.append({"kernel": name, "key": dict(zip(_KEYS[name], key, strict=False)),
                        "config": skip_entry(name, picked), "of": len(cfgs)})
    return out


PLAIN_WARPS = 8
"""``num_warps`` of the kernels launched without autotuning (the coefficient kernels)."""


def _call_plain(kern: dict, name: str, g0: int, args: tuple, consts: dict) -> None:
    """Launch kernel ``name`` (no autotuning, no Dv blocks) on the grid ``(g0,)`` with
    :data:`PLAIN_WARPS` warps."""
    if kern["interpret"]:
        kern[name][(g0,)](*args, **consts)
    else:
        kern[name][(g0,)](*args, num_warps=PLAIN_WARPS, **consts)


@functools.cache
def _consts(b: int, n: int, dk: int, mom: bool, l2: bool, lowp: bool) -> dict:
    """The constexprs of every kernel but ``BV``: ``BL`` for a chunk's own ``b`` rows, ``BH``
    for its ``n - b = c - 1`` halo rows (``HALO``: ``c > 1``), ``BK`` for ``Dk`` (the
    launch of ``bwd_dqk`` replaces it by its Dk block) and the flags (cached: the callers
    copy it before changing it)."""
    return dict(BL=_np2(b), BH=_np2(max(1, n - b)), HALO=n > b, BK=_np2(dk), MOMENTUM=mom,
                L2=l2, LOWP=lowp)


def _buffer_dtype(x: Tensor, cd: torch.dtype, interpret: bool) -> torch.dtype:
    """dtype of the per-chunk state buffers (``Ms, Ss, dM_end, dS_end``): the input dtype on
    the low-precision operand path (:func:`_lowp`), as fla keeps its chunk states in the
    input dtype, else the computation dtype. Every ``tl.dot`` that reads them casts them to
    that dtype anyway, so ``O``, ``E``, ``dE`` and every ``dQ, dK, dV`` term are unchanged;
    only the fp32 sums ``dA_end = <dM_end, M_s>`` (``dBm_end, dTh_end``) see the rounded
    states. ``U, W, E`` stay in the computation dtype: they join fp32 sums before any cast
    (stored in bf16 they took dK past its budget in a CPU simulation)."""
    return x.dtype if _lowp(x, interpret) else cd


def _geometry(q: Tensor, a: Tensor, ce: Tensor) -> tuple[int, ...]:
    """``(B*H, NT, T, H, b, N)`` of a launch: token-major ``q [B, T, H, D]``, flat
    coefficients ``a [B*H, NT, b]`` and ``ce [B*H, NT, N]``."""
    return a.shape[0], a.shape[1], q.shape[1], q.shape[2], a.shape[2], ce.shape[2]


def _halo_args(k: Tensor, v: Tensor, hk: Tensor | None, hv: Tensor | None
               ) -> tuple[Tensor, Tensor]:
    """The halo pointers of a launch: ``hk, hv``, or ``k, v`` as never-read stand-ins when
    there is no halo (``c = 1``)."""
    return (k, v) if hk is None else (hk, hv)


def _launch_states(kern, k, v, hk, hv, a, ae, be, te, ce, cse, m0, s0, mom, l2):
    """``_omega_states``: the sequential scan over chunks (``hk, hv``: see
    :func:`_halo_args`). Returns ``M_end, S_end``, the chunk-start states ``Ms, Ss [BH, NT,
    Dk, Dv]`` (:func:`_buffer_dtype`; ``Ss`` is ``Ms`` for gd) and the start state of the
    last chunk (``M_end, S_end`` and that one in the dtypes of ``m0, s0``)."""
    bh, nt, t_len, nh, b, n = _geometry(k, a, ce)
    dk, dv = k.shape[-1], v.shape[-1]
    cd, dev = a.dtype, k.device
    bd = _buffer_dtype(k, cd, kern["interpret"])
    mf = _empty((bh, dk, dv), m0.dtype, dev)
    sf = _empty((bh, dk, dv), s0.dtype, dev) if mom else mf
    man = _empty((bh, dk, dv), m0.dtype, dev)
    ms = _empty((bh, nt, dk, dv), bd, dev)
    ss = _empty((bh, nt, dk, dv), bd, dev) if mom else ms
    dummy = ae
    args = (
        k,
        v,
        hk,
        hv,
        ae,
        be if mom else dummy,
        te if mom else dummy,
        ce,
        cse if mom else dummy,
        m0,
        s0 if mom else m0,
        mf,
        sf,
        ms,
        ss,
        man,
        nt,
        t_len,
        nh,
        b,
        n,
        dk,
        dv,
        _grid_rows(bh),
    )
    consts = _consts(b, n, dk, mom, l2, _lowp(k, kern["interpret"]))
    _call(kern, "states", bh, dk, dv, args, consts)
    return mf, sf, ms, ss, man


def _launch_forward(q, k, v, hk, hv, a, c, bm, ae, be, te, ce, cse, m0, s0, mom, l2):
    """Forward: ``_omega_states`` (sequential) then ``_omega_out`` (parallel over chunks).
    Returns ``o [B, T, H, Dv]``, ``M_end, S_end, M_s(last chunk)``; the state buffers are
    freed."""
    try:
        kern = _kernels()
        bh, nt, t_len, nh, b, n = _geometry(q, a, ce)
        dk, dv = q.shape[-1], v.shape[-1]
        hk, hv = _halo_args(k, v, hk, hv)
        mf, sf, ms, ss, man = _launch_states(kern, k, v, hk, hv, a, ae, be, te, ce, cse, m0,
                                             s0, mom, l2)
        o = _empty((*q.shape[:3], dv), q.dtype, q.device)
        args = (q, k, v, hk, hv, a, c, bm if mom else a, ms, ss, o, nt, t_len, nh, b, n, dk,
                dv)
        consts = _consts(b, n, dk, mom, l2, _lowp(q, kern["interpret"]))
        _call(kern, "out", bh * nt, dk, dv, args, consts)
    except Exception as exc:
        raise _KernelError(str(exc)) from exc
    stats["forward"] += 1
    return o, mf, sf, man


def _dv_partials(dk: int, dv: int, interpret: bool) -> int:
    """Rows of ``_omega_bwd_dv``'s per-Dv-block partials of ``dc_end``: one per column block
    of the narrowest ``BV`` it may run (:data:`INTERPRET_BV`, or the smallest of
    :func:`configs`); a wider config leaves the rest at zero."""
    bv = INTERPRET_BV if interpret else min(cfg.bv for cfg in configs("bwd_dv", dk, dv))
    return -(-dv // bv)


def _launch_backward(q, k, v, hk, hv, a, c, bm, ae, be, te, ce, cse, m0, s0, do, dmf, dsf,
                     dman, mom, l2):
    """State recomputation (``_omega_states``), the dO-local terms (``_omega_bwd_local``,
    parallel), the reverse recurrence of ``dM`` (``_omega_bwd_dh``, sequential), ``dV``
    (``_omega_bwd_dv``) and the rest (``_omega_bwd_dqk``), both parallel; the halo rows'
    ``dK, dV`` are folded into the tokens they belong to (:func:`_fold_halo`). Returns
    ``dq, dk, dv [B, T, H, D]``, ``dhk, dhv [B, H, HL, D]`` (``None`` without a halo) and
    the gradients of the flat coefficients and initial states (``None`` for the absent
    momentum ones)."""
    try:
        kern = _kernels()
        bh, nt, t_len, nh, b, n = _geometry(q, a, ce)
        dk, dv = q.shape[-1], v.shape[-1]
        hl = n - b
        nc = bh * nt
        cd, dev = a.dtype, q.device
        hk_, hv_ = _halo_args(k, v, hk, hv)
        _, _, ms, ss, _ = _launch_states(kern, k, v, hk_, hv_, a, ae, be, te, ce, cse, m0, s0,
                                         mom, l2)
        bd = ms.dtype
        dummy = a
        geo = (nt, t_len, nh, b, n, dk, dv)
        consts = _consts(b, n, dk, mom, l2, _lowp(q, kern["interpret"]))

        # local: W = Q^T diag(A) dO, W_S = Q^T diag(Bm) dO, U = -P^T dO
        w = _empty((bh, nt, dk, dv), cd, dev)
        ws = _empty((bh, nt, dk, dv), cd, dev) if mom else w
        u = _empty((bh, nt, n, dv), cd, dev)
        args = (q, k, hk_, a, c, bm if mom else dummy, do, u, w, ws, *geo)
        _call(kern, "bwd_local", nc, dk, dv, args, consts)

        # reverse recurrence: dM_end (dS_end) of every chunk, dM_0 (dS_0)
        dme = _empty((bh, nt, dk, dv), bd, dev)
        dse = _empty((bh, nt, dk, dv), bd, dev) if mom else dme
        dm0 = _empty((bh, dk, dv), cd, dev)
        ds0 = _empty((bh, dk, dv), cd, dev) if mom else dm0
        args = (
            k,
            hk_,
            ae,
            be if mom else dummy,
            te if mom else dummy,
            ce,
            cse if mom else dummy,
            u,
            w,
            ws,
            dummy if dmf is None else dmf,
            dummy if dsf is None else dsf,
            dummy if dman is None else dman,
            dme,
            dse,
            dm0,
            ds0,
            *geo,
            int(dmf is not None),
            _grid_rows(bh),
        )
        _call(kern, "bwd_dh", bh, dk, dv, args, consts)
        del w, ws

        # dV = -dE (own rows in the inputs' dtype and layout, halo rows in a buffer), (l2)
        # E (_omega_bwd_dqk reads dE and E back from them), and dc_end (dcS_end) per Dv
        # block, summed below: zeros, as a config with a wider BV leaves rows unwritten
        # (the autotuner zeroes them again before each trial and the final launch)
        dv_ = _empty((*q.shape[:3], dv), q.dtype, dev)
        hdv = _empty((bh, nt, hl, dv), cd, dev) if hl else dv_
        e = _empty((bh, nt, n, dv), cd, dev) if l2 else u
        nvb = _dv_partials(dk, dv, kern["interpret"])
        dce = torch.zeros((nvb, bh, nt, n), dtype=cd, device=dev)
        dcse = torch.zeros((nvb, bh, nt, n), dtype=cd, device=dev) if mom else dce
        args = (k, v, hk_, hv_, ce, cse if mom else dummy, ms, dme, dse, u, e, dv_, hdv, dce,
                dcse, nc, *geo)
        _call(kern, "bwd_dv", nc, dk, dv, args, consts)
        del u

        # dQ, dK (own rows; halo rows in a buffer) whole; the Dk-summed gradients per Dk
        # block (summed below)
        nk = triton.cdiv(dk, _dqk_bk(dk, kern["interpret"]))  # the most Dk blocks a config has
        dq = _empty(q.shape, q.dtype, dev)
        dk_ = _empty(q.shape, q.dtype, dev)
        hdk = _empty((bh, nt, hl, dk), cd, dev) if hl else dk_
        da = _empty((nk, bh, nt, b), cd, dev)
        dc = _empty((nk, bh, nt, b, n), cd, dev)
        dae = _empty((nk, bh, nt), cd, dev)
        if mom:
            dbm = _empty((nk, bh, nt, b), cd, dev)
            dbe = _empty((nk, bh, nt), cd, dev)
            dte = _empty((nk, bh, nt), cd, dev)
        else:
            dbm = dbe = dte = da
        args = (
            q,
            k,
            v,
            hk_,
            hv_,
            a,
            c,
            bm if mom else dummy,
            ce,
            cse if mom else dummy,
            ms,
            ss,
            dme,
            dse,
            do,
            e,
            dv_,
            hdv,
            dq,
            dk_,
            hdk,
            da,
            dc,
            dbm,
            dae,
            dbe,
            dte,
            nc,
            *geo,
        )
        ran = _call(kern, "bwd_dqk", nc, dk, dv, args, consts)
        nk = triton.cdiv(dk, ran.bk)  # the partial rows it wrote
        dhk = dhv = None
        if hl:
            dk_, dhk = _fold_halo(dk_, hdk, b, nh)
            dv_, dhv = _fold_halo(dv_, hdv, b, nh)
    except Exception as exc:
        raise _KernelError(str(exc)) from exc
    stats["backward"] += 1

    def red(x, rows=None):  # the partials over Dk blocks (dce, dcse: over Dv blocks)
        x = x if rows is None else x[:rows]
        return x.sum(0) if x.shape[0] > 1 else x[0]

    out = [dq, dk_, dv_, dhk, dhv, red(da, nk), red(dc, nk)]
    out += [red(dbm, nk) if mom else None, red(dae, nk)]
    out += [red(dbe, nk), red(dte, nk)] if mom else [None, None]
    out += [red(dce), red(dcse) if mom else None, dm0, ds0 if mom else None]
    return out


# ----------------------------------------------------------------------------- kernels

_RESET = {"bwd_dv": ["dce_ptr", "dcse_ptr"]}
"""Per-block partial buffers that a config with a wider ``BV`` leaves partly unwritten:
zeroed by the autotuner before each trial and before the launch that follows it."""

def _grid_rows(bh: int) -> int:
    """``NBH`` of the sequential kernels: ``B*H`` rounded up to a power of two. Their
    programs are ``B*H`` x the Dv blocks, each a chain of ``NT`` dependent steps, so the
    best ``BV`` and warps depend on how many there are per SM (at T = 2k the benchmark has
    8x the ``B*H`` of T = 16k); an autotune key, so each such size is tuned once."""
    return _np2(bh)


# autotune keys (the integer arguments each kernel has; NT is not a key, and the grid size
# only for the sequential kernels, through NBH)
_KEYS = {
    "states": ["L", "N", "DK", "DV", "NBH"],
    "out": ["L", "N", "DK", "DV"],
    "bwd_local": ["L", "N", "DK", "DV"],
    "bwd_dh": ["L", "N", "DK", "DV", "NBH"],
    "bwd_dv": ["L", "N", "DK", "DV"],
    "bwd_dqk": ["L", "N", "DK", "DV"],
}


@functools.cache
def _kernels() -> dict:
    """Define the Triton kernels (once per process, in the mode triton was imported in).
    ``triton``/``tl`` and the ``@triton.jit`` helpers are bound as module globals so both
    the compiler and the interpreter resolve them from the kernels' ``__globals__``."""
    global triton, tl, _tile, _rows_load, _rows_store, _kv_block, _states_part, _out_part
    global _u_part, _de_tile, _dh_part, _dv_part, _dqk_loop, _dqk_end, _lin
    global _coef_index, _coef_gamma, _coef_band, _coef_scan, _coef_x, _state_pair, _gate_pair
    global _tok_rows, _tok_ptrs, _tok_load, _tok_store, _out_p, _out_pe, _u_pt, _u_store
    global _loop_head
    _triton, mode = _load_triton()
    import triton.language as _tl

    triton, tl = _triton, _tl

    # Row tiles. A chunk's N = b + c - 1 window rows are two tiles: its own b tokens (rows
    # HL .. N-1, HL = c - 1, padded to BL) and, when c > 1 (HALO), the c - 1 halo tokens
    # before it (rows 0 .. HL-1, padded to BH). One power-of-two tile of N rows would pad
    # b + c - 1 = 79 to 128 at b = 64, c = 16; two tiles compute on 64 + 16 rows.
    # Helpers do the work of one tile; the kernels call them for the own tile and, under
    # HALO, the halo tile.

    @triton.jit
    def _tile(R0, NR, BR: tl.constexpr):
        # rows R0 .. R0 + NR - 1 of the window, padded to BR: (row indices, mask)
        i = tl.arange(0, BR)
        return R0 + i, i < NR

    @triton.jit
    def _rows_load(ptr, cj, N, r, mr, cols, mc, W):
        # [BR, BC] block of a [NC, N, W] tensor: rows r of chunk cj, columns cols
        return tl.load(ptr + (cj * N + r[:, None]) * W + cols[None, :],
                       mask=mr[:, None] & mc[None, :], other=0.0)

    @triton.jit
    def _rows_store(ptr, cj, N, r, mr, cols, mc, W, x):
        tl.store(ptr + (cj * N + r[:, None]) * W + cols[None, :],
                 x.to(ptr.dtype.element_ty), mask=mr[:, None] & mc[None, :])

    # Token-major tensors. q, k, v, dO and the outputs O, dQ, dK, dV are read and written in
    # the caller's [B, T, H, W] layout (no head-major copies): chunk cj = (batch*head) *
    # NT + j holds tokens j*L .. j*L + L - 1; window row r of it is token j*L + r - HL
    # (HL = N - L halo rows first). Tokens < 0 come from the [B*H, HL, W] halo before the
    # sequence (a halo tile, HT), tokens >= T are zeros (the padded last chunk).

    @triton.jit
    def _tok_rows(cj, NT, L, N, R0, NR, BR: tl.constexpr):
        # window rows R0 .. R0 + NR - 1 of chunk cj padded to BR: (rows, mask, tokens)
        r, mr = _tile(R0, NR, BR)
        return r, mr, (cj % NT).to(tl.int32) * L + r - (N - L)

    @triton.jit
    def _tok_ptrs(ptr, cj, NT, T, H, t, cols, W):
        # pointers to tokens t (int32; T * H * W < 2**31), columns cols of the (batch,
        # head) of chunk cj (its int64 base)
        i_bh = cj // NT
        base = ptr + ((i_bh // H) * T * H + i_bh % H) * W
        return base + (t * (H * W))[:, None] + cols[None, :]

    @triton.jit
    def _tok_load(ptr, hptr, cj, NT, T, H, HL, t, mr, cols, mc, W, HT: tl.constexpr):
        # [BR, BC] block at tokens t (HT: tokens < 0 from the halo)
        ok = mr & (t >= 0) & (t < T)
        x = tl.load(_tok_ptrs(ptr, cj, NT, T, H, t, cols, W),
                    mask=ok[:, None] & mc[None, :], other=0.0)
        if HT:
            hbase = hptr + (cj // NT) * HL * W
            x += tl.load(hbase + ((HL + t) * W)[:, None] + cols[None, :],
                         mask=(mr & (t < 0))[:, None] & mc[None, :], other=0.0)
        return x

    @triton.jit
    def _tok_store(ptr, cj, NT, T, H, t, mr, cols, mc, W, x):
        ok = mr & (t >= 0) & (t < T)
        tl.store(_tok_ptrs(ptr, cj, NT, T, H, t, cols, W), x.to(ptr.dtype.element_ty),
                 mask=ok[:, None] & mc[None, :])

    @triton.jit
    def _kv_block(i_v, DK, DV, BK: tl.constexpr, BV: tl.constexpr):
        # the [BK, BV] block of a [Dk, Dv] state for column block i_v: indices, masks and
        # offsets within one state
        ok = tl.arange(0, BK)
        ov = i_v * BV + tl.arange(0, BV)
        mk = ok < DK
        mv = ov < DV
        return ok, mk, ov, mv, mk[:, None] & mv[None, :], ok[:, None] * DV + ov[None, :]

    @triton.jit
    def _state_pair(p_ptr, s_ptr, off, mask, cd: tl.constexpr, MOMENTUM: tl.constexpr):
        # a [Dk, Dv] state block and, for momentum, its S twin (else the same block again)
        x = tl.load(p_ptr + off, mask=mask, other=0.0).to(cd)
        y = x
        if MOMENTUM:
            y = tl.load(s_ptr + off, mask=mask, other=0.0).to(cd)
        return x, y

    @triton.jit
    def _states_part(k_ptr, v_ptr, hk_ptr, hv_ptr, ce_ptr, cse_ptr, cj, NT, T, H, L, N, DK,
                     DV, R0, NR, m, ok, mk, ov, mv, BR: tl.constexpr, HT: tl.constexpr,
                     MOMENTUM: tl.constexpr, L2: tl.constexpr, LOWP: tl.constexpr):
        # one tile's K_r^T (c_end ∘ E_r) [and K_r^T (cS_end ∘ E_r)], E_r = K_r M_s - V_r (l2)
        cd = m.dtype
        dd = k_ptr.dtype.element_ty if LOWP else cd
        r, mr, t = _tok_rows(cj, NT, L, N, R0, NR, BR)
        kk = _tok_load(k_ptr, hk_ptr, cj, NT, T, H, N - L, t, mr, ok, mk, DK, HT).to(dd)
        vv = _tok_load(v_ptr, hv_ptr, cj, NT, T, H, N - L, t, mr, ov, mv, DV, HT).to(cd)
        if L2:
            e = tl.dot(kk, m.to(dd), input_precision="ieee") - vv
        else:
            e = -vv
        ce = tl.load(ce_ptr + cj * N + r, mask=mr, other=0.0).to(cd)
        um = tl.dot(tl.trans(kk), (ce[:, None] * e).to(dd), input_precision="ieee")
        us = um
        if MOMENTUM:
            cse = tl.load(cse_ptr + cj * N + r, mask=mr, other=0.0).to(cd)
            us = tl.dot(tl.trans(kk), (cse[:, None] * e).to(dd), input_precision="ieee")
        return um, us

    @triton.jit
    def _omega_states(
        k_ptr,
        v_ptr,
        hk_ptr,
        hv_ptr,
        ae_ptr,
        be_ptr,
        te_ptr,
        ce_ptr,
        cse_ptr,
        m0_ptr,
        s0_ptr,
        mf_ptr,
        sf_ptr,
        ms_ptr,
        ss_ptr,
        man_ptr,
        NT,
        T,
        H,
        L,
        N,
        DK,
        DV,
        NBH,
        BL: tl.constexpr,
        BH: tl.constexpr,
        BK: tl.constexpr,
        BV: tl.constexpr,
        HALO: tl.constexpr,
        MOMENTUM: tl.constexpr,
        L2: tl.constexpr,
        LOWP: tl.constexpr,
    ):
        # sequential over chunks; one program: one (batch*head, Dv column block), its M (S)
        # block in registers (computation dtype: the coefficients'). NBH: an autotune key
        # only (_grid_rows), not read. Reads M_0 (S_0) and
        # writes the final states and the start state of the last chunk (the anchor) in
        # their buffers' dtypes, and every chunk-start state (the state buffers' dtype).
        i_bh = tl.program_id(0).to(tl.int64)
        i_v = tl.program_id(1).to(tl.int64)
        cd = ae_ptr.dtype.element_ty
        ok, mk, ov, mv, mkv, kv_off = _kv_block(i_v, DK, DV, BK, BV)
        st_off = i_bh * DK * DV + kv_off
        m, s = _state_pair(m0_ptr, s0_ptr, st_off, mkv, cd, MOMENTUM)
        for j in range(NT):
            cj = i_bh * NT + j
            tl.store(ms_ptr + cj * DK * DV + kv_off, m.to(ms_ptr.dtype.element_ty), mask=mkv)
            tl.store(man_ptr + st_off, m, mask=mkv & ((ok[:, None] * 0 + j) == NT - 1))
            if MOMENTUM:
                tl.store(ss_ptr + cj * DK * DV + kv_off, s.to(ss_ptr.dtype.element_ty),
                         mask=mkv)
            um, us = _states_part(k_ptr, v_ptr, hk_ptr, hv_ptr, ce_ptr, cse_ptr, cj, NT, T, H,
                                  L, N, DK, DV, N - L, L, m, ok, mk, ov, mv, BL, False,
                                  MOMENTUM, L2, LOWP)
            if HALO:
                um2, us2 = _states_part(k_ptr, v_ptr, hk_ptr, hv_ptr, ce_ptr, cse_ptr, cj, NT,
                                        T, H, L, N, DK, DV, 0, N - L, m, ok, mk, ov, mv, BH,
                                        True, MOMENTUM, L2, LOWP)
                um += um2
                if MOMENTUM:
                    us += us2
            ae = tl.load(ae_ptr + cj).to(cd)
            m_new = ae * m - um
            if MOMENTUM:
                be = tl.load(be_ptr + cj).to(cd)
                te = tl.load(te_ptr + cj).to(cd)
                m_new += be * s
                s = te * s - us
            m = m_new
        tl.store(mf_ptr + st_off, m, mask=mkv)
        if MOMENTUM:
            tl.store(sf_ptr + st_off, s, mask=mkv)

    @triton.jit
    def _out_part(qq, k_ptr, v_ptr, hk_ptr, hv_ptr, c_ptr, cj, NT, T, H, L, N, DK, DV, R0, NR,
                  m, ol, ml, ok, mk, ov, mv, BR: tl.constexpr, HT: tl.constexpr,
                  L2: tl.constexpr, LOWP: tl.constexpr):
        # one tile's (C_r ∘ Q K_r^T) E_r
        cd = m.dtype
        dd = qq.dtype
        r, mr, t = _tok_rows(cj, NT, L, N, R0, NR, BR)
        kk = _tok_load(k_ptr, hk_ptr, cj, NT, T, H, N - L, t, mr, ok, mk, DK, HT).to(dd)
        vv = _tok_load(v_ptr, hv_ptr, cj, NT, T, H, N - L, t, mr, ov, mv, DV, HT).to(cd)
        if L2:
            e = tl.dot(kk, m.to(dd), input_precision="ieee") - vv
        else:
            e = -vv
        cc = _rows_load(c_ptr, cj, L, ol, ml, r, mr, N).to(cd)  # C[:, r]
        qk = tl.dot(qq, tl.trans(kk), input_precision="ieee")
        return tl.dot((cc * qk).to(dd), e.to(dd), input_precision="ieee")

    @triton.jit
    def _loop_head(q_ptr, a_ptr, bm_ptr, cj, NT, T, H, L, DK, tq, ol, ml, cd: tl.constexpr,
                   dd: tl.constexpr, BK: tl.constexpr, MOMENTUM: tl.constexpr):
        # what a VLOOP program reads once for its chunk: the Dk indices and mask, Q (all of
        # Dk, in the dot dtype), A and (momentum) Bm
        ok = tl.arange(0, BK)
        mk = ok < DK
        qq = _tok_load(q_ptr, q_ptr, cj, NT, T, H, 0, tq, ml, ok, mk, DK, False).to(dd)
        aa = tl.load(a_ptr + cj * L + ol, mask=ml, other=0.0).to(cd)
        bm = aa
        if MOMENTUM:
            bm = tl.load(bm_ptr + cj * L + ol, mask=ml, other=0.0).to(cd)
        return ok, mk, qq, aa, bm

    @triton.jit
    def _out_p(qq, k_ptr, hk_ptr, c_ptr, cj, NT, T, H, L, N, DK, R0, NR, ol, ml, ok, mk,
               BR: tl.constexpr, HT: tl.constexpr):
        # one tile's keys K_r and P_r = C_r ∘ Q K_r^T, in the dot dtype (VLOOP: computed
        # once per chunk, then reused for every Dv block)
        dd = qq.dtype
        r, mr, t = _tok_rows(cj, NT, L, N, R0, NR, BR)
        kk = _tok_load(k_ptr, hk_ptr, cj, NT, T, H, N - L, t, mr, ok, mk, DK, HT).to(dd)
        cc = _rows_load(c_ptr, cj, L, ol, ml, r, mr, N)  # C[:, r]
        qk = tl.dot(qq, tl.trans(kk), input_precision="ieee")
        return (cc.to(qk.dtype) * qk).to(dd), kk

    @triton.jit
    def _out_pe(p, kk, v_ptr, hv_ptr, cj, NT, T, H, L, N, DV, R0, NR, m, ov, mv,
                BR: tl.constexpr, HT: tl.constexpr, L2: tl.constexpr):
        # one tile's P_r E_r for one Dv block, E_r = K_r M_s - V_r (l2) or -V_r (dot)
        r, mr, t = _tok_rows(cj, NT, L, N, R0, NR, BR)
        vv = _tok_load(v_ptr, hv_ptr, cj, NT, T, H, N - L, t, mr, ov, mv, DV, HT)
        if L2:
            e = tl.dot(kk, m.to(kk.dtype), input_precision="ieee") - vv.to(m.dtype)
        else:
            e = -vv.to(m.dtype)
        return tl.dot(p, e.to(p.dtype), input_precision="ieee")

    @triton.jit
    def _omega_out(
        q_ptr,
        k_ptr,
        v_ptr,
        hk_ptr,
        hv_ptr,
        a_ptr,
        c_ptr,
        bm_ptr,
        ms_ptr,
        ss_ptr,
        o_ptr,
        NT,
        T,
        H,
        L,
        N,
        DK,
        DV,
        BL: tl.constexpr,
        BH: tl.constexpr,
        BK: tl.constexpr,
        BV: tl.constexpr,
        VLOOP: tl.constexpr,
        HALO: tl.constexpr,
        MOMENTUM: tl.constexpr,
        L2: tl.constexpr,
        LOWP: tl.constexpr,
    ):
        # parallel: one program per (chunk of a batch*head, Dv column block), or (VLOOP) one
        # per chunk looping over the Dv blocks, P = C ∘ Q K_I^T computed once
        cj = tl.program_id(0).to(tl.int64)  # chunk index in [BH * NT]
        cd = a_ptr.dtype.element_ty
        dd = q_ptr.dtype.element_ty if LOWP else cd
        ol = tl.arange(0, BL)
        ml = ol < L
        tq = (cj % NT).to(tl.int32) * L + ol  # the chunk's own tokens
        if VLOOP:
            ok, mk, qq, aa, bm = _loop_head(q_ptr, a_ptr, bm_ptr, cj, NT, T, H, L, DK, tq, ol,
                                            ml, cd, dd, BK, MOMENTUM)
            p, kk = _out_p(qq, k_ptr, hk_ptr, c_ptr, cj, NT, T, H, L, N, DK, N - L, L, ol, ml,
                           ok, mk, BL, False)
            ph, kh = p, kk
            if HALO:
                ph, kh = _out_p(qq, k_ptr, hk_ptr, c_ptr, cj, NT, T, H, L, N, DK, 0, N - L, ol,
                                ml, ok, mk, BH, True)
            for i_b in range(tl.cdiv(DV, BV)):
                ok, mk, ov, mv, mkv, kv_off = _kv_block(i_b, DK, DV, BK, BV)
                cs_off = cj * DK * DV + kv_off
                m = tl.load(ms_ptr + cs_off, mask=mkv, other=0.0).to(cd)
                o = aa[:, None] * tl.dot(qq, m.to(dd), input_precision="ieee")
                if HALO:
                    o -= _out_pe(ph, kh, v_ptr, hv_ptr, cj, NT, T, H, L, N, DV, 0, N - L, m, ov,
                                 mv, BH, True, L2)
                o -= _out_pe(p, kk, v_ptr, hv_ptr, cj, NT, T, H, L, N, DV, N - L, L, m, ov, mv,
                             BL, False, L2)
                if MOMENTUM:
                    s = tl.load(ss_ptr + cs_off, mask=mkv, other=0.0).to(cd)
                    o += bm[:, None] * tl.dot(qq, s.to(dd), input_precision="ieee")
                _tok_store(o_ptr, cj, NT, T, H, tq, ml, ov, mv, DV, o)
        else:
            i_v = tl.program_id(1).to(tl.int64)
            ok, mk, ov, mv, mkv, kv_off = _kv_block(i_v, DK, DV, BK, BV)
            cs_off = cj * DK * DV + kv_off
            m = tl.load(ms_ptr + cs_off, mask=mkv, other=0.0).to(cd)
            qq = _tok_load(q_ptr, q_ptr, cj, NT, T, H, 0, tq, ml, ok, mk, DK, False).to(dd)
            aa = tl.load(a_ptr + cj * L + ol, mask=ml, other=0.0).to(cd)
            o = aa[:, None] * tl.dot(qq, m.to(dd), input_precision="ieee")
            o -= _out_part(qq, k_ptr, v_ptr, hk_ptr, hv_ptr, c_ptr, cj, NT, T, H, L, N, DK, DV,
                           N - L, L, m, ol, ml, ok, mk, ov, mv, BL, False, L2, LOWP)
            if HALO:
                o -= _out_part(qq, k_ptr, v_ptr, hk_ptr, hv_ptr, c_ptr, cj, NT, T, H, L, N, DK, DV,
                               0, N - L, m, ol, ml, ok, mk, ov, mv, BH, True, L2, LOWP)
            if MOMENTUM:
                s = tl.load(ss_ptr + cs_off, mask=mkv, other=0.0).to(cd)
                bm = tl.load(bm_ptr + cj * L + ol, mask=ml, other=0.0).to(cd)
                o += bm[:, None] * tl.dot(qq, s.to(dd), input_precision="ieee")
            _tok_store(o_ptr, cj, NT, T, H, tq, ml, ov, mv, DV, o)

    @triton.jit
    def _u_pt(qq, k_ptr, hk_ptr, c_ptr, cj, NT, T, H, L, N, DK, R0, NR, ol, ml, ok, mk,
              cd: tl.constexpr, BR: tl.constexpr, HT: tl.constexpr):
        # one tile's P_r^T = C[:, r]^T ∘ K_r Q^T (P = C ∘ Q K_r^T) in the dot dtype. Built
        # directly (C read transposed), not as tl.trans of a dot result: on an H100 (Triton
        # 3.7.1) that transpose read past its shared memory at Dk = 128 with the 16-row halo
        # tile (compute-sanitizer: an invalid __shared__ read in this line, then a fault).
        dd = qq.dtype
        r, mr, t = _tok_rows(cj, NT, L, N, R0, NR, BR)
        kk = _tok_load(k_ptr, hk_ptr, cj, NT, T, H, N - L, t, mr, ok, mk, DK, HT).to(dd)
        ct = tl.load(c_ptr + (cj * L + ol[None, :]) * N + r[:, None],
                     mask=mr[:, None] & ml[None, :], other=0.0).to(cd)  # C[:, r]^T
        return (ct * tl.dot(kk, tl.trans(qq), input_precision="ieee")).to(dd)

    @triton.jit
    def _u_store(pt, do, u_ptr, cj, NT, L, N, DV, R0, NR, ov, mv, BR: tl.constexpr):
        # one tile's rows of U = -P^T dO for one Dv block
        r, mr, t = _tok_rows(cj, NT, L, N, R0, NR, BR)
        u = -tl.dot(pt, do.to(pt.dtype), input_precision="ieee")
        _rows_store(u_ptr, cj, N, r, mr, ov, mv, DV, u)

    @triton.jit
    def _u_part(qq, do, k_ptr, hk_ptr, c_ptr, u_ptr, cj, NT, T, H, L, N, DK, DV, R0, NR, ol,
                ml, ok, mk, ov, mv, BR: tl.constexpr, HT: tl.constexpr):
        # one tile's rows of U = -P^T dO for one Dv block (the per-block form)
        pt = _u_pt(qq, k_ptr, hk_ptr, c_ptr, cj, NT, T, H, L, N, DK, R0, NR, ol, ml, ok, mk,
                   do.dtype, BR, HT)
        _u_store(pt, do, u_ptr, cj, NT, L, N, DV, R0, NR, ov, mv, BR)

    @triton.jit
    def _omega_bwd_local(
        q_ptr,
        k_ptr,
        hk_ptr,
        a_ptr,
        c_ptr,
        bm_ptr,
        do_ptr,
        u_ptr,
        w_ptr,
        ws_ptr,
        NT,
        T,
        H,
        L,
        N,
        DK,
        DV,
        BL: tl.constexpr,
        BH: tl.constexpr,
        BK: tl.constexpr,
        BV: tl.constexpr,
        VLOOP: tl.constexpr,
        HALO: tl.constexpr,
        MOMENTUM: tl.constexpr,
        L2: tl.constexpr,
        LOWP: tl.constexpr,
    ):
        # parallel: the dO terms of the reverse recurrence that need no dM:
        # W = Q^T diag(A) dO, W_S = Q^T diag(Bm) dO, U = -P^T dO (the dO part of dE); one
        # program per (chunk, Dv column block), or (VLOOP) one per chunk looping over the Dv
        # blocks with P^T computed once
        cj = tl.program_id(0).to(tl.int64)
        cd = a_ptr.dtype.element_ty
        dd = q_ptr.dtype.element_ty if LOWP else cd
        ol = tl.arange(0, BL)
        ml = ol < L
        tq = (cj % NT).to(tl.int32) * L + ol
        if VLOOP:
            ok, mk, qq, aa, bm = _loop_head(q_ptr, a_ptr, bm_ptr, cj, NT, T, H, L, DK, tq, ol,
                                            ml, cd, dd, BK, MOMENTUM)
            pt = _u_pt(qq, k_ptr, hk_ptr, c_ptr, cj, NT, T, H, L, N, DK, N - L, L, ol, ml, ok,
                       mk, cd, BL, False)
            ph = pt
            if HALO:
                ph = _u_pt(qq, k_ptr, hk_ptr, c_ptr, cj, NT, T, H, L, N, DK, 0, N - L, ol, ml,
                           ok, mk, cd, BH, True)
            for i_b in range(tl.cdiv(DV, BV)):
                ok, mk, ov, mv, mkv, kv_off = _kv_block(i_b, DK, DV, BK, BV)
                cs_off = cj * DK * DV + kv_off
                do = _tok_load(do_ptr, do_ptr, cj, NT, T, H, 0, tq, ml, ov, mv, DV,
                               False).to(cd)
                w = tl.dot(tl.trans(qq), (aa[:, None] * do).to(dd), input_precision="ieee")
                tl.store(w_ptr + cs_off, w.to(w_ptr.dtype.element_ty), mask=mkv)
                if MOMENTUM:
                    ws = tl.dot(tl.trans(qq), (bm[:, None] * do).to(dd),
                                input_precision="ieee")
                    tl.store(ws_ptr + cs_off, ws.to(ws_ptr.dtype.element_ty), mask=mkv)
                _u_store(pt, do, u_ptr, cj, NT, L, N, DV, N - L, L, ov, mv, BL)
                if HALO:
                    _u_store(ph, do, u_ptr, cj, NT, L, N, DV, 0, N - L, ov, mv, BH)
        else:
            i_v = tl.program_id(1).to(tl.int64)
            ok, mk, ov, mv, mkv, kv_off = _kv_block(i_v, DK, DV, BK, BV)
            cs_off = cj * DK * DV + kv_off
            qq = _tok_load(q_ptr, q_ptr, cj, NT, T, H, 0, tq, ml, ok, mk, DK, False).to(dd)
            do = _tok_load(do_ptr, do_ptr, cj, NT, T, H, 0, tq, ml, ov, mv, DV, False).to(cd)
            aa = tl.load(a_ptr + cj * L + ol, mask=ml, other=0.0).to(cd)
            w = tl.dot(tl.trans(qq), (aa[:, None] * do).to(dd), input_precision="ieee")
            tl.store(w_ptr + cs_off, w.to(w_ptr.dtype.element_ty), mask=mkv)
            if MOMENTUM:
                bm = tl.load(bm_ptr + cj * L + ol, mask=ml, other=0.0).to(cd)
                ws = tl.dot(tl.trans(qq), (bm[:, None] * do).to(dd), input_precision="ieee")
                tl.store(ws_ptr + cs_off, ws.to(ws_ptr.dtype.element_ty), mask=mkv)
            _u_part(qq, do, k_ptr, hk_ptr, c_ptr, u_ptr, cj, NT, T, H, L, N, DK, DV, N - L, L,
                    ol, ml, ok, mk, ov, mv, BL, False)
            if HALO:
                _u_part(qq, do, k_ptr, hk_ptr, c_ptr, u_ptr, cj, NT, T, H, L, N, DK, DV, 0,
                        N - L, ol, ml, ok, mk, ov, mv, BH, True)

    @triton.jit
    def _de_tile(k_ptr, hk_ptr, ce_ptr, cse_ptr, u_ptr, cj, NT, T, H, L, N, DK, DV, R0, NR,
                 dm, ds, ok, mk, ov, mv, BR: tl.constexpr, HT: tl.constexpr,
                 MOMENTUM: tl.constexpr, LOWP: tl.constexpr):
        # one tile's rows, tokens, keys, dE_r = U_r - c_end ∘ K_r dM_end
        # [- cS_end ∘ K_r dS_end] and K_r dM_end (K_r dS_end)
        cd = dm.dtype
        dd = k_ptr.dtype.element_ty if LOWP else cd
        r, mr, t = _tok_rows(cj, NT, L, N, R0, NR, BR)
        kk = _tok_load(k_ptr, hk_ptr, cj, NT, T, H, N - L, t, mr, ok, mk, DK, HT).to(dd)
        ce = tl.load(ce_ptr + cj * N + r, mask=mr, other=0.0).to(cd)
        de = _rows_load(u_ptr, cj, N, r, mr, ov, mv, DV).to(cd)
        kdm = tl.dot(kk, dm.to(dd), input_precision="ieee")
        de -= ce[:, None] * kdm
        kds = kdm
        if MOMENTUM:
            cse = tl.load(cse_ptr + cj * N + r, mask=mr, other=0.0).to(cd)
            kds = tl.dot(kk, ds.to(dd), input_precision="ieee")
            de -= cse[:, None] * kds
        return r, mr, t, kk, de, kdm, kds

    @triton.jit
    def _dh_part(k_ptr, hk_ptr, ce_ptr, cse_ptr, u_ptr, cj, NT, T, H, L, N, DK, DV, R0, NR,
                 dm, ds, ok, mk, ov, mv, BR: tl.constexpr, HT: tl.constexpr,
                 MOMENTUM: tl.constexpr, LOWP: tl.constexpr):
        # one tile's K_r^T dE_r
        r, mr, t, kk, de, kdm, kds = _de_tile(k_ptr, hk_ptr, ce_ptr, cse_ptr, u_ptr, cj, NT, T,
                                              H, L, N, DK, DV, R0, NR, dm, ds, ok, mk, ov, mv,
                                              BR, HT, MOMENTUM, LOWP)
        return tl.dot(tl.trans(kk), de.to(kk.dtype), input_precision="ieee")

    @triton.jit
    def _omega_bwd_dh(
        k_ptr,
        hk_ptr,
        ae_ptr,
        be_ptr,
        te_ptr,
        ce_ptr,
        cse_ptr,
        u_ptr,
        w_ptr,
        ws_ptr,
        dmf_ptr,
        dsf_ptr,
        dan_ptr,
        dme_ptr,
        dse_ptr,
        dm0_ptr,
        ds0_ptr,
        NT,
        T,
        H,
        L,
        N,
        DK,
        DV,
        DMI,
        NBH,
        BL: tl.constexpr,
        BH: tl.constexpr,
        BK: tl.constexpr,
        BV: tl.constexpr,
        HALO: tl.constexpr,
        MOMENTUM: tl.constexpr,
        L2: tl.constexpr,
        LOWP: tl.constexpr,
    ):
        # sequential reverse over chunks; dM (dS) block in registers (NBH: an autotune key
        # only, not read). Writes every chunk's
        # dM_end (dS_end) and dM_0 (dS_0). DMI = 0: the final states and the anchor have no
        # cotangent (their pointers are stand-ins, never read): dM starts at zero.
        i_bh = tl.program_id(0).to(tl.int64)
        i_v = tl.program_id(1).to(tl.int64)
        cd = ae_ptr.dtype.element_ty
        ok, mk, ov, mv, mkv, kv_off = _kv_block(i_v, DK, DV, BK, BV)
        st_off = i_bh * DK * DV + kv_off
        mkv_in = mkv & ((ok[:, None] * 0 + DMI) != 0)
        dm, ds = _state_pair(dmf_ptr, dsf_ptr, st_off, mkv_in, cd, MOMENTUM)
        for jj in range(NT):
            j = NT - 1 - jj
            cj = i_bh * NT + j
            cs_off = cj * DK * DV + kv_off
            tl.store(dme_ptr + cs_off, dm.to(dme_ptr.dtype.element_ty), mask=mkv)
            ae = tl.load(ae_ptr + cj).to(cd)
            dms = ae * dm + tl.load(w_ptr + cs_off, mask=mkv, other=0.0).to(cd)
            if MOMENTUM:
                tl.store(dse_ptr + cs_off, ds.to(dse_ptr.dtype.element_ty), mask=mkv)
                be = tl.load(be_ptr + cj).to(cd)
                te = tl.load(te_ptr + cj).to(cd)
                dss = be * dm + te * ds + tl.load(ws_ptr + cs_off, mask=mkv, other=0.0).to(cd)
            if L2:
                dms += _dh_part(k_ptr, hk_ptr, ce_ptr, cse_ptr, u_ptr, cj, NT, T, H, L, N, DK,
                                DV, N - L, L, dm, ds, ok, mk, ov, mv, BL, False, MOMENTUM,
                                LOWP)
                if HALO:
                    dms += _dh_part(k_ptr, hk_ptr, ce_ptr, cse_ptr, u_ptr, cj, NT, T, H, L, N,
                                    DK, DV, 0, N - L, dm, ds, ok, mk, ov, mv, BH, True,
                                    MOMENTUM, LOWP)
            if MOMENTUM:
                ds = dss
            # the anchor output is the start state of the last chunk
            last = (ok[:, None] * 0 + j) == NT - 1
            dan = tl.load(dan_ptr + st_off, mask=mkv_in & last, other=0.0).to(cd)
            dm = dms + dan
        tl.store(dm0_ptr + st_off, dm, mask=mkv)
        if MOMENTUM:
            tl.store(ds0_ptr + st_off, ds, mask=mkv)

    @triton.jit
    def _dv_part(k_ptr, v_ptr, hk_ptr, hv_ptr, ce_ptr, cse_ptr, u_ptr, e_ptr, dv_ptr, hdv_ptr,
                 dce_ptr, dcse_ptr, cj, pv, NT, T, H, L, N, DK, DV, R0, NR, ms, dm, ds, ok, mk,
                 ov, mv, BR: tl.constexpr, HT: tl.constexpr, MOMENTUM: tl.constexpr,
                 L2: tl.constexpr, LOWP: tl.constexpr):
        # one tile's dV_r = -dE_r (own rows: dV itself; halo rows: the halo buffer), (l2)
        # E_r = K_r M_s - V_r, and this Dv block's share of dc_end_r = -<E_r, K_r dM_end>
        # (dcS_end_r = -<E_r, K_r dS_end>), partial row pv
        r, mr, t, kk, de, kdm, kds = _de_tile(k_ptr, hk_ptr, ce_ptr, cse_ptr, u_ptr, cj, NT, T,
                                              H, L, N, DK, DV, R0, NR, dm, ds, ok, mk, ov, mv,
                                              BR, HT, MOMENTUM, LOWP)
        if HT:
            _rows_store(hdv_ptr, cj, N - L, r, mr, ov, mv, DV, -de)
        else:
            _tok_store(dv_ptr, cj, NT, T, H, t, mr, ov, mv, DV, -de)
        vv = _tok_load(v_ptr, hv_ptr, cj, NT, T, H, N - L, t, mr, ov, mv, DV, HT).to(dm.dtype)
        if L2:
            e = tl.dot(kk, ms.to(kk.dtype), input_precision="ieee") - vv
            _rows_store(e_ptr, cj, N, r, mr, ov, mv, DV, e)
        else:
            e = -vv
        tl.store(dce_ptr + pv * N + r, -tl.sum(e * kdm, axis=1), mask=mr)
        if MOMENTUM:
            tl.store(dcse_ptr + pv * N + r, -tl.sum(e * kds, axis=1), mask=mr)

    @triton.jit
    def _omega_bwd_dv(
        k_ptr,
        v_ptr,
        hk_ptr,
        hv_ptr,
        ce_ptr,
        cse_ptr,
        ms_ptr,
        dme_ptr,
        dse_ptr,
        u_ptr,
        e_ptr,
        dv_ptr,
        hdv_ptr,
        dce_ptr,
        dcse_ptr,
        NC,
        NT,
        T,
        H,
        L,
        N,
        DK,
        DV,
        BL: tl.constexpr,
        BH: tl.constexpr,
        BK: tl.constexpr,
        BV: tl.constexpr,
        HALO: tl.constexpr,
        MOMENTUM: tl.constexpr,
        L2: tl.constexpr,
        LOWP: tl.constexpr,
    ):
        # parallel: one program per (chunk, Dv column block):
        # dE = U - c_end ∘ K_I dM_end [- cS_end ∘ K_I dS_end] -> dV_I = -dE, (l2)
        # E = K_I M_s - V_I for _omega_bwd_dqk, and the Dv block's partials of
        # dc_end = -<E, K_I dM_end> (dcS_end) per window row (summed in torch)
        cj = tl.program_id(0).to(tl.int64)
        i_v = tl.program_id(1).to(tl.int64)
        pv = i_v * NC + cj  # row in the per-Dv-block partials
        cd = ce_ptr.dtype.element_ty
        ok, mk, ov, mv, mkv, kv_off = _kv_block(i_v, DK, DV, BK, BV)
        cs_off = cj * DK * DV + kv_off
        dm, ds = _state_pair(dme_ptr, dse_ptr, cs_off, mkv, cd, MOMENTUM)
        ms = dm
        if L2:
            ms = tl.load(ms_ptr + cs_off, mask=mkv, other=0.0).to(cd)
        _dv_part(k_ptr, v_ptr, hk_ptr, hv_ptr, ce_ptr, cse_ptr, u_ptr, e_ptr, dv_ptr, hdv_ptr,
                 dce_ptr, dcse_ptr, cj, pv, NT, T, H, L, N, DK, DV, N - L, L, ms, dm, ds, ok,
                 mk, ov, mv, BL, False, MOMENTUM, L2, LOWP)
        if HALO:
            _dv_part(k_ptr, v_ptr, hk_ptr, hv_ptr, ce_ptr, cse_ptr, u_ptr, e_ptr, dv_ptr,
                     hdv_ptr, dce_ptr, dcse_ptr, cj, pv, NT, T, H, L, N, DK, DV, 0, N - L, ms,
                     dm, ds, ok, mk, ov, mv, BH, True, MOMENTUM, L2, LOWP)

    @triton.jit
    def _dqk_loop(v_ptr, hv_ptr, e_ptr, dv_ptr, hdv_ptr, cj, NT, T, H, L, N, DV, R0, NR, ce,
                  cse, do, ms, dm, ds, ov, mv, dp, dk, BR: tl.constexpr, HT: tl.constexpr,
                  MOMENTUM: tl.constexpr, L2: tl.constexpr):
        # one tile's share of one Dv block: dP_r, dK_r accumulators (dc_end, dcS_end come
        # from _omega_bwd_dv, which has K_r dM_end already)
        cd = dm.dtype
        dd = do.dtype
        r, mr, t = _tok_rows(cj, NT, L, N, R0, NR, BR)
        if L2:
            e = _rows_load(e_ptr, cj, N, r, mr, ov, mv, DV).to(cd)
        else:
            e = -_tok_load(v_ptr, hv_ptr, cj, NT, T, H, N - L, t, mr, ov, mv, DV, HT).to(cd)
        dp -= tl.dot(do, tl.trans(e).to(dd), input_precision="ieee")
        dk -= tl.dot((ce[:, None] * e).to(dd), tl.trans(dm).to(dd), input_precision="ieee")
        if L2:  # dE = -dV_r (this chunk's share: own rows in dV, halo rows in the buffer)
            if HT:
                de = -_rows_load(hdv_ptr, cj, N - L, r, mr, ov, mv, DV).to(cd)
            else:
                de = -_tok_load(dv_ptr, dv_ptr, cj, NT, T, H, 0, t, mr, ov, mv, DV,
                                False).to(cd)
            dk += tl.dot(de.to(dd), tl.trans(ms).to(dd), input_precision="ieee")
        if MOMENTUM:
            dk -= tl.dot((cse[:, None] * e).to(dd), tl.trans(ds).to(dd), input_precision="ieee")
        return dp, dk

    @triton.jit
    def _dqk_end(qq, kk, dp, dk, c_ptr, dk_ptr, hdk_ptr, dc_ptr, cj, pj, NT, T, H, L, N, DK,
                 R0, NR, ol, ml, ok, mk, BR: tl.constexpr, HT: tl.constexpr):
        # one tile after the Dv loop: stores dK_r (own rows: dK itself; halo rows: the halo
        # buffer) and dC[:, r] (Dk-block partial); returns its dQK_r K_r share of dQ
        cd = dp.dtype
        dd = qq.dtype
        r, mr, t = _tok_rows(cj, NT, L, N, R0, NR, BR)
        cc = _rows_load(c_ptr, cj, L, ol, ml, r, mr, N).to(cd)
        dqk = cc * dp
        dk += tl.dot(tl.trans(dqk).to(dd), qq, input_precision="ieee")
        if HT:
            _rows_store(hdk_ptr, cj, N - L, r, mr, ok, mk, DK, dk)
        else:
            _tok_store(dk_ptr, cj, NT, T, H, t, mr, ok, mk, DK, dk)
        qk = tl.dot(qq, tl.trans(kk), input_precision="ieee")
        _rows_store(dc_ptr, pj, L, ol, ml, r, mr, N, dp * qk)
        return tl.dot(dqk.to(dd), kk, input_precision="ieee")

    @triton.jit
    def _omega_bwd_dqk(
        q_ptr,
        k_ptr,
        v_ptr,
        hk_ptr,
        hv_ptr,
        a_ptr,
        c_ptr,
        bm_ptr,
        ce_ptr,
        cse_ptr,
        ms_ptr,
        ss_ptr,
        dme_ptr,
        dse_ptr,
        do_ptr,
        e_ptr,
        dv_ptr,
        hdv_ptr,
        dq_ptr,
        dk_ptr,
        hdk_ptr,
        da_ptr,
        dc_ptr,
        dbm_ptr,
        dae_ptr,
        dbe_ptr,
        dte_ptr,
        NC,
        NT,
        T,
        H,
        L,
        N,
        DK,
        DV,
        BL: tl.constexpr,
        BH: tl.constexpr,
        BK: tl.constexpr,
        BV: tl.constexpr,
        HALO: tl.constexpr,
        MOMENTUM: tl.constexpr,
        L2: tl.constexpr,
        LOWP: tl.constexpr,
    ):
        # parallel: one program per (chunk, Dk block of BK), looping over Dv in blocks of BV
        # with the Dv-summed products in fp32 accumulators (dP, dO M_s^T, dO S_s^T, dK_I) per
        # row tile: dQ and dK_I are written whole; the terms that also sum over Dk (dC, dA,
        # dBm and the chunk-end gate gradients) per Dk block, summed in torch.
        cj = tl.program_id(0).to(tl.int64)  # chunk index in [BH * NT] (NC of them)
        i_k = tl.program_id(1).to(tl.int64)
        pj = i_k * NC + cj  # chunk index in the per-Dk-block partials
        cd = a_ptr.dtype.element_ty
        dd = q_ptr.dtype.element_ty if LOWP else cd
        ol = tl.arange(0, BL)
        ok = i_k * BK + tl.arange(0, BK)
        ml = ol < L
        mk = ok < DK
        tq = (cj % NT).to(tl.int32) * L + ol
        r_o, mr_o, t_o = _tok_rows(cj, NT, L, N, N - L, L, BL)
        kk_o = _tok_load(k_ptr, hk_ptr, cj, NT, T, H, N - L, t_o, mr_o, ok, mk, DK,
                         False).to(dd)
        ce_o = tl.load(ce_ptr + cj * N + r_o, mask=mr_o, other=0.0).to(cd)
        cse_o = ce_o
        if MOMENTUM:
            cse_o = tl.load(cse_ptr + cj * N + r_o, mask=mr_o, other=0.0).to(cd)
        dp_o = tl.zeros([BL, BL], dtype=cd)
        dk_o = tl.zeros([BL, BK], dtype=cd)
        if HALO:
            r_h, mr_h, t_h = _tok_rows(cj, NT, L, N, 0, N - L, BH)
            kk_h = _tok_load(k_ptr, hk_ptr, cj, NT, T, H, N - L, t_h, mr_h, ok, mk, DK,
                             True).to(dd)
            ce_h = tl.load(ce_ptr + cj * N + r_h, mask=mr_h, other=0.0).to(cd)
            cse_h = ce_h
            if MOMENTUM:
                cse_h = tl.load(cse_ptr + cj * N + r_h, mask=mr_h, other=0.0).to(cd)
            dp_h = tl.zeros([BL, BH], dtype=cd)
            dk_h = tl.zeros([BH, BK], dtype=cd)
        tq_acc = tl.zeros([BL, BK], dtype=cd)  # dO M_s^T
        ts = tl.zeros([BL, BK], dtype=cd)  # dO S_s^T
        dae = tl.zeros([BK], dtype=cd)
        dbe = tl.zeros([BK], dtype=cd)
        dte = tl.zeros([BK], dtype=cd)
        for i_v in range(0, tl.cdiv(DV, BV)):
            ov = i_v * BV + tl.arange(0, BV)
            mv = ov < DV
            mkv = mk[:, None] & mv[None, :]
            st_off = cj * DK * DV + ok[:, None] * DV + ov[None, :]
            do = _tok_load(do_ptr, do_ptr, cj, NT, T, H, 0, tq, ml, ov, mv, DV, False).to(dd)
            ms = tl.load(ms_ptr + st_off, mask=mkv, other=0.0).to(cd)
            dm = tl.load(dme_ptr + st_off, mask=mkv, other=0.0).to(cd)
            tq_acc += tl.dot(do, tl.trans(ms).to(dd), input_precision="ieee")
            dae += tl.sum(dm * ms, axis=1)
            ds = dm
            if MOMENTUM:
                ss = tl.load(ss_ptr + st_off, mask=mkv, other=0.0).to(cd)
                ds = tl.load(dse_ptr + st_off, mask=mkv, other=0.0).to(cd)
                ts += tl.dot(do, tl.trans(ss).to(dd), input_precision="ieee")
                dbe += tl.sum(dm * ss, axis=1)
                dte += tl.sum(ds * ss, axis=1)
            dp_o, dk_o = _dqk_loop(
                v_ptr, hv_ptr, e_ptr, dv_ptr, hdv_ptr, cj, NT, T, H, L, N, DV, N - L, L, ce_o,
                cse_o, do, ms, dm, ds, ov, mv, dp_o, dk_o, BL, False, MOMENTUM, L2)
            if HALO:
                dp_h, dk_h = _dqk_loop(
                    v_ptr, hv_ptr, e_ptr, dv_ptr, hdv_ptr, cj, NT, T, H, L, N, DV, 0, N - L,
                    ce_h, cse_h, do, ms, dm, ds, ov, mv, dp_h, dk_h, BH, True, MOMENTUM,
                    L2)
        qq = _tok_load(q_ptr, q_ptr, cj, NT, T, H, 0, tq, ml, ok, mk, DK, False).to(dd)
        aa = tl.load(a_ptr + cj * L + ol, mask=ml, other=0.0).to(cd)
        dq = aa[:, None] * tq_acc
        dq += _dqk_end(qq, kk_o, dp_o, dk_o, c_ptr, dk_ptr, hdk_ptr, dc_ptr, cj, pj, NT, T, H,
                       L, N, DK, N - L, L, ol, ml, ok, mk, BL, False)
        if HALO:
            dq += _dqk_end(qq, kk_h, dp_h, dk_h, c_ptr, dk_ptr, hdk_ptr, dc_ptr, cj, pj, NT, T,
                           H, L, N, DK, 0, N - L, ol, ml, ok, mk, BH, True)
        qf = qq.to(cd)
        if MOMENTUM:
            bm = tl.load(bm_ptr + cj * L + ol, mask=ml, other=0.0).to(cd)
            dq += bm[:, None] * ts
            tl.store(dbm_ptr + pj * L + ol, tl.sum(qf * ts, axis=1), mask=ml)
            tl.store(dbe_ptr + pj, tl.sum(dbe))
            tl.store(dte_ptr + pj, tl.sum(dte))
        _tok_store(dq_ptr, cj, NT, T, H, tq, ml, ok, mk, DK, dq)
        tl.store(da_ptr + pj * L + ol, tl.sum(qf * tq_acc, axis=1), mask=ml)
        tl.store(dae_ptr + pj, tl.sum(dae))

    @triton.jit
    def _lin(g1, x1, g2, x2):
        # combine of the first-order linear recurrence y_t = g_t y_{t-1} + x_t
        return g1 * g2, g2 * x1 + x2

    # The gd coefficient kernels: _coef_fwd reads the gates alpha, eta, gamma in the
    # caller's token-major [B, T, H] layout (any float dtype; computed in the dtype of the C
    # buffer, cd) and the halo gammas [B*H, HL] before the sequence; tokens >= T read as
    # alpha = 1, eta = gamma = 0 (the padded last chunk), as their torch twin _gate_blocks
    # pads them. _coef_bwd reads the padded per-chunk copy _coef_fwd writes and writes the
    # gate gradients token-major.

    @triton.jit
    def _coef_index(NT, T, H, L, N, BL: tl.constexpr, BN: tl.constexpr):
        # this program's chunk cj, its (batch*head) i_bh, the offset of that (batch, head) in
        # a [B, T, H] gate, the chunk's first token t0, the row of its last real token, its
        # token rows i and window rows j with their masks
        cj = tl.program_id(0).to(tl.int64)
        i_bh = cj // NT
        gbase = (i_bh // H) * T * H + i_bh % H
        t0 = (cj % NT).to(tl.int32) * L
        last = tl.minimum(T - 1 - t0, L - 1)
        i = tl.arange(0, BL)
        j = tl.arange(0, BN)
        return cj, i_bh, gbase, t0, last, i, j, i < L, j < N

    @triton.jit
    def _coef_band(t0, T, L, N, SHIFT: tl.constexpr, BL: tl.constexpr, BN: tl.constexpr):
        # Band[t, r] = [t <= r <= t + c - 1] for the chunk's real tokens t = row - SHIFT
        # (window rows r, halo first: token t's own row is t + c - 1)
        t = tl.arange(0, BL) - SHIFT
        j = tl.arange(0, BN)
        ok = (t >= 0) & (t < L) & (t0 + t < T)
        return (j[None, :] >= t[:, None]) & (j[None, :] <= t[:, None] + N - L) & ok[:, None]

    @triton.jit
    def _gate_pair(al_ptr, et_ptr, off, ok, cd: tl.constexpr):
        # the gates a, eta at offsets off (1 and 0 where not ok)
        a = tl.load(al_ptr + off, mask=ok, other=1.0).to(cd)
        return a, tl.load(et_ptr + off, mask=ok, other=0.0).to(cd)

    @triton.jit
    def _coef_x(eta, t0, T, L, N, SHIFT: tl.constexpr, BL: tl.constexpr, BN: tl.constexpr):
        # x = diag(eta) Band (rows shifted by SHIFT like the gates)
        return tl.where(_coef_band(t0, T, L, N, SHIFT, BL, BN), eta[:, None], 0.0)

    @triton.jit
    def _coef_scan(a, x):
        # S[t, r] = a_t S[t-1, r] + x[t, r] down the rows: S = Dec_a x (no division: exact
        # for tiny or zero gates)
        _, s = tl.associative_scan((a[:, None] + 0.0 * x, x), 0, _lin)
        return s

    @triton.jit
    def _coef_gamma(ga_ptr, hg_ptr, i_bh, gbase, t0, T, H, L, N, j, mj, cd: tl.constexpr,
                    HALO: tl.constexpr):
        # gamma of window row j: token t0 - HL + j (tokens < 0: the halo gammas)
        t = t0 - (N - L) + j
        g = tl.load(ga_ptr + gbase + t * H, mask=mj & (t >= 0) & (t < T), other=0.0).to(cd)
        if HALO:
            g += tl.load(hg_ptr + i_bh * (N - L) + (N - L) + t, mask=mj & (t < 0),
                         other=0.0).to(cd)
        return g

    @triton.jit
    def _coef_fwd(al_ptr, et_ptr, ga_ptr, hg_ptr, c_ptr, cum_ptr, ce_ptr, ae_ptr, af_ptr,
                  ef_ptr, gf_ptr, NT, T, H, L, N, BL: tl.constexpr, BN: tl.constexpr,
                  HALO: tl.constexpr):
        # gd, one program per chunk: C = Dec_a diag(eta) W [L, N] with W[t, r] = gamma_r
        # [r in window(t)] (c = 1: W = diag(gamma)), A = cumprod(a), and their values at
        # the chunk's last real token (ce = C[last, :], ae = A[last]); the chunk's padded
        # gates af, ef [L] and window gammas gf [N] for _coef_bwd (contiguous per chunk:
        # strided token-major loads there cost registers, spilling at c = 16)
        cj, i_bh, gbase, t0, last, i, j, mi, mj = _coef_index(NT, T, H, L, N, BL, BN)
        cd = c_ptr.dtype.element_ty
        a, eta = _gate_pair(al_ptr, et_ptr, gbase + (t0 + i) * H, mi & (t0 + i < T), cd)
        sm = _coef_scan(a, _coef_x(eta, t0, T, L, N, 0, BL, BN))
        gam = _coef_gamma(ga_ptr, hg_ptr, i_bh, gbase, t0, T, H, L, N, j, mj, cd, HALO)
        tl.store(af_ptr + cj * L + i, a, mask=mi)
        tl.store(ef_ptr + cj * L + i, eta, mask=mi)
        tl.store(gf_ptr + cj * N + j, gam, mask=mj)
        cm = sm * gam[None, :]
        _rows_store(c_ptr, cj, L, i, mi, j, mj, N, cm)
        cum = tl.cumprod(a, axis=0)
        tl.store(cum_ptr + cj * L + i, cum, mask=mi)
        tl.store(ce_ptr + cj * N + j, tl.sum(tl.where(i[:, None] == last, cm, 0.0), axis=0),
                 mask=mj)
        tl.store(ae_ptr + cj, tl.sum(tl.where(i == last, cum, 0.0)))

    @triton.jit
    def _coef_bwd(af_ptr, ef_ptr, gf_ptr, dc_ptr, dcum_ptr, dce_ptr, dae_ptr, dal_ptr,
                  det_ptr, dga_ptr, hdg_ptr, NT, T, H, L, N, BL: tl.constexpr,
                  BN: tl.constexpr, HALO: tl.constexpr):
        # the adjoint of _coef_fwd's scans, back to a, eta and the window gammas without
        # division by a gate. With dC (+ dce on row last), dA (+ dae at last) and
        # dS = dC diag(gamma): d(gamma)_r = sum_t dC[t, r] S[t, r]; the reverse scans
        # lam_t = dS_t + a_{t+1} lam_{t+1} and mu_t = dA_t + a_{t+1} mu_{t+1} give
        # d(eta)_t = sum_r lam[t, r] Band[t, r] and
        # d(a)_t = sum_r lam[t, r] S[t-1, r] + mu_t A_{t-1} (S[t-1], A_{t-1}: the scans of
        # the gates shifted by one token; S itself is a_t S[t-1] + x_t, no second scan).
        # d(gamma) of the own rows goes to the token-major dga, of the halo rows (HALO) to
        # hdg [B*H, NT, HL] (the caller adds them into the tokens they belong to).
        cj, i_bh, gbase, t0, last, i, j, mi, mj = _coef_index(NT, T, H, L, N, BL, BN)
        cd = dcum_ptr.dtype.element_ty
        m2 = mi[:, None] & mj[None, :]
        # the chunk's padded gates as _coef_fwd wrote them (a_{t+1}: 0 past the chunk)
        ap, etp = _gate_pair(af_ptr, ef_ptr, cj * L + i - 1, (i >= 1) & mi, cd)
        sp = _coef_scan(ap, _coef_x(etp, t0, T, L, N, 1, BL, BN))
        a, eta = _gate_pair(af_ptr, ef_ptr, cj * L + i, mi, cd)
        an = tl.load(af_ptr + cj * L + i + 1, mask=i + 1 < L, other=0.0)
        gam = tl.load(gf_ptr + cj * N + j, mask=mj, other=0.0)
        tg = t0 - (N - L) + j  # the token of window row j
        dcm = _rows_load(dc_ptr, cj, L, i, mi, j, mj, N).to(cd)
        dce = tl.load(dce_ptr + cj * N + j, mask=mj, other=0.0).to(cd)
        dcm += tl.where((i[:, None] == last) & m2, dce[None, :], 0.0)
        dg = tl.sum(dcm * (a[:, None] * sp + _coef_x(eta, t0, T, L, N, 0, BL, BN)), axis=0)
        own = j >= N - L
        tl.store(dga_ptr + gbase + tg * H, dg.to(dga_ptr.dtype.element_ty),
                 mask=mj & own & (tg < T))
        if HALO:
            tl.store(hdg_ptr + cj * (N - L) + j, dg, mask=mj & (j < N - L))
        ds = dcm * gam[None, :]
        _, lam = tl.associative_scan((an[:, None] + 0.0 * ds, ds), 0, _lin, reverse=True)
        ok = mi & (t0 + i < T)
        toff = gbase + (t0 + i) * H
        band = _coef_band(t0, T, L, N, 0, BL, BN)
        tl.store(det_ptr + toff, tl.sum(tl.where(band, lam, 0.0), axis=1).to(
            det_ptr.dtype.element_ty), mask=ok)
        dcum = tl.load(dcum_ptr + cj * L + i, mask=mi, other=0.0).to(cd)
        dcum += tl.where(i == last, tl.load(dae_ptr + cj).to(cd), 0.0)
        _, mu = tl.associative_scan((an, dcum), 0, _lin, reverse=True)
        dal = tl.sum(lam * sp, axis=1) + mu * tl.cumprod(ap, axis=0)
        tl.store(dal_ptr + toff, dal.to(dal_ptr.dtype.element_ty), mask=ok)

    fns = {
        "coef_fwd": _coef_fwd,
        "coef_bwd": _coef_bwd,
        "states": _omega_states,
        "out": _omega_out,
        "bwd_local": _omega_bwd_local,
        "bwd_dh": _omega_bwd_dh,
        "bwd_dv": _omega_bwd_dv,
        "bwd_dqk": _omega_bwd_dqk,
    }
    kern: dict = {"interpret": mode == "interpret", **fns}
    if mode == "compiled":

        @functools.cache
        def tuned(name: str, cfgs: tuple[Cfg, ...]):
            cfg = [triton.Config(_meta(name, c), num_warps=c.warps) for c in cfgs]
            kw = dict(configs=cfg, key=_KEYS[name], reset_to_zero=_RESET.get(name))
            try:
                tune = triton.autotune(**kw, do_bench=_tune_bench)
            except TypeError:  # a Triton without do_bench: its default timing
                tune = triton.autotune(**kw)
            fn = tune(fns[name])
            _TUNERS[name, cfgs] = fn
            return fn

        kern["tuned"] = tuned
    return kern


def reset_warnings() -> None:
    """Forget which fallback reasons have warned and which cases failed to compile."""
    _WARNED.clear()
    _BROKEN.clear()


def interpret_ready() -> bool:
    """True when ``backend="triton"`` can run the kernels in the interpreter now."""
    if not _env_interpret():
        return False
    try:
        return _load_triton()[1] == "interpret"
    except Exception:
        return False


__all__ = ["NAN_FILL", "interpret_ready", "reset_warnings", "run", "stats"]
