"""``torch.compile`` of a task's net (``--model.compile true``), called from ``Task.configure_model`` when a run fits.

- **The net, in place.** ``nn.Module.compile`` compiles the net's call and leaves the module as it was: its state
  dict keeps the plain parameter names (``torch.compile(net)`` would wrap it in an ``OptimizedModule`` whose names
  start with ``_orig_mod.``), so a checkpoint of a compiled run loads into an uncompiled model and back, and the
  export, ``zoo predict`` and the published weights see the same net. Its other methods (the tagger's ``loss`` and
  ``decode``, seq2seq's searches) stay eager: only ``net(...)`` is compiled.
- **During the fit only.** The net is compiled after the text tasks have built it from the data's vocabularies
  (``fit_to_data``) and after a frozen backbone is frozen, before the strategy moves and wraps the model; it is eager
  again when the fit ends, so what is exported, evaluated or predicted after the fit is the plain net. A copy of
  a compiled net (``copy.deepcopy``, pickling) is eager: ``nn.Module`` leaves the compiled call out of its state.
- **A platform without a compiler** (no C++ compiler for the CPU, no Triton for CUDA) is refused in one line
  saying to train with ``--model.compile false``, before the run starts where it can be seen, or at the first
  step where the compiler fails.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CompileError", "compile_net", "is_compiled", "uncompile_net"]

OFF = "train without it: --model.compile false"
BACKEND = "inductor"  # torch.compile's default; the tests' plumbing checks trace with "eager" (no code generation)


class CompileError(RuntimeError):
    """``torch.compile`` cannot compile the net on this platform."""


def _failures() -> tuple[type[BaseException], ...]:
    """The errors of a compiler that failed (inductor wraps its own and the C++ compiler's in the first)."""
    from torch._dynamo.exc import BackendCompilerFailed

    found = [BackendCompilerFailed]
    try:
        from torch._inductor.exc import CppCompileError

        found.append(CppCompileError)
    except ImportError:  # pragma: no cover - older torch
        pass
    return tuple(found)


def check_compiler(device_type: str) -> None:
    """Refuse, in one line, a device whose compiler is missing: inductor's C++ compiler for the CPU, Triton for
    CUDA. Checked where torch says how to; elsewhere the first step's failure says it (see ``_Compiled``)."""
    if device_type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:  # pragma: no cover - torch moved it: the first step tells
            return
        try:
            get_cpp_compiler()
        except Exception as e:  # noqa: BLE001 (InvalidCxxCompiler, or what a broken toolchain raises)
            found = _first_line(e)
            raise CompileError(f"torch.compile needs a C++ compiler on the CPU and found none ({found}): {OFF}") from e
    elif device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise CompileError(f"torch.compile needs Triton on CUDA (pip install triton), and it is missing: {OFF}")


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


class _Compiled:
    """The compiled call of a net (``nn.Module.__call__`` runs it when set): a compiler failure becomes one line
    naming the net and saying to train without compiling."""

    def __init__(self, net: nn.Module, name: str) -> None:
        self.call = torch.compile(net._call_impl, backend=BACKEND)
        self.name = name

    def __call__(self, *args, **kwargs):
        try:
            return self.call(*args, **kwargs)
        except _failures() as e:
            raise CompileError(f"torch.compile could not compile {self.name} ({_first_line(e)}): {OFF}") from e


def is_compiled(net: nn.Module | None) -> bool:
    return isinstance(getattr(net, "_compiled_call_impl", None), _Compiled)


def compile_net(net: nn.Module, name: str, device_type: str) -> None:
    """Compile ``net``'s call in place (``nn.Module.compile``'s route: the module and its state dict unchanged) for a
    run on ``device_type``; ``name`` (the arch) names it in errors. Compiling a compiled net does nothing."""
    if is_compiled(net):
        return
    if BACKEND == "inductor":
        check_compiler(device_type)
    net._compiled_call_impl = _Compiled(net, name)


def uncompile_net(net: nn.Module | None) -> None:
    """Make ``net`` eager again (what ``compile_net`` did, undone)."""
    if is_compiled(net):
        net._compiled_call_impl = None
