"""torch.compile for flmk's networks, with static shapes: training (``model.compile``) and inference
(``Landmarker.from_checkpoint(..., compile=...)``, ``flmk.predict compile=...``, ``flmk.bench``).

Every compiled function is traced with ``dynamic=False``: one graph per input shape. Shapes are kept few:
the training loader drops its last, smaller batch (``drop_last``); evaluation pads a smaller batch up to
the largest batch it has seen (:func:`pad_rows`, :func:`unpad`); the Landmarker pads a batch of ``n`` faces to
the next power of two up to its batch size (:func:`bucket`). With ``mode="reduce-overhead"`` inductor
records each graph as a CUDA graph (after a warm-up call or two) and replays it, one launch for the whole
network: the hourglass models are launch-bound at their papers' batch sizes. A CUDA graph's outputs live
in memory that its next replay overwrites, so callers that keep outputs across calls clone them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
BACKENDS = ("inductor", "eager", "aot_eager")  # eager / aot_eager: the wiring without code generation (CPU tests)


def compile_options(mode: str, backend: str = "inductor", option: str = "model.compile_mode") -> dict:
    """Keyword arguments of ``torch.compile`` / ``nn.Module.compile``; ``option`` names the setting in errors."""
    if mode not in MODES:
        raise ValueError(f"{option}={mode!r}: expected one of {', '.join(MODES)}")
    if backend not in BACKENDS:
        raise ValueError(f"{option.rpartition('.')[0] + '.' if '.' in option else ''}compile_backend={backend!r}: "
                         f"expected one of {', '.join(BACKENDS)}")
    if backend != "inductor":  # torch.compile takes a mode or a backend, not both
        return {"dynamic": False, "backend": backend}
    return {"dynamic": False, "mode": None if mode == "default" else mode}


def uses_cuda_graphs(mode: str, backend: str = "inductor") -> bool:
    return backend == "inductor" and mode == "reduce-overhead"


def compile_fn(fn: Callable, mode: str, backend: str = "inductor", option: str = "compile") -> Callable:
    return torch.compile(fn, **compile_options(mode, backend, option))


def bucket(n: int, cap: int) -> int:
    """The static batch size a batch of ``n`` is padded to: the next power of two, at most ``cap`` (n <= cap)."""
    if not 1 <= n <= cap:
        raise ValueError(f"a batch of {n} does not fit the static batch sizes 1..{cap}")
    return min(1 << (n - 1).bit_length(), cap)


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with its first dimension filled up to ``rows`` by repeating its last row (a valid input)."""
    n = x.shape[0]
    return x if n == rows else torch.cat([x, x[-1:].expand(rows - n, *x.shape[1:])])


def unpad(outputs: dict, n: int, rows: int, clone: bool = False) -> dict:
    """The first ``n`` rows of every per-sample output of a batch padded to ``rows``; ``clone`` copies them out
    of a CUDA graph's output memory."""
    def cut(v):
        if not torch.is_tensor(v):
            return v
        v = v[:n] if v.dim() and v.shape[0] == rows else v
        return v.clone() if clone else v

    return {k: cut(v) for k, v in outputs.items()} if n != rows or clone else outputs
