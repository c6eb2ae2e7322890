"""Imported once by the grid's forkserver: compiles fedrec's C loops (fedrec.native) there, so that every
forked cell inherits them loaded instead of compiling each for itself (~1 s a cell on the 2-core
machine, ~3 minutes over a 320-cell grid run two at a time). Where no C compiler works each loop's
``native()`` remembers None and the cells take the torch ways, as they would have."""

from __future__ import annotations

from fedrec.defenses import gram_native, weiszfeld_native
from fedrec.federation import forged_native, replay, scatter, validate_native
from fedrec.models import bpr_native, gather_native, negatives_native, touched_native
from fedrec.optim import adam_check, adam_pass, adam_step

LOOPS = (
    adam_check, adam_pass, adam_step, scatter, replay, validate_native, forged_native, gram_native, bpr_native,
    negatives_native, weiszfeld_native, touched_native, gather_native,
)  # fmt: skip


def preload() -> None:
    for module in LOOPS:
        module.native()


preload()
