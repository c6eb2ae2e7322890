"""Server hardening: every upload is checked before it can touch the global state.

The checks run in the order of the server round (``fedrec.federation.pipeline.server_round``):

1. ``receive``: each message (an ``Upload`` or an ``UploadBatch``) is checked for types, layouts,
   shapes and dtypes (metadata only, O(1) per upload); a malformed one becomes an empty placeholder
   with reason ``shape`` (or ``client-id`` when its id is not an int64), so it can never crash a round.
2. ``admit``: exactly one upload per sampled client: the first upload that declares a sampled id
   fills that client's slot; a later one for the same id (``duplicate-client``) or one for an id that
   was not sampled (``client-id``) is refused and counted; a sampled client without an upload is
   ``missing``.
3. ``validate``: value checks on the batch with segment operations (no loop over clients).
4. ``check_rule``: what the optimizer rule allows: states no honest client can hold
   (``state-domain``), uploads that break the rule's equations (``rule-verify``, paper 000 footnote 2)
   and reconstructed gradients beyond ``max_grad`` (``magnitude``).
5. ``effective_examples`` and ``weight_share``: what a claimed ``n_examples`` can buy.

A rejected upload keeps its reason code (``fedrec.protocol.REASONS``) and weight 0, so the global state
is exactly what the accepted uploads give.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from fedrec.config import MIN_UPLOADS_FOR_SHARE, WEIGHTINGS
from fedrec.federation.validate_native import value_checks
from fedrec.optim.base import finite_rows
from fedrec.optim.fused import rule_check
from fedrec.protocol import REASONS, THETA_MAX, ServerState, Upload, UploadBatch

CODE = {name: i for i, name in enumerate(REASONS)}
INT64 = (-(2**63), 2**63 - 1)
# reasons after which an upload's rows cannot be trusted to index the table
STRUCTURAL = tuple(
    CODE[r]
    for r in (
        "shape", "row-out-of-range", "rows-unsorted-or-duplicated", "client-id", "missing",
        "no-reply", "node-error", "undecodable",
    )
)  # fmt: skip


def as_int64(x: object) -> int | None:
    """``x`` as a Python int when it is an integer (not a bool) that fits int64, else None."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        return None
    try:  # an int subclass can override __int__ / __index__: read the value int itself holds
        x = int.__index__(x) if isinstance(x, int) else int(x)
    except Exception:  # an Integral whose conversion raises is not an integer we can read
        return None
    return x if INT64[0] <= x <= INT64[1] else None


def tensor_error(name: str, x: object, device: torch.device) -> str:
    """Why ``x`` cannot be read as an ordinary tensor on ``device`` (or the CPU), or ""."""
    if type(x) not in (torch.Tensor, torch.nn.Parameter):  # a subclass can override every operation
        return f"{name} is a {type(x).__name__}, not a tensor"
    if x.layout != torch.strided:
        return f"{name} has layout {x.layout}"
    if x.is_meta or x.is_quantized or x.is_nested:
        return f"{name} is a meta, quantized or nested tensor"
    if x.requires_grad:
        return f"{name} requires grad"
    if x.device.type not in ("cpu", device.type):
        return f"{name} is on {x.device}"
    return ""


def shape_error(up: object, d: int, state_names: tuple[str, ...], device: torch.device) -> str:
    """Why a single upload is malformed, or "" (checked before batching: O(1) per upload)."""
    if type(up) is not Upload:  # a subclass could answer each read of a field differently
        return f"a {type(up).__name__}, not an Upload"
    rows = up.rows
    bad = tensor_error("rows", rows, device)
    if bad:
        return bad
    if rows.dim() != 1 or rows.dtype != torch.int64:
        return "rows must be a 1-D int64 tensor"
    k = rows.shape[0]
    if type(up.state) is not dict:
        return "state must be a dict of tensors"
    tensors = {"theta": up.theta, **up.state}
    if set(tensors) != {"theta", *state_names} or len(up.state) != len(state_names):
        return f"expected state {sorted(state_names)}, got {sorted(map(str, up.state))}"
    for name, x in tensors.items():
        bad = tensor_error(name, x, device)
        if bad:
            return bad
        if x.shape != (k, d) or not x.is_floating_point():
            return f"{name} must be a float tensor of shape ({k}, {d})"
    if as_int64(up.n_examples) is None:
        return "n_examples must be an int64"
    return ""


def batch_error(b: object, d: int, state_names: tuple[str, ...], device: torch.device) -> str:
    """Why an ``UploadBatch`` (an attack's whole reply) is malformed, or "" (one host sync)."""
    if not isinstance(b, UploadBatch):
        return f"a {type(b).__name__}, not an UploadBatch"
    if not isinstance(b.state, dict) or set(b.state) != set(state_names):
        return f"expected state {sorted(state_names)}"
    fields = {"client_ids": b.client_ids, "ptr": b.ptr, "rows": b.rows, "n_examples": b.n_examples}
    for name, x in {**fields, "theta": b.theta, **b.state}.items():
        bad = tensor_error(name, x, device)
        if bad:
            return bad
    for name, x in fields.items():
        if x.dim() != 1 or x.dtype != torch.int64:
            return f"{name} must be a 1-D int64 tensor"
    n, K = b.client_ids.shape[0], b.rows.shape[0]
    if b.ptr.shape[0] != n + 1 or b.n_examples.shape[0] != n:
        return "ptr must have n + 1 and n_examples n entries"
    for name, x in {"theta": b.theta, **b.state}.items():
        if x.shape != (K, d) or not x.is_floating_point():
            return f"{name} must be a float tensor of shape ({K}, {d})"
    p = b.ptr.cpu()
    if int(p[0]) != 0 or int(p[-1]) != K or bool((p[1:] < p[:-1]).any()):
        return "ptr must rise from 0 to the number of rows"
    return ""


def empty_batch(client_ids: torch.Tensor, d: int, state_names: tuple[str, ...], dtype, device) -> UploadBatch:
    """Uploads listing no row (placeholders for rejected messages: they carry a reason, not values)."""
    n = client_ids.shape[0]
    empty = torch.zeros(0, d, dtype=dtype, device=device)
    return UploadBatch(
        client_ids=client_ids.to(device=device, dtype=torch.int64),
        ptr=torch.zeros(n + 1, dtype=torch.int64, device=device),
        rows=torch.zeros(0, dtype=torch.int64, device=device),
        theta=empty,
        state={k: empty for k in state_names},
        n_examples=torch.zeros(n, dtype=torch.int64, device=device),
    )


def _to(b: UploadBatch, dtype, device) -> UploadBatch:
    return UploadBatch(
        client_ids=b.client_ids.to(device),
        ptr=b.ptr.to(device),
        rows=b.rows.to(device),
        theta=b.theta.to(device=device, dtype=dtype),
        state={k: v.to(device=device, dtype=dtype) for k, v in b.state.items()},
        n_examples=b.n_examples.to(device),
    )


def receive(
    messages: Sequence[Upload | UploadBatch] | UploadBatch,
    d: int,
    state_names: tuple[str, ...],
    device: torch.device,
    dtype,
) -> tuple[UploadBatch, torch.Tensor]:
    """Everything a round received as one batch in the server's dtype and device, and per upload its
    reason code so far (``shape`` / ``client-id`` for malformed messages, else 0).

    A malformed ``UploadBatch`` becomes one placeholder per id it declares when its ``client_ids`` can
    be read, else it counts as one upload with reason ``client-id`` (it cannot be attributed)."""
    if isinstance(messages, UploadBatch):
        messages = [messages]
    parts: list[UploadBatch] = []
    codes: list[torch.Tensor] = []
    singles: list[Upload] = []
    single_codes: list[int] = []

    def flush() -> None:
        if singles:
            parts.append(_to(UploadBatch.from_uploads(singles, d, state_names, device=device), dtype, device))
            codes.append(torch.tensor(single_codes, dtype=torch.int64, device=device))
            singles.clear()
            single_codes.clear()

    for msg in messages:
        if isinstance(msg, UploadBatch):
            flush()
            bad = batch_error(msg, d, state_names, device)
            if not bad:
                parts.append(_to(msg, dtype, device))
                codes.append(torch.zeros(msg.n, dtype=torch.int64, device=device))
                continue
            ids = getattr(msg, "client_ids", None)
            readable = (
                not tensor_error("client_ids", ids, device) and ids.dim() == 1 and ids.dtype == torch.int64
            )
            if not readable:  # one refused placeholder: the reply cannot be attributed to any client
                ids = torch.full((1,), -1, dtype=torch.int64)
            parts.append(empty_batch(ids, d, state_names, dtype, device))
            code = CODE["shape"] if readable else CODE["client-id"]
            codes.append(torch.full((ids.shape[0],), code, dtype=torch.int64, device=device))
            continue
        client_id = as_int64(getattr(msg, "client_id", None))
        bad = shape_error(msg, d, state_names, device)
        # read once more for the batch: an Integral whose value changes between reads is malformed
        n_examples = None if bad else as_int64(msg.n_examples)
        bad = bad or ("n_examples changed between reads" if n_examples is None else "")
        if client_id is None or bad:
            empty = torch.zeros(0, d, dtype=dtype, device=device)
            rows = torch.zeros(0, dtype=torch.int64, device=device)
            msg = Upload(
                -1 if client_id is None else client_id, rows, empty, dict.fromkeys(state_names, empty), 0
            )
        else:  # what was checked, as plain ints and in the server's dtype before concatenating
            cast = {k: v.to(device=device, dtype=dtype) for k, v in msg.state.items()}
            theta = msg.theta.to(device=device, dtype=dtype)
            msg = Upload(client_id, msg.rows.to(device), theta, cast, n_examples)
        single_codes.append(CODE["client-id"] if client_id is None else CODE["shape"] if bad else 0)
        singles.append(msg)
    flush()
    if not parts:
        return empty_batch(torch.zeros(0, dtype=torch.int64), d, state_names, dtype, device), torch.zeros(
            0, dtype=torch.int64, device=device
        )
    batch = parts[0]
    for p in parts[1:]:
        batch = batch.cat(p)
    return batch, torch.cat(codes)


def admit(
    batch: UploadBatch, codes: torch.Tensor, sampled: torch.Tensor
) -> tuple[UploadBatch, torch.Tensor, torch.Tensor]:
    """One upload per sampled client, in the order of ``sampled`` (sorted unique ids).

    The first upload that declares a sampled id fills its slot (callers put authenticated senders
    first: the simulation its honest clients, the Flower adapter sets ids from the transport). Returns
    the admitted batch (``client_ids == sampled``; an empty placeholder for a missing client), the
    slot codes, and ``refused [len(REASONS)]``: the count of the other uploads by reason."""
    device = sampled.device
    n, N = sampled.shape[0], batch.n
    refused = torch.zeros(len(REASONS), dtype=torch.int64, device=device)
    if n == 0:
        refused[CODE["client-id"]] += N
        return batch.take(torch.arange(0, device=device)), codes[:0], refused
    ids = batch.client_ids
    if device.type == "cpu" and n == N:  # the common round: each sampled client sent one upload
        order = torch.argsort(ids)
        if torch.equal(ids.index_select(0, order), sampled) and not bool((codes == CODE["client-id"]).any()):
            # ids unique and equal to the slots': upload order[j] is the only (so the first) for slot j,
            # what the general way finds in ~30 small operations (tests/test_reliability_server.py)
            admitted = batch.take(order)
            admitted.client_ids = sampled.clone()
            return admitted, codes.index_select(0, order), refused
    return _admit_any(batch, codes, sampled, refused)


def _admit_any(
    batch: UploadBatch, codes: torch.Tensor, sampled: torch.Tensor, refused: torch.Tensor
) -> tuple[UploadBatch, torch.Tensor, torch.Tensor]:
    """``admit`` for any batch (duplicates, unsampled ids, missing clients)."""
    device = sampled.device
    n, N = sampled.shape[0], batch.n
    idx = torch.arange(N, device=device)
    ids = batch.client_ids
    pos = torch.searchsorted(sampled, ids).clamp(max=n - 1)
    hit = (sampled[pos] == ids) & (codes != CODE["client-id"])
    first = torch.full((n,), N, dtype=torch.int64, device=device)
    first.scatter_reduce_(0, pos[hit], idx[hit], "amin")
    is_first = torch.zeros(N + 1, dtype=torch.bool, device=device)
    is_first[first] = True
    is_first = is_first[:N]
    refused[CODE["client-id"]] += (~hit).sum()
    refused[CODE["duplicate-client"]] += (hit & ~is_first).sum()
    present = first < N
    if device.type == "cpu" and bool(
        present.all()
    ):  # every slot filled: no placeholder (no host sync on CUDA)
        admitted = batch.take(first)
    else:
        placeholder = empty_batch(
            sampled[:1], batch.theta.shape[1], tuple(batch.state), batch.theta.dtype, device
        )
        admitted = batch.cat(placeholder).take(first)
    admitted.client_ids = sampled.clone()
    slot_codes = torch.where(present, torch.cat([codes, codes.new_zeros(1)])[first], CODE["missing"])
    return admitted, slot_codes, refused


def why_missing(
    codes: torch.Tensor, sampled: torch.Tensor, ids: torch.Tensor, reasons: torch.Tensor
) -> torch.Tensor:
    """``codes`` with each ``missing`` slot whose client is in ``ids`` given that client's reason (a
    transport knows why nothing came: no reply before the round's deadline, an error reply). A slot
    an upload did fill keeps its code: the reason only explains an absence."""
    ids = ids.to(device=sampled.device, dtype=torch.int64)
    if ids.numel() == 0 or sampled.numel() == 0:
        return codes
    reasons = reasons.to(device=sampled.device, dtype=torch.int64)
    order = torch.argsort(ids)
    ids, reasons = ids[order], reasons[order]
    pos = torch.searchsorted(ids, sampled).clamp(max=ids.shape[0] - 1)
    hit = (ids[pos] == sampled) & (codes == CODE["missing"])
    return torch.where(hit, reasons[pos], codes)


def _per_upload_any(flags: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int64, device=flags.device).index_add_(0, owner, flags.long()) > 0


def _mark(code: torch.Tensor, flag: torch.Tensor, name: str) -> None:
    code.copy_(torch.where((code == 0) & flag, CODE[name], code))


VALUE_CHECKS = (
    "non-finite",
    "row-out-of-range",
    "rows-unsorted-or-duplicated",
    "n-examples-invalid",
    "n-examples-absurd",
)
VALUE_CODES = tuple(CODE[r] for r in VALUE_CHECKS)


def validate(
    uploads: UploadBatch,
    *,
    n_rows: int,
    max_examples: int,
    max_weight_share: float | None = 0.9,
    min_uploads_for_share: int = MIN_UPLOADS_FOR_SHARE,
    codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reason codes ``[n]`` (0 = valid) for every upload of the batch, first failing check wins:
    non-finite values, rows out of ``[0, n_rows)``, rows not strictly increasing within an upload,
    ``n_examples < 1``, ``n_examples > max_examples`` (a client cannot hold more positives than the
    catalog has items) or more than the rows it lists (an honest FISM or MF client lists at least the
    rows of its positive items), and a share of the valid uploads' total ``n_examples`` above
    ``max_weight_share`` (checked only in rounds with at least ``min_uploads_for_share`` uploads, so a
    small honest round is not penalised for one heavy user; ``None`` leaves it to the caller, who
    first decides what each claim weighs: ``effective_examples``)."""
    n = uploads.n
    device = uploads.rows.device
    code = torch.zeros(n, dtype=torch.int64, device=device) if codes is None else codes.clone()
    ne = uploads.n_examples
    tables = [uploads.theta, *uploads.state.values()]
    cap = min(max_examples, INT64[1])
    # the checks below in one C pass where it applies (fedrec.federation.validate_native)
    if not value_checks(code, uploads.ptr, uploads.rows, tables, ne, n_rows, cap, VALUE_CODES):
        _value_checks(code, uploads, n_rows, max_examples)
    if max_weight_share is None:
        return code
    return weight_share(code, ne, max_weight_share, min_uploads_for_share)


def _value_checks(code: torch.Tensor, uploads: UploadBatch, n_rows: int, max_examples: int) -> None:
    """``validate``'s value checks in torch, into ``code`` in place."""
    n, ne, owner = uploads.n, uploads.n_examples, uploads.owner()
    finite = finite_rows(uploads.theta)
    for x in uploads.state.values():
        finite &= finite_rows(x)
    _mark(code, _per_upload_any(~finite, owner, n), "non-finite")
    _mark(code, _per_upload_any((uploads.rows < 0) | (uploads.rows >= n_rows), owner, n), "row-out-of-range")
    same = owner[1:] == owner[:-1]
    _mark(
        code,
        _per_upload_any(same & (uploads.rows[1:] <= uploads.rows[:-1]), owner[1:], n),
        "rows-unsorted-or-duplicated",
    )
    _mark(code, ne < 1, "n-examples-invalid")
    _mark(code, (ne > max_examples) | (ne > uploads.counts()), "n-examples-absurd")


def weight_share(
    code: torch.Tensor,
    ne: torch.Tensor,
    max_weight_share: float,
    min_uploads_for_share: int = MIN_UPLOADS_FOR_SHARE,
) -> torch.Tensor:
    """Reject a valid upload claiming more than ``max_weight_share`` of the valid uploads' weight."""
    code = code.clone()
    valid = code == 0
    total = torch.where(valid, ne, torch.zeros_like(ne)).sum()
    share = ne.double() / total.clamp(min=1).double()
    enough = valid.sum() >= min_uploads_for_share
    _mark(code, valid & enough & (share > max_weight_share), "weight-share")
    return code


def check_rule(
    server: ServerState,
    uploads: UploadBatch,
    rule,
    t: int,
    codes: torch.Tensor,
    *,
    max_grad: float,
    verify: bool,
    fused: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the optimizer rule allows, on the uploads still valid: non-negative states
    (``rule.nonnegative``: Adam's v, AdaGrad's and RMSProp's r are sums of squares), the rule's
    remaining equations (``rule.verify`` <= 1, paper 000 footnote 2; when ``verify``) and a finite
    reconstructed gradient of at most ``max_grad`` in every coordinate; without ``verify``, also
    ``|theta| <= THETA_MAX`` (two unverified uploads at -3e38 and +3e38 made the aggregate infinite).

    Why both: a rule-consistent upload is determined by its gradient, so bounding the gradient bounds
    everything it can do to the state (Adam moves theta by at most ``eta_t * |m| / sqrt(v + eps)``,
    which stays bounded for convex combinations of consistent uploads), while an upload that breaks
    the rule (theta = 1e30 next to honest moments) has no gradient that would explain it.

    ``fused``: the rule's check as one compiled kernel (fedrec.optim.fused; the same bounds).

    Returns the codes and the reconstructed gradients ``[K, d]`` aligned with ``uploads.rows`` (zero at
    the rows of uploads that were not valid on entry; None when none was), so that the defense and the
    round record need not reconstruct them again."""
    code = codes.clone()
    valid = code == 0
    if not bool(valid.any()):
        return code, None
    sub = uploads.select(valid)
    owner = sub.owner()
    sub_code = torch.zeros(sub.n, dtype=torch.int64, device=code.device)
    rows = sub.rows
    tables, rows = server.tables_for(rows)  # the check's kernel gathers the rows itself
    up = {"theta": sub.theta, **sub.state}
    domain, broken, too_big, g = rule_check(rule, fused)(tables, rows, up, t, max_grad, verify)
    if not verify:  # theta is then no step of a bounded gradient: bound it alone (the aggregate stays finite)
        too_big = too_big | (sub.theta.abs().amax(dim=1) > THETA_MAX)
    # an upload's code: the first of the three checks that one of its rows fails, in this order
    fails = torch.zeros(3, sub.n, dtype=torch.int64, device=code.device)
    fails.index_add_(1, owner, torch.stack([domain, broken, too_big]).long())
    sub_code = torch.where(fails[2] > 0, CODE["magnitude"], sub_code)
    sub_code = torch.where(fails[1] > 0, CODE["rule-verify"], sub_code)
    sub_code = torch.where(fails[0] > 0, CODE["state-domain"], sub_code)
    code[valid] = sub_code
    if sub.rows.shape[0] != uploads.rows.shape[0]:  # some uploads were not checked: zero rows for them
        full = torch.zeros(uploads.rows.shape[0], g.shape[1], dtype=g.dtype, device=g.device)
        full[valid[uploads.owner()]] = g
        g = full
    return code, g


def effective_examples(ne: torch.Tensor, valid: torch.Tensor, weighting: str, clip: float) -> torch.Tensor:
    """The ``n_i`` the aggregation weights use (paper 000 Algorithm 1: ``w_i = n_i / sum n_j``).

    ``claimed``: as uploaded. ``clipped``: at most ``ceil(clip x the median claim of the round's valid
    uploads)``: a Byzantine minority cannot move the median past the honest claims, so each of its
    uploads weighs at most ``clip`` honest medians. ``uniform``: 1 for every upload."""
    if weighting == "claimed":
        return ne
    if weighting == "uniform":
        return torch.ones_like(ne)
    if weighting != "clipped":
        raise ValueError(f"defense.weighting={weighting!r}: expected one of {', '.join(WEIGHTINGS)}")
    n = ne.shape[0]
    if n == 0:
        return ne
    claims = torch.where(valid, ne, torch.zeros_like(ne)).double()
    k = valid.sum()
    # the lower median of the valid claims: invalid ones sort to the front as 0 (valid claims are >= 1)
    med = claims.sort().values[(n - k + (k - 1).clamp(min=0) // 2).clamp(max=n - 1)]
    cap = torch.ceil(med * clip).clamp(min=1).to(ne.dtype)
    return torch.minimum(ne, cap)
