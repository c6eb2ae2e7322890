"""``validate``'s value checks as one C pass (fedrec.federation.validate_native) decide every upload as the
torch checks do: forged batches with NaN and infinities in any table, rows out of range, unsorted or
repeated, claims below 1 or above what an upload may claim, empty uploads, codes already set; other
dtypes keep the torch checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.federation.validate import VALUE_CODES, _value_checks, validate
from fedrec.federation.validate_native import native, value_checks
from fedrec.protocol import UploadBatch

pytestmark = pytest.mark.skipif(native() is None, reason="no C compiler for the validation pass")


def forged(seed: int, n: int, d: int, n_rows: int) -> UploadBatch:
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 5, (n,), generator=gen)
    ptr = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    K = int(ptr[-1])
    rows = torch.cat(
        [torch.zeros(0, dtype=torch.int64)]
        + [torch.randperm(n_rows, generator=gen)[: int(c)].sort().values for c in counts]
    )
    tables = {k: torch.randn(K, d, generator=gen) for k in ("theta", "m", "v")}
    for _ in range(int(torch.randint(0, 6, (), generator=gen))):  # a handful of forgeries
        if K == 0:
            break
        e, kind = int(torch.randint(K, (), generator=gen)), int(torch.randint(7, (), generator=gen))
        key = ("theta", "m", "v")[int(torch.randint(3, (), generator=gen))]
        if kind == 0:
            tables[key][e, int(torch.randint(d, (), generator=gen))] = float("nan")
        elif kind == 1:
            tables[key][e, -1] = float("-inf") if e % 2 else float("inf")
        elif kind == 2:
            rows[e] = -1 - e
        elif kind == 3:
            rows[e] = n_rows + e
        elif kind == 4 and e > 0:
            rows[e] = rows[e - 1]  # a repeat (or, across uploads, nothing wrong)
        elif kind == 5 and e > 0:
            rows[e] = rows[e - 1] - 1
        else:
            tables[key][e, 0] = 3e38  # large but finite: valid
    ne = torch.randint(-2, 8, (n,), generator=gen)
    return UploadBatch(torch.arange(n), ptr, rows, tables["theta"], {"m": tables["m"], "v": tables["v"]}, ne)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**20),
    n=st.integers(0, 9),
    d=st.sampled_from([1, 3, 16, 19]),
    preset=st.booleans(),
    n_rows=st.sampled_from([12, 13, 2**40]),
    max_examples=st.sampled_from([0, 3, 6, 2**62]),
    strided=st.booleans(),
)
def test_the_c_pass_decides_as_the_torch_checks(seed, n, d, preset, n_rows, max_examples, strided):
    up = forged(seed, n, d, n_rows=12)
    if strided:  # a table that is a strided view, as an attack may send
        up.theta = torch.cat([up.theta, up.theta], 1)[:, ::2]
    start = torch.zeros(n, dtype=torch.int64)
    if preset and n:
        start[0] = 99  # a code set earlier (receive, admit) stays
    want = start.clone()
    _value_checks(want, up, n_rows, max_examples)
    got = start.clone()
    tables = [up.theta, *up.state.values()]
    assert value_checks(got, up.ptr, up.rows, tables, up.n_examples, n_rows, max_examples, VALUE_CODES)
    assert torch.equal(got, want), (got, want)


def test_validate_takes_the_c_pass_where_it_applies(monkeypatch):
    """``validate`` (value checks, then the weight share) gives the torch checks' codes through the C
    pass: the torch checks do not run for float32 uploads on the CPU."""
    import fedrec.federation.validate as validate_mod

    up = forged(7, 9, 5, n_rows=12)
    start = torch.zeros(9, dtype=torch.int64)
    want = start.clone()
    _value_checks(want, up, 12, 6)
    want = validate_mod.weight_share(want, up.n_examples, 0.9, 5)

    def torch_checks(*a, **k):
        raise AssertionError("the torch checks ran")

    monkeypatch.setattr(validate_mod, "_value_checks", torch_checks)
    assert torch.equal(validate(up, n_rows=12, max_examples=6, codes=start), want)


def test_other_dtypes_and_broken_pointers_keep_the_torch_checks():
    up = forged(1, 4, 3, 12)
    code = torch.zeros(4, dtype=torch.int64)
    args = (up.ptr, up.rows)
    assert not value_checks(code, *args, [up.theta.double()] * 3, up.n_examples, 12, 6, VALUE_CODES)
    assert not value_checks(code, *args, [], up.n_examples, 12, 6, VALUE_CODES)
    bad_ptr = up.ptr.clone()
    bad_ptr[-1] += 1  # does not end at the number of rows
    tables = [up.theta, *up.state.values()]
    assert not value_checks(code, bad_ptr, up.rows, tables, up.n_examples, 12, 6, VALUE_CODES)
    assert torch.equal(code, torch.zeros(4, dtype=torch.int64))  # nothing written
