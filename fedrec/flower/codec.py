"""Uploads and the global state as Flower records (flwr 1.41 Message API), and back.

Every tensor travels as one ``Array(dtype, shape, "raw.le", bytes)``: its little-endian bytes, written
once (``tobytes``: the serialization) and read back as a view (``np.frombuffer``, then
``torch.from_numpy``): no copy on either side beyond serialization. ``Array(ndarray)`` would add an
``np.save`` / ``np.load`` round (twice the cost, measured in issue 12).

An upload batch (``fedrec.protocol.UploadBatch``: one or many clients of a node) is an ``ArrayRecord``
with ``client_ids``, ``ptr``, ``rows``, ``n_examples`` (int64) and ``theta`` plus the optimizer's state
tensors (float32 or float64). Decoding a reply never raises: whatever a node sends is either an
``UploadBatch`` whose structure ``fedrec.federation.validate`` then checks like any other, or a
``Undecodable`` carrying the reason in words; the server records the node's clients as
``undecodable`` (``fedrec.protocol.REASONS``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedrec.protocol import ServerState, Upload, UploadBatch

STYPE = "raw.le"  # raw little-endian bytes, C order
UPLOAD = "upload"  # the reply's ArrayRecord
STATE = "state"  # the broadcast's ArrayRecord
INT_KEYS = ("client_ids", "ptr", "rows", "n_examples")
FLOATS = ("float32", "float64")
# decoded tensors are read-only views of the message's bytes; the server never writes into an upload
# (receive / admit gather them into new tensors), so torch's warning about it says nothing here
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass(frozen=True)
class Undecodable:
    """A reply that is not an upload batch, and why (one line)."""

    why: str


def to_array(x: torch.Tensor) -> Array:
    """One tensor as raw little-endian bytes (a single copy: the serialization itself)."""
    a = x.detach().cpu().contiguous().numpy()
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return Array(dtype=a.dtype.name, shape=tuple(int(s) for s in a.shape), stype=STYPE, data=a.tobytes())


def from_array(arr: object, dtypes: tuple[str, ...], ndim: int) -> torch.Tensor | str:
    """The tensor ``arr`` holds (a view of its bytes), or why it cannot be one: checked against the
    allowed dtypes and dimension before any byte is read, so a claimed shape never allocates."""
    if not isinstance(arr, Array):
        return f"a {type(arr).__name__}, not an Array"
    dtype, shape, stype, data = arr.dtype, arr.shape, arr.stype, arr.data
    if stype != STYPE:
        return f"stype {stype!r}, expected {STYPE!r}"
    if not isinstance(dtype, str) or dtype not in dtypes:
        return f"dtype {dtype!r}, expected one of {', '.join(dtypes)}"
    ok_shape = isinstance(shape, tuple | list) and len(shape) == ndim
    if not ok_shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        return f"shape {shape!r}, expected {ndim} non-negative ints"
    if not isinstance(data, bytes | bytearray | memoryview):
        return f"data is a {type(data).__name__}, not bytes"
    np_dtype = np.dtype(dtype).newbyteorder("<")
    size = data.nbytes if isinstance(data, memoryview) else len(data)  # a memoryview's len counts items
    if size != math.prod(shape) * np_dtype.itemsize:
        return f"{size} bytes for shape {tuple(shape)} of {dtype}"
    view = np.frombuffer(data, dtype=np_dtype).reshape(tuple(shape))
    if view.dtype.byteorder == ">":  # a big-endian host: the one case that must convert
        view = view.astype(view.dtype.newbyteorder("="))
    return torch.from_numpy(view)


# -- uploads ----------------------------------------------------------------------------------------


def encode_batch(batch: UploadBatch) -> ArrayRecord:
    """An upload batch as an ``ArrayRecord`` (int64 index tensors, the float tensors as they are)."""
    tensors = {k: getattr(batch, k).to(torch.int64) for k in INT_KEYS}
    tensors["theta"] = batch.theta
    for name, x in batch.state.items():
        if name in tensors:
            raise ValueError(f"state name {name!r} clashes with an upload field")
        tensors[name] = x
    return ArrayRecord({k: to_array(v) for k, v in tensors.items()})


def encode_upload(upload: Upload) -> ArrayRecord:
    """One client's upload: a batch of one."""
    d = int(upload.theta.shape[1]) if upload.theta.dim() == 2 else 0
    return encode_batch(UploadBatch.from_uploads([upload], d, tuple(upload.state)))


def decode_batch(record: object, state_names: tuple[str, ...]) -> UploadBatch | Undecodable:
    """The upload batch ``record`` encodes, or ``Undecodable``; never raises. Only the record's form is
    checked here (keys, dtypes, dimensions, byte counts); shapes against each other, ids, rows and
    values are ``fedrec.federation.validate``'s, as for any upload."""
    try:
        if not isinstance(record, ArrayRecord):
            return Undecodable(f"a {type(record).__name__}, not an ArrayRecord")
        want = (*INT_KEYS, "theta", *state_names)
        keys = list(record.keys())
        if sorted(keys) != sorted(want):
            return Undecodable(f"keys {sorted(map(str, keys))}, expected {sorted(want)}")
        out: dict[str, torch.Tensor] = {}
        for k in want:
            x = from_array(record[k], ("int64",) if k in INT_KEYS else FLOATS, 1 if k in INT_KEYS else 2)
            if isinstance(x, str):
                return Undecodable(f"{k}: {x}")
            out[k] = x
        return UploadBatch(
            client_ids=out["client_ids"], ptr=out["ptr"], rows=out["rows"], theta=out["theta"],
            state={k: out[k] for k in state_names}, n_examples=out["n_examples"],
        )  # fmt: skip
    except Exception as err:  # a record type whose accessors raise: still only a rejected reply
        return Undecodable(f"{type(err).__name__}: {err}"[:200])


def decode_reply(content: object, state_names: tuple[str, ...]) -> UploadBatch | Undecodable:
    """The upload batch in a reply's ``RecordDict`` (under ``UPLOAD``), or ``Undecodable``."""
    try:
        if not isinstance(content, RecordDict):
            return Undecodable(f"content is a {type(content).__name__}, not a RecordDict")
        if UPLOAD not in content.array_records:
            return Undecodable(f"no ArrayRecord {UPLOAD!r} in the reply")
        return decode_batch(content.array_records[UPLOAD], state_names)
    except Exception as err:
        return Undecodable(f"{type(err).__name__}: {err}"[:200])


# -- the global state (server -> nodes) ------------------------------------------------------------


def encode_state(server: ServerState) -> ArrayRecord:
    """The global table and optimizer state, dense: what every node of the round starts from (the
    server does not learn which rows a client touches)."""
    return ArrayRecord({"theta": to_array(server.theta), **{k: to_array(v) for k, v in server.state.items()}})


def decode_state(
    record: ArrayRecord,
    config: ConfigRecord,
    state_names: tuple[str, ...],
    device: torch.device | str = "cpu",
) -> ServerState:
    """The server's state as a node sees it (raises ``ValueError`` on a malformed broadcast: a node
    trusts its server, but says so clearly when the two disagree)."""
    tensors = {}
    for k in ("theta", *state_names):
        x = from_array(record.get(k), FLOATS, 2)
        if isinstance(x, str):
            raise ValueError(f"global state {k}: {x}")
        tensors[k] = x.to(device)
    t = config.get("t")
    if not isinstance(t, int) or t < 1:
        raise ValueError(f"round number {t!r}")
    return ServerState(theta=tensors["theta"], state={k: tensors[k] for k in state_names}, t=t - 1)


def record_bytes(record: ArrayRecord) -> int:
    """Payload bytes of an ``ArrayRecord`` (the arrays' data, as sent)."""
    return sum(len(a.data) for a in record.values())
