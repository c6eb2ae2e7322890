"""Imported once by the grid's forkserver when a cell compiles its rule check (fedrec.optim.fused):
what every such cell would otherwise load afresh, ~5 s a cell on the 2-core machine (torch._dynamo's
and inductor's imports, inductor's probe of the CPU's vector instructions, which runs a compiler).
The forked cells inherit it; the compiled kernel itself still comes from inductor's on-disk cache."""

from __future__ import annotations

import logging

log = logging.getLogger("fedrec.experiments.warm")


def warm() -> None:
    """Import the compiler stack and run the CPU probe; a failure only costs the cells the time."""
    try:
        from fedrec.optim.fused import compiler_available

        if not compiler_available():  # imports torch._dynamo
            return
        import torch._inductor.codecache
        import torch._inductor.compile_fx  # noqa: F401
        from torch._inductor.cpu_vec_isa import valid_vec_isa_list

        valid_vec_isa_list()  # cached per process: a fork inherits the answer
    except Exception as err:  # the cells import and probe for themselves
        log.warning("compiler warm-up skipped (cells load it each): %s: %s", type(err).__name__, err)


warm()
