"""The server's per-row rule check (state domain, the rule's equations, the gradient bound) as one
fused kernel (issue 14, item 2).

The server's check of an upload (paper 000 footnote 2; each rule's tolerances in its docstring) runs
~50 element-wise float64 operations over the ``[K, d]`` listed rows of a round; eager torch makes a
pass over memory for each, which was half of an ML-100K round (11 of 24 ms). ``torch.compile``
(inductor) fuses them into a few loops that read each operand once: 5x faster on that stage, the same
values (the checks are float64 bounds with a 2x slack, so a reordered float64 evaluation cannot move
an honest upload across its bound).

The verification is compiled, and the server's default pass (``DefaultPass``): Adam's zero-gradient
update of every row of the table (``m = b1 m``, ``v = b2 v``, theta moved by ``eta_t m / sqrt(v +
eps)``), six eager passes over the table every round (5 ms of a 14 ms Last.fm round), one compiled
loop (2x faster). m and v come out bit-identical; theta within a few roundings of the step ``s =
eta_t m / sqrt(v + eps)`` and one of theta (``2u |theta| + 6u |s|``): the compiled loop rounds each
operation once, where eager torch fuses ``theta - eta_t s`` into one multiply-add and its vectorised
square root is not always correctly rounded. That is the server's own arithmetic, not a definition:
the aggregate ``D + sum_i w_i (X_i - D)`` moves by at most that rounding (``(1 - sum w) |dD|``), within
the float tolerance of the dense reference. Every definition stays eager: the client step, the value
of an unlisted row (``default_rows``, equal to a zero-gradient client step bit for bit,
fedrec.optim.base), which the defenses' parameter space, the attacks and the reference use, and an
honest client's upload, computed the way the tolerances count.

Adam's float32 check and Adam's default pass run as C loops instead where a C compiler is found
(fedrec.optim.adam_check: the eager check's values; fedrec.optim.adam_pass: the compiled pass's values,
bit for bit), so an Adam run on the CPU needs inductor for neither.

``RuleCheck(rule, fused=True)`` compiles on first use and falls back to the eager function, with one
warning, where compilation is not possible (no C++ compiler, an inductor error). Batches of fewer
than two rows take the eager path: torch specialises sizes 0 and 1, and a client must not be able to
make the server recompile by sending one row.
"""

from __future__ import annotations

import functools
import shutil
import types
import warnings
from typing import Any

import torch

from fedrec.optim import adam_check, adam_pass
from fedrec.optim.base import Rows, Tensor

MIN_ROWS = 2


def compiler_available() -> bool:
    """Whether inductor can build CPU kernels here (a C++ compiler on PATH) and dynamo supports this
    Python: the condition for ``fused=True`` to take effect."""
    try:
        import torch._dynamo
    except Exception:  # pragma: no cover - a torch build without dynamo
        return False
    return bool(torch._dynamo.is_dynamo_supported()) and any(
        shutil.which(cc) for cc in ("c++", "g++", "clang++")
    )


def row_checks(
    rule: Any, tables: Rows, rows: Tensor, up: Rows, t: int, max_grad: float, verify: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per listed row (bool ``[K]`` each): a non-negative state below zero (``rule.nonnegative``), a
    violated rule equation (``rule.verify`` > 1; all false unless ``verify``), a reconstructed gradient
    coordinate that is not finite or exceeds ``max_grad``; and the reconstructed gradient itself
    (``[K, d]``, ``rule.reconstruct``'s value, in the upload's dtype), which the defense and the round
    record reuse instead of reconstructing it again. ``tables`` are the global tensors (``theta``
    and the rule's states), gathered at ``rows`` here so a compiled version never writes the gathered
    ``[K, d]`` copies to memory."""
    prev = {k: x.index_select(0, rows) for k, x in tables.items()}
    domain = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
    for name in rule.nonnegative:
        domain = domain | ~(up[name].amin(-1) >= 0)  # a negative (or NaN) entry; amin: no bool reduction
    if verify:
        g, viol = rule.reconstruct_and_verify(prev, up, t)
        broken = ~(viol <= 1)
    else:
        g, broken = rule.reconstruct(prev, up, t), torch.zeros_like(domain)
    too_big = ~(g.abs().amax(-1) <= max_grad)  # NaN and inf count as too big
    return domain, broken, too_big, g


class RuleCheck:
    """``row_checks`` of one rule, fused when asked and possible (see the module docstring). Adam's
    float32 checks on the CPU take one C loop (fedrec.optim.adam_check) whether or not ``fused`` is
    asked: the eager function's values, bit for bit, in a half to a fifth of inductor's time
    (``native=False`` turns it off, for the tests that compare the ways).

    ``mode``: ``"native"`` once the C loop ran, ``"compiled"`` once a compiled call succeeded,
    ``"eager"`` when not asked (or not yet called), ``"eager (reason)"`` when compilation was asked for
    and is not possible."""

    def __init__(self, rule: Any, fused: bool, native: bool = True) -> None:
        self.rule = rule
        self.fused = fused and compiler_available()
        self.native = native
        self.mode = "eager" if fused == self.fused else "eager (no C++ compiler or dynamo)"
        self._compiled = None

    def __call__(
        self, tables: Rows, rows: Tensor, up: Rows, t: int, max_grad: float, verify: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        args = (self.rule, tables, rows, up, t, float(max_grad), bool(verify))
        if self.native and adam_check.applies(self.rule, tables, rows, up):
            self.mode = "native"  # one C loop, the eager function's values (fedrec.optim.adam_check)
            return adam_check.adam_row_checks(*args)
        if not self.fused or rows.shape[0] < MIN_ROWS:
            return row_checks(*args)
        if self._compiled is None:
            # a code object of its own: dynamo caches compiled variants per code object (8 at most),
            # so RuleChecks sharing row_checks' would push each other out to silent eager runs
            own = types.FunctionType(row_checks.__code__.replace(), row_checks.__globals__, "row_checks")
            self._compiled = torch.compile(own, dynamic=True)
        try:
            # contiguous (a no-op for what receive builds): other strides would compile new variants
            up_c = {k: x.contiguous() for k, x in up.items()}
            # past dynamo's recompile limit a kernel would silently run eager: make that an error here
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                out = self._compiled(self.rule, tables, rows.contiguous(), up_c, *args[4:])
        except Exception as err:  # a compiler or inductor failure: the eager function is the same math
            self.fused, self.mode = False, f"eager ({type(err).__name__})"
            first = (str(err).splitlines() or [""])[0][:200]  # a bare assert has no message
            warnings.warn(
                f"fused rule check unavailable ({type(err).__name__}: {first}); using the eager path",
                RuntimeWarning,
                stacklevel=2,
            )
            return row_checks(*args)
        self.mode = "compiled"
        return out


class DefaultPass:
    """The server's default rows of the whole table, ``rule.default_rows(tables, t)``, compiled where the
    rule has a ``default_step(tables, eta_t)`` (Adam) and ``fused`` is asked and possible; else eager.

    The step size goes in as a 0-dim tensor, so one kernel serves every round. Shapes are static, each
    (shape, dtype, device) with a code object of its own: dynamo caches at most 8 variants per code
    object, and a process that runs many table shapes (tests, a notebook) must not push the pass past
    that into silent eager runs. ``mode`` as ``RuleCheck``'s. Adam's tables on the CPU take one C loop
    instead when fused is asked (fedrec.optim.adam_pass: the compiled kernel's values bit for bit,
    without its start-up; ``native=False`` turns it off, for the tests that compare the ways)."""

    def __init__(self, rule: Any, fused: bool, native: bool = True) -> None:
        self.rule = rule
        self.native = native
        self.fused = fused and hasattr(rule, "default_step") and compiler_available()
        if self.fused or not fused:
            self.mode = "eager"
        elif not hasattr(rule, "default_step"):
            self.mode = "eager (a copy or one pass: nothing to fuse)"
        else:
            self.mode = "eager (no C++ compiler or dynamo)"
        self._compiled: dict[tuple, Any] = {}

    def __call__(self, tables: Rows, t: int) -> Rows:
        if not self.fused:
            return self.rule.default_rows(tables, t)
        if self.native and adam_pass.applies(self.rule, tables):
            self.mode = "native"
            return adam_pass.adam_default_pass(self.rule, tables, self.rule.step_size(t))
        theta = tables["theta"]
        # a fill kernel, not a copy from host memory (which would be a host sync on a GPU)
        eta_t = torch.full((), self.rule.step_size(t), dtype=torch.float64, device=theta.device)
        key = tuple((k, tuple(x.shape), x.dtype, x.device) for k, x in sorted(tables.items()))
        try:
            if key not in self._compiled:
                step = type(self.rule).default_step
                own = types.FunctionType(step.__code__.replace(), step.__globals__, "default_step")
                self._compiled[key] = torch.compile(own, dynamic=False)
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                out = self._compiled[key](self.rule, tables, eta_t)
        except Exception as err:  # a compiler or inductor failure: the eager function is the same math
            self.fused, self.mode = False, f"eager ({type(err).__name__})"
            first = (str(err).splitlines() or [""])[0][:200]
            warnings.warn(
                f"fused default pass unavailable ({type(err).__name__}: {first}); using the eager path",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.rule.default_rows(tables, t)
        self.mode = "compiled"
        return out

    def with_terms(
        self, tables: Rows, t: int, idx: Tensor, owner: Tensor, w: Tensor, X: Rows, keep: Tensor | None = None
    ) -> Rows | None:
        """The pass and then the aggregation's terms ``D[idx[e]] += w[owner[e]] (X[e] - D[idx[e]])``
        (fedrec.federation.server) in one C loop, where this pass is the native one (Adam's float
        tables on the CPU, fused asked); None where it is not, and the caller scatters after ``__call__``.
        The same tables bit for bit either way (fedrec.optim.adam_pass). ``keep``: the owners whose
        terms count (bool per owner; None: all)."""
        if not (self.fused and self.native):
            return None
        # None where the C loop does not take these tables (adam_pass.applies) or uploads
        step = self.rule.step_size(t)
        out = adam_pass.adam_pass_with_terms(self.rule, tables, step, idx, owner, w, X, keep)
        if out is not None:
            self.mode = "native"
        return out


@functools.lru_cache(maxsize=64)
def default_pass(rule: Any, fused: bool) -> DefaultPass:
    """The one ``DefaultPass`` of ``rule`` (as ``rule_check``: one compilation a process)."""
    return DefaultPass(rule, fused)


@functools.lru_cache(maxsize=64)
def rule_check(rule: Any, fused: bool) -> RuleCheck:
    """The one ``RuleCheck`` of ``rule`` (rules are frozen dataclasses: equal rules share it), so a run
    compiles once and every server round reuses the kernel."""
    return RuleCheck(rule, fused)
