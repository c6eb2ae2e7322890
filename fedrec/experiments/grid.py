"""``fedrec experiment GRID.yaml``: a grid of runs, in parallel processes, resumable, into one table.

A grid file::

    base: configs/ml100k.yaml        # optional: a config file, resolved relative to the grid file, then cwd
    set: {train.lr: 0.01, federated.rounds: 1000}   # optional: fixed overrides, dotted keys
    grid:                            # dotted keys -> lists of values; every combination is one cell
      data.dataset: [ml100k, lastfm]
      attack.name: [alie, ipm]
      attack.fraction: [0.2, 0.4]
      defense.name: [none, a-rfrs]
      train.seed: [0, 1, 2]
    out: runs/grid-name              # optional: where the cells go (``--out`` wins; default runs/<file name>)

``grid`` may also be a list of such mappings: the cells are then the union of their products (as in
scikit-learn's ParameterGrid), which is how cells that do not combine are written, e.g. the attack-free
cell beside the attacked ones (an attack needs a Byzantine fraction, and a fraction needs an attack)::

    grid:
      - {data.dataset: [ml100k], train.seed: [0, 1]}
      - {data.dataset: [ml100k], train.seed: [0, 1], attack.name: [alie], attack.fraction: [0.2, 0.4]}

``fedrec experiment GRID --set key=value`` narrows a key the grid lists to that one value (the same
cells, by name, so a part of a grid is run first and the whole grid later skips it); any other key
joins ``set`` (every cell changes). Nested mappings are read as dotted keys (``set: {train: {lr: 0.01}}`` is ``train.lr``), and
``attack.params.NAME`` / ``defense.params.NAME`` set one parameter of the attack / defense. Values are
typed YAML (``0.4`` is a number, ``none`` a string).

Before anything runs or any data loads, the whole grid is checked: every key must be a config key, every
cell's config must pass ``fedrec.config.validate``, and a cell may not set a key its mode does not read
(``federated.*`` in a centralized cell). A bad grid is one ``GridError`` line naming the grid file.

Output folder OUT:

- ``OUT/grid.yaml`` (a copy of the grid file) and ``OUT/manifest.json`` (the expanded cells);
- ``OUT/runs/<cell>/``: one run directory per cell (``fedrec report OUT/runs/*``), named by the values
  of the cell's grid keys (every key listed under ``grid``, so that adding a value to a list keeps the
  names of the cells already run) and a short hash of its whole resolved config, e.g.
  ``ml100k__alie__0.4__a-rfrs__s0__1f3e5a7c``; ``cell.log`` there holds the cell's output. A key added
  to the grid renames every cell; a run found under its earlier name (same hash, same identity in its
  config.yaml) is renamed to its new one and reused (``adopt_earlier_dirs``);
- ``OUT/results.parquet``: one row per finished cell (see :func:`result_row` for the columns), in grid
  order, rewritten atomically after every cell, so a killed grid leaves a valid table.

A cell whose directory holds a finished summary.json is skipped; an unfinished federated cell resumes
from its last checkpoint (or starts over when the checkpoint is unusable); a centralized cell starts
over. Each cell runs in its own process (``fedrec.experiments.cell``, forked from a server that has
imported fedrec and torch once), ``jobs`` at a time, each with one torch thread (or
``$OMP_NUM_THREADS``, at most ``cores // jobs``, when the caller set it): like ``fedrec train``, a cell
never oversubscribes the cores, whatever else runs on the machine (docs/RESULTS.md section 15: two
threads next to one busy process ran at 6 % of one thread); parallelism comes from ``jobs``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

from fedrec.config import (
    MODE_SECTIONS,
    Config,
    ConfigError,
    load_config,
    load_yaml,
    parse_override,
    shown,
    unread_key,
)
from fedrec.experiments.cell import (
    LOG,
    PRELOAD,
    SUMMARY,
    RecordError,
    cell_process,
    finished_summary,
    read_record,
    read_small,
    warn_once,
)
from fedrec.federation.checkpoint import resolved_config
from fedrec.federation.simulation import compiles
from fedrec.runs import _atomic, dumps, run_name_problem

GRID_FIELDS = ("base", "set", "grid", "out")
# the columns every results table has, whatever the grid varies (other engineers' plots read them)
STANDARD_KEYS = (
    "data.dataset",
    "model.name",
    "train.optimizer",
    "attack.name",
    "attack.fraction",
    "defense.name",
    "train.seed",
)
# the grid names and places its run directories itself
RESERVED_KEYS = ("run.out_dir", "run.name")
RESULTS = "results.parquet"
MANIFEST = "manifest.json"
WALL_MAX = 1e8  # seconds (three years): a larger wall time in a cell record is not one (a projection
# from a forged 1e308 printed a 300-digit number of hours)
CELL_INFO = "cell.json"  # the grid's record of a cell: wall seconds over its attempts, last status
MAX_CELLS = 20_000  # each is a run of minutes; building a cell's config alone takes ~6 ms
MAX_NAME = 150  # characters of a cell name before its hash (file names stop at 255 bytes)


class GridError(ConfigError):
    """A grid file that cannot run as written; ``str`` is one line naming the file."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its dotted overrides (``set`` then the grid's values) and resolved config."""

    name: str
    values: dict[str, Any]  # ``set`` and this cell's grid values, as the grid file gives them
    config: Config = field(repr=False)
    digest: str  # sha256 of the run's identity (config_digest)


@dataclass
class Grid:
    path: Path
    text: str
    base: Path | None
    fixed: dict[str, Any]
    subgrids: list[dict[str, list[Any]]]
    out: Path
    keys: list[str]  # the grid keys, in the order the file first lists them
    cells: list[Cell]  # the cells to run: the whole grid, or the part that --set narrowed it to
    whole: list[Cell] = field(default_factory=list)  # every cell of the grid (results.parquet, manifest)

    def __post_init__(self) -> None:
        if not self.whole:
            self.whole = list(self.cells)

    def run_dir(self, cell: Cell) -> Path:
        return self.out / "runs" / cell.name

    @property
    def columns(self) -> list[str]:
        """The config columns of the results table: the standard keys, then the other grid keys, then
        the keys of ``set`` (so tables of two grids say how their runs differ when read together)."""
        return list(dict.fromkeys([*STANDARD_KEYS, *self.keys, *self.fixed]))


# ------------------------------------------------------------------------------------------- loading


def load_grid(
    path: str | Path, out: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Grid:
    """Read and check ``path``; every cell's config is built and validated. Raises :class:`GridError`.

    ``overrides`` (``key=value``, the CLI's ``--set``): a key the grid lists narrows the grid to the
    cells with that value (``narrow``), and the cells keep their names (a narrowed run is part of the whole grid's, and the
    whole grid later skips what it ran); any other key is added to ``set`` (every cell's config, and
    so its name, changes)."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: grid file not found")
    try:
        text = path.read_text()
        doc = load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise GridError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GridError(f"{path}: unreadable ({err})") from None
    if not isinstance(doc, dict):
        raise GridError(f"{path}: expected a mapping with {', '.join(GRID_FIELDS)}")
    if unknown := [k for k in doc if k not in GRID_FIELDS]:
        raise GridError(f"{path}: unknown field {unknown[0]!r}; a grid file has {', '.join(GRID_FIELDS)}")

    base = _base(path, doc.get("base"))
    fixed = _flat(path, "set", {} if doc.get("set") is None else doc["set"])
    raw = doc.get("grid")
    if raw is None:
        raw = [{}]
    subgrids = [_subgrid(path, i, g, len(raw) if isinstance(raw, list) else 0) for i, g in enumerate(
        raw if isinstance(raw, list) else [raw]
    )]  # fmt: skip
    if not subgrids:
        raise GridError(f"{path}: grid: an empty list has no cell")
    keys = list(dict.fromkeys(k for g in subgrids for k in g))
    whole_subgrids, narrowed = subgrids, False
    for override in overrides:  # not `text`: that is the grid file's, copied to OUT/grid.yaml
        try:
            key, value = parse_override(override)
        except ConfigError as err:
            raise GridError(f"--set: {err}") from None
        if key in keys:
            _check_key(path, key, value)  # a value of the key's type (true is no seed)
            subgrids, narrowed = narrow(path, subgrids, key, value), True
        else:
            fixed[key] = value
    for key, value in [*fixed.items(), *((k, v) for g in whole_subgrids for k, vs in g.items() for v in vs)]:
        _check_key(path, key, value)
    if both := [k for k in keys if k in fixed]:
        raise GridError(f"{path}: {both[0]!r} is under both set and grid; keep it in one place")

    if out is None:
        out = doc.get("out") or Path("runs") / path.stem
    if not isinstance(out, str | Path) or not str(out).strip():
        raise GridError(f"{path}: out={shown(out)}: expected a folder name")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GridError(f"{path}: out {str(out)!r} exists and is not a folder")

    def expand(grids: list[dict[str, list[Any]]]) -> list[dict[str, Any]]:
        return [
            {**fixed, **dict(zip(g, combo, strict=True))}
            for g in grids
            for combo in itertools.product(*g.values())
        ]

    n = sum(math.prod(len(vs) for vs in g.values()) for g in whole_subgrids)
    if n > MAX_CELLS:
        raise GridError(
            f"{path}: {n:,} cells; a grid has at most {MAX_CELLS:,} (split it into several files)"
        )
    assignments = expand(whole_subgrids)
    configs = [_cell_config(path, base, values, out, keys) for values in assignments]
    whole = _name_cells(path, keys, assignments, configs)
    cells = whole
    if narrowed:  # a part keeps its cells' names: it is the whole grid's, which later skips what it ran
        part = {dumps(values, sort_keys=True) for values in expand(subgrids)}
        cells = [c for c in whole if dumps(c.values, sort_keys=True) in part]
        if not cells:  # cannot happen while narrowing keeps the grid's own values; never run nothing
            raise GridError(f"{path}: --set {', '.join(overrides)}: no cell of the grid has these values")
    return Grid(path, text, base, fixed, whole_subgrids, out, keys, cells, whole)


def narrow(path: Path, subgrids: list[dict[str, list]], key: str, value: Any) -> list[dict[str, list]]:
    """``--set key=value`` on a key the grid lists: each sub-grid that lists ``key`` keeps only that
    value, or drops out when it does not list it (narrowing never makes a cell the grid does not have);
    a sub-grid without ``key`` keeps its cells. A value no sub-grid lists is an error."""
    listed = [vs for g in subgrids if key in g for vs in [g[key]]]
    if not any(value in vs for vs in listed):
        values = ", ".join(dict.fromkeys(repr(v) for vs in listed for v in vs))
        raise GridError(f"{path}: --set {key}={shown(value)}: the grid lists {key} as {values} only")
    # the grid's own spelling of the value (1.0 for --set ...=1), so a part's cells are the grid's cells
    return [
        {k: [next(v for v in vs if v == value)] if k == key else vs for k, vs in g.items()}
        for g in subgrids
        if key not in g or value in g[key]
    ]


def _base(path: Path, base: Any) -> Path | None:
    if base is None:
        return None
    if not isinstance(base, str) or not base.strip():
        raise GridError(f"{path}: base={shown(base)}: expected the path of a config file")
    for candidate in (path.parent / base, Path(base)):
        if candidate.is_file():
            return candidate
    raise GridError(f"{path}: base={shown(base)}: no such config file (looked in {path.parent} and the cwd)")


def _flat(path: Path, where: str, doc: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; a ``params`` mapping stays whole only when given as a value."""
    if not isinstance(doc, dict):
        raise GridError(f"{path}: {where}: expected a mapping of dotted config keys")
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        inner = (
            _flat(path, where, value, dotted + ".")
            if isinstance(value, dict) and dotted.count(".") < 2 and not dotted.endswith(".params")
            else {dotted: value}
        )
        if twice := [k for k in inner if k in flat]:  # train: {lr: ...} beside train.lr: ...
            raise GridError(f"{path}: {where}: {twice[0]} is given twice")
        flat.update(inner)
    return flat


def _subgrid(path: Path, i: int, doc: Any, n: int) -> dict[str, list[Any]]:
    where = f"grid[{i}]" if n else "grid"
    flat = _flat(path, where, doc)
    for key, values in flat.items():
        if not isinstance(values, list):
            raise GridError(
                f"{path}: {where}: {key}: expected a list of values, got {shown(values)} (fixed values go under set)"
            )
        if not values:
            raise GridError(f"{path}: {where}: {key}: the list is empty, so the grid has no cell")
    return flat


def _check_key(path: Path, key: str, value: Any) -> None:
    if key in RESERVED_KEYS:
        raise GridError(f"{path}: {key}: the grid names and places its run directories (use out: or --out)")
    try:
        Config().set(key, value)  # the key exists and the value reads as its type
    except ConfigError as err:
        raise GridError(f"{path}: {err}") from None


def _describe(values: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={shown(values[k])}" for k in keys if k in values) or "the only cell"


def _cell_config(path: Path, base: Path | None, values: dict[str, Any], out: Path, keys: list[str]) -> Config:
    try:
        cfg = load_config(base, values={**values, "run.out_dir": str(out / "runs")})
    except ConfigError as err:
        raise GridError(f"{path}: cell {_describe(values, keys)}: {err}") from None
    mode = cfg.train.mode
    other = {s for m, sections in MODE_SECTIONS.items() if m != mode for s in sections}
    # a grid key the run never reads makes its cells one run under several names (set: keys are shared)
    if (unread := unread_key(cfg, [k for k in values if k in keys])) is not None:
        raise GridError(
            f"{path}: cell {_describe(values, keys)}: model.name='pop' trains nothing: it does not read {unread}"
        )
    if ignored := [k for k in values if k.partition(".")[0] in other]:
        raise GridError(
            f"{path}: cell {_describe(values, keys)}: train.mode={mode!r} does not read {ignored[0]}; "
            "give the modes separate sub-grids (grid: a list of mappings)"
        )
    return cfg


def config_digest(cfg: Config) -> str:
    """sha256 of the run's identity (``checkpoint.resolved_config``: what it computes, not where or on
    how many threads; keys added later count only when set away from their old value), so a cell
    keeps its name when fedrec gains a config key."""
    flat = resolved_config(cfg)
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def config_value(cfg: Config, key: str) -> Any:
    """The value of a dotted key (``attack.params.z`` too; None when that parameter is unset)."""
    section, _, rest = key.partition(".")
    name, _, param = rest.partition(".")
    value = getattr(getattr(cfg, section), name)
    return value.get(param) if param else value


def _part(key: str, value: Any) -> str:
    if key == "data.dataset" and isinstance(value, str) and value.endswith(".inter"):
        value = Path(value).stem
    if isinstance(value, bool) or value is None:
        text = str(value).lower()
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, list | tuple):
        text = "-".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = ",".join(f"{k}={v}" for k, v in value.items())
    else:
        text = str(value)
    if key == "train.seed":
        text = f"s{text}"
    part = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9.=,+-]+", "-", text)).strip("-.") or "x"  # no ".."
    return f"-{part}" if re.match(r"-\d", text) else part  # a negative number keeps its sign


def _name_cells(path: Path, keys: list[str], assignments: list[dict], configs: list[Config]) -> list[Cell]:
    cells, seen = [], {}
    for values, cfg in zip(assignments, configs, strict=True):
        digest = config_digest(cfg)
        readable = "__".join(_part(k, config_value(cfg, k)) for k in keys)[:MAX_NAME] or "cell"
        name = f"{readable}__{digest[:8]}"
        if why := run_name_problem(name):  # the cell's own check would fail every run of it
            raise GridError(f"{path}: cell {_describe(values, keys)} gets the name {name!r}: {why}")
        if name in seen:
            raise GridError(
                f"{path}: cells {_describe(seen[name], keys)} and {_describe(values, keys)} are the same run "
                "(a value listed twice, or sub-grids that overlap)"
            )
        seen[name] = values
        cfg.run.name = name
        cells.append(Cell(name, values, cfg, digest))
    return cells


# ------------------------------------------------------------------------------------------- running


def earlier_dirs(grid: Grid) -> dict[str, Path]:
    """Cell name -> the run directory of the same run under another name: the grid's keys changed since
    it ran (a key added to the grid renames every cell, its values joining the names), but a name ends
    with its run identity's hash, and the directory's own config.yaml is checked to be that run. Only
    for cells whose own directory is missing, with exactly one such directory, whose identity no other
    cell of the grid shares (cells that differ only in keys outside it, such as ``run.threads``: which
    of them ran is not known); never the directory of a cell of the grid. One listing of ``runs/``."""
    names = {c.name for c in grid.whole}
    shared = Counter(c.digest for c in grid.whole)
    by_hash: dict[str, list[Path]] = {}
    runs = grid.out / "runs"
    for d in runs.iterdir() if runs.is_dir() else ():
        if d.name not in names and not d.is_symlink() and (d / "config.yaml").is_file():
            by_hash.setdefault(d.name[-8:], []).append(d)
    found = {}
    for cell in grid.whole:
        if shared[cell.digest] > 1 or cell.digest[:8] not in by_hash or grid.run_dir(cell).exists():
            continue
        same = []
        for d in by_hash[cell.digest[:8]]:
            try:
                if config_digest(load_config(d / "config.yaml")) == cell.digest:
                    same.append(d)
            except ConfigError:
                continue
        if len(same) == 1:
            found[cell.name] = same[0]
    return found


def adopt_earlier_dirs(grid: Grid, say: Callable[[str], None] = lambda line: None) -> None:
    """Rename each cell's earlier directory (``earlier_dirs``) to the cell's name, so a grid that gained
    a key reuses the runs it already has (done ones are skipped, killed ones resume)."""
    for name, old in earlier_dirs(grid).items():
        new = grid.out / "runs" / name
        if new.exists():  # another process on the same folder adopted it first
            continue
        try:  # another process on the same folder may have moved it first: then the cell runs as new
            old.rename(new)
        except OSError as exc:
            say(f"{old.name}: not renamed to {new.name} ({exc.strerror or exc}); the cell runs as new")
            continue
        say(f"{old.name} -> {new.name} (the same run, named by the grid's new keys)")


def cell_status(run_dir: Path) -> str:
    """done (finished summary.json), resumable (a checkpoint, federated), or pending."""
    if finished_summary(run_dir) is not None:
        return "done"
    return "resumable" if (run_dir / "checkpoint.pt").is_file() else "pending"


def plan(grid: Grid) -> list[dict[str, Any]]:
    """What ``run_grid`` would do, cell by cell; reads the run directories and writes nothing (a run
    found under an earlier name, ``earlier_dirs``, counts with its status; ``run_grid`` renames it)."""

    warn_once()  # this listing says every unusable record once
    earlier = earlier_dirs(grid)

    def where(c: Cell) -> Path:
        return earlier.get(c.name, grid.run_dir(c))

    return [
        {"cell": c.name, "run_dir": str(grid.run_dir(c)), "status": cell_status(where(c)),
         "values": {k: config_value(c.config, k) for k in grid.keys}}
        for c in grid.cells
    ]  # fmt: skip


def projection(grid: Grid, jobs: int) -> dict[str, Any]:
    """What the cells of ``grid.cells`` still to run will cost, from the wall times (cell.json) of the
    grid's finished cells, any part: a cell not done is given the mean of the finished cells that share
    its values of every grid key but the seed and the fraction (a defense against an attack on a
    dataset), else of its dataset, else of all of them; at ``jobs`` at a time the wall time is at least
    the sum over ``jobs`` and at least the longest cell. The times are as measured: with as many jobs on
    as many cores as those runs had; no times (``cell_hours`` None) when no finished cell recorded one."""
    keys = [k for k in grid.keys if k not in ("train.seed", "attack.fraction")]
    like = [keys, ["data.dataset"] if "data.dataset" in grid.keys else [], []]
    seen: list[dict[tuple, list[float]]] = [{} for _ in like]
    todo: list[Cell] = []
    finished = 0
    part, earlier = {c.name for c in grid.cells}, earlier_dirs(grid)
    for cell in grid.whole:
        run_dir = earlier.get(cell.name, grid.run_dir(cell))  # as plan(): a run under an earlier name
        if finished_summary(run_dir) is None:
            todo += [cell] if cell.name in part else []
            continue
        finished += 1
        wall = _cell_info(run_dir).get("wall_s")
        if isinstance(wall, int | float) and not isinstance(wall, bool) and math.isfinite(wall) and wall > 0:
            for by, group in zip(like, seen, strict=True):
                group.setdefault(tuple(_text_value(cell, k) for k in by), []).append(float(wall))
    measured = sum(len(v) for v in seen[-1].values())
    out = {"to_run": len(todo), "finished": finished, "measured": measured, "jobs": jobs, "cell_hours": None,
           "wall_hours": None, "no_dataset_measured": 0}  # fmt: skip
    if not measured:
        return out
    times, by_all = [], 0
    for cell in todo:
        for level, (by, group) in enumerate(zip(like, seen, strict=True)):
            walls = group.get(tuple(_text_value(cell, k) for k in by))
            if walls:
                times.append(sum(walls) / len(walls))
                by_all += level == len(like) - 1 and bool(like[1])
                break
    total = sum(times)
    wall = max(total / jobs, max(times, default=0.0))
    return {**out, "cell_hours": total / 3600, "wall_hours": wall / 3600, "no_dataset_measured": by_all}


def _text_value(cell: Cell, key: str) -> str:
    return dumps(config_value(cell.config, key))


def projected(p: dict[str, Any]) -> str:
    """One line for a projection (``projection``)."""
    if not p["to_run"]:
        return "nothing left to run"
    if p["cell_hours"] is None:
        if not p["finished"]:
            return f"{p['to_run']} cells to run; no cell has finished yet: no time to project from"
        return f"{p['to_run']} cells to run; no finished cell recorded its wall time: no time to project from"
    guessed = p.get("no_dataset_measured", 0)
    return (
        f"{p['to_run']} cells to run: ~{_duration(p['cell_hours'])} of cell time, ~{_duration(p['wall_hours'])} "
        f"at --jobs {p['jobs']} (from the wall times of {p['measured']} finished cells"
        + (f"; {guessed} of a dataset with none finished, given the mean of all)" if guessed else ")")
    )


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{max(1, round(hours * 60))} min"


def check_inputs(grid: Grid) -> None:
    """What would fail every attempt of a cell, found before any cell runs (raises :class:`GridError`,
    one line): a dataset no searched folder holds, a cell directory or the results table blocked by a
    file or folder of the wrong kind."""
    from fedrec.data.errors import DataError
    from fedrec.data.registry import dataset_source

    for name, data_dir in dict.fromkeys((c.config.data.dataset, c.config.data.data_dir) for c in grid.cells):
        try:
            source = dataset_source(name, data_dir)
        except DataError as err:
            raise GridError(f"{grid.path}: data.dataset={shown(name)}: {err}") from None
        if not source[0].is_file():
            raise GridError(f"{grid.path}: data.dataset={shown(name)}: {source[0]} is not a file")
    for name in (RESULTS, MANIFEST, "grid.yaml"):
        if (grid.out / name).is_dir():
            raise GridError(f"{grid.out / name}: a folder where the grid writes a file; move it away")
    for c in grid.cells:
        if (problem := _foreign_dir(grid, d := grid.run_dir(c))) is not None:
            raise GridError(problem)
        if d.exists() and not d.is_dir():
            raise GridError(f"{d}: a file where cell {c.name}'s run directory goes; move it away")
        for name in (SUMMARY, CELL_INFO):  # replaced when unusable, but a folder cannot be
            if (d / name).is_dir():
                raise GridError(f"{d / name}: a folder where the grid writes a file; move it away")
        for name in ("config.yaml", LOG):  # read or appended to in place: a FIFO would block
            if (d / name).exists() and not (d / name).is_file():
                raise GridError(f"{d / name}: not a regular file; move it away")


def check_same_grid(grid: Grid) -> None:
    """Refuse an OUT that holds another grid's results (raises :class:`GridError`): its grid.yaml
    differs from this grid file and some of its finished cells are not cells of this grid (nor runs
    this grid adopts under a new name), so writing would drop their rows from results.parquet and
    replace its grid.yaml and manifest.json. The same grid file (parts run with --set too) and a grid
    file that only gained values or keys run on as before."""
    try:
        old = read_small(grid.out / "grid.yaml")
    except FileNotFoundError:
        return
    except (RecordError, OSError) as err:
        raise GridError(f"{err}; not this grid's copy: use another --out") from None
    if old == grid.text.encode():
        return
    ours = {c.name for c in grid.whole} | {d.name for d in earlier_dirs(grid).values()}
    runs = grid.out / "runs"
    theirs = sorted(
        d.name
        for d in (runs.iterdir() if runs.is_dir() and not runs.is_symlink() else ())
        if d.name not in ours and d.is_dir() and not d.is_symlink() and finished_summary(d) is not None
    )
    if theirs:
        raise GridError(
            f"{grid.out} holds another grid: its grid.yaml differs from {grid.path} and {len(theirs)} of its "
            f"finished cells (e.g. {theirs[0]}) are not cells of this one; use another --out"
        )


def threads_per_job(jobs: int) -> int:
    """One thread per cell; ``$OMP_NUM_THREADS`` when the caller set it, at most ``cores // jobs``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        asked = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return 1
    return max(1, min(max(1, cores // jobs), asked))


def manifest(grid: Grid) -> dict[str, Any]:
    return {
        "grid_file": str(grid.path),
        "base": None if grid.base is None else str(grid.base),
        "set": grid.fixed,
        "grid": grid.subgrids,
        "keys": grid.keys,
        "cells": [
            {"cell": c.name, "run_dir": f"runs/{c.name}", "config_sha256": c.digest, "values": c.values,
             "config": c.config.to_dict()}
            for c in grid.whole
        ],
    }  # fmt: skip


def _prepare_dir(grid: Grid, cell: Cell) -> Path:
    """The cell's directory with its config.yaml (rewritten only when it differs: a finished or
    resumable cell keeps its own); a corrupt summary.json is dropped so the cell runs again."""
    run_dir = grid.run_dir(cell)
    if (problem := _foreign_dir(grid, run_dir)) is not None:
        raise GridError(problem)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = run_dir / SUMMARY
    if summary.exists() and finished_summary(run_dir) is None:
        summary.unlink()
    config = run_dir / "config.yaml"
    text = cell.config.to_yaml()
    if not config.is_file() or config.read_bytes() != text.encode():  # a corrupt one is rewritten
        _atomic(config, lambda p: p.write_text(text), unique=True)
    return run_dir


def _foreign_dir(grid: Grid, run_dir: Path) -> str | None:
    """Why ``run_dir`` is not a folder the grid may write in: a symbolic link, or one that resolves
    outside OUT (the cell would rewrite the config of, and drop the checkpoint of, a run elsewhere)."""
    if run_dir.is_symlink():
        return f"{run_dir}: a symbolic link where a cell folder goes; the grid writes only in its own folders"
    if run_dir.exists() and not run_dir.resolve().is_relative_to(grid.out.resolve()):
        return f"{run_dir}: resolves to {run_dir.resolve()}, outside {grid.out}; the grid writes only in its own folders"
    return None


def _cell_info(run_dir: Path) -> dict[str, Any]:
    """The cell's cell.json; {} (with one warning line) when it is unusable: a record the grid cannot
    read must not stop the grid, and the next attempt rewrites it."""
    path = run_dir / CELL_INFO
    try:
        info = read_record(path)
    except FileNotFoundError:
        return {}
    except (RecordError, OSError) as err:
        warn_once(f"{err}; its wall time and status are ignored")
        return {}
    if (problem := _cell_info_problem(info)) is not None:
        warn_once(f"{path}: {problem}; its wall time and status are ignored")
        return {}
    return info


def _cell_info_problem(info: Any) -> str | None:
    if not isinstance(info, dict):
        return "not a JSON object"
    wall = info.get("wall_s", 0.0)
    if isinstance(wall, bool) or not isinstance(wall, int | float) or not 0 <= wall <= WALL_MAX:
        return f"wall_s is not a number of seconds (0 to {WALL_MAX:.0e})"
    attempts = info.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        return "attempts is not a count"
    if not isinstance(info.get("status", ""), str) or not isinstance(info.get("error", ""), str | None):
        return "status or error is not text"
    return None


def _last_error(log: Path, since: int) -> str | None:
    """The last ``error:`` line the cell wrote in this attempt (its log from byte ``since``)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(since)
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    errors = [ln[len("error: ") :] for ln in lines if ln.startswith("error: ")]
    return errors[-1] if errors else None


@dataclass
class _Running:
    cell: Cell
    proc: multiprocessing.process.BaseProcess
    start: float
    log_from: int


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing) for the block; none where the
    platform has no ``fcntl``."""
    with open(path, "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _context(warm: bool):
    """A forkserver that has imported fedrec and torch once: each cell is a fork of it (fresh state,
    no import cost); spawn where there is no forkserver. ``warm``: some cell compiles its rule check,
    so the forkserver also loads the compiler stack once (fedrec.experiments.warm). A process has one
    forkserver, whose preload is fixed when it starts: a second grid run in the same process (a
    notebook) keeps the first one's, which costs its cells time, never results."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD + (["fedrec.experiments.warm"] if warm else []))
    return ctx


def result_row(grid: Grid, cell: Cell, status: str, error: str | None = None) -> dict[str, Any]:
    """One row of results.parquet: the config columns (``Grid.columns``, from the cell's resolved
    config), cell, run_dir, status (done / failed), error, wall_s (seconds of the cell's processes
    over the attempts the grid recorded), rounds, byzantine_rejected and honest_rejected (over all
    rounds: detection recall and false-rejection rate; NaN without Byzantine clients or in a
    centralized cell), then precision@K and recall@K for every K evaluated."""
    run_dir = grid.run_dir(cell)
    row: dict[str, Any] = {k: config_value(cell.config, k) for k in grid.columns}
    summary = finished_summary(run_dir) if status == "done" else None
    detection = ((summary or {}).get("detection") or {}).get("all_rounds") or {}

    def rate(name: str) -> float:
        value = detection.get(name)
        return float(value) if isinstance(value, int | float) else math.nan

    row.update(
        cell=cell.name, run_dir=str(run_dir), status=status, error=error,
        wall_s=float(_cell_info(run_dir).get("wall_s", math.nan)),
        rounds=(summary or {}).get("rounds"),
        byzantine_rejected=rate("recall"), honest_rejected=rate("false_rejection_rate"),
    )  # fmt: skip
    metrics = (summary or {}).get("metrics") or {}
    for name in ("precision", "recall"):
        for k, value in sorted((metrics.get(name) or {}).items(), key=lambda kv: int(kv[0])):
            row[f"{name}@{k}"] = value
    return row


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as one Parquet table, atomically; a column of mixed kinds becomes strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(dict.fromkeys(k for r in rows for k in r))
    metric = [n for n in names if "@" in n]
    order = [n for n in names if "@" not in n]
    order += sorted(metric, key=lambda n: (n.split("@")[0] != "precision", int(n.split("@")[1])))
    columns = {}
    for name in order:
        values = [r.get(name) for r in rows]
        if name in metric or name in ("wall_s", "byzantine_rejected", "honest_rejected"):
            columns[name] = pa.array([math.nan if v is None else float(v) for v in values], pa.float64())
            continue
        if name in ("rounds", "cell", "run_dir", "status", "error"):
            columns[name] = pa.array(values, pa.int64() if name == "rounds" else pa.string())
            continue
        kinds = {_kind(v) for v in values if v is not None}
        if len(kinds) > 1 or kinds & {"other"}:
            values = [None if v is None else (v if isinstance(v, str) else dumps(v)) for v in values]
        columns[name] = pa.array(values)
    table = pa.table(columns)
    _atomic(path, lambda p: pq.write_table(table, p), unique=True)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int) and not -(2**63) <= v < 2**63:
        return "other"  # past int64 (a defense parameter of 10^20): written as text, not refused by Arrow
    if isinstance(v, int | float):
        return "number"
    return "str" if isinstance(v, str) else "other"


def run_grid(
    grid: Grid, jobs: int = 1, say: Callable[[str], None] = lambda line: None
) -> list[dict[str, Any]]:
    """Run every unfinished cell, ``jobs`` processes at a time; returns the results rows (also in
    OUT/results.parquet). ``say`` gets one line per event (a cell started, finished, failed)."""
    if jobs < 1:
        raise GridError(f"--jobs {jobs}: must be at least 1")
    check_inputs(grid)  # before anything is written (a dry run, plan(), lists a grid without its data)
    warn_once()  # this run says every unusable record once
    check_same_grid(grid)
    out = grid.out
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / "grid.yaml", lambda p: p.write_text(grid.text), unique=True)
    _atomic(out / MANIFEST, lambda p: p.write_text(dumps(manifest(grid), indent=1)), unique=True)
    adopt_earlier_dirs(grid, say)

    status: dict[str, tuple[str, str | None]] = {}  # this run's verdicts: done, failed
    todo = [c for c in grid.cells if finished_summary(grid.run_dir(c)) is None]
    threads = threads_per_job(jobs)
    part = f" (a part of the grid's {len(grid.whole)})" if len(grid.cells) < len(grid.whole) else ""
    say(
        f"{len(grid.cells)} cells{part} in {out}: {len(grid.cells) - len(todo)} done, {len(todo)} to run "
        f"({min(jobs, max(1, len(todo)))} at a time, {threads} thread{'s' * (threads > 1)} each)"
    )
    if todo and (p := projection(grid, jobs))["cell_hours"] is not None:
        say(projected(p))

    finished_rows: dict[str, dict[str, Any]] = {}  # a finished cell's row never changes: built once

    def row(c: Cell) -> dict[str, Any] | None:
        """The cell's row if it ran: finished on disk, else failed (in this run, or as its cell.json
        last recorded: a part run never drops what other parts ran), else None."""
        if c.name in finished_rows or finished_summary(grid.run_dir(c)) is not None:
            return finished_rows.setdefault(c.name, result_row(grid, c, "done"))
        if (verdict := status.get(c.name)) is None:
            info = _cell_info(grid.run_dir(c))
            if info.get("status") != "failed":
                return None
            verdict = ("failed", info.get("error"))
        return result_row(grid, c, *verdict)

    part = {c.name for c in grid.cells}

    def table() -> list[dict[str, Any]]:
        """The whole grid's table into OUT/results.parquet (under a lock: two parts may run side by
        side); returns the rows of this run's part."""
        with _locked(out / ".results.lock"):
            rows = [r for c in grid.whole if (r := row(c)) is not None]
            columns = list(dict.fromkeys(k for r in rows for k in r))
            rows = [{k: r.get(k, math.nan) for k in columns} for r in rows]  # a failed cell has no P@K: NaN
            if rows:
                write_results(out / RESULTS, rows)
        return [r for r in rows if r["cell"] in part]

    ctx = _context(any(compiles(c.config) for c in todo))
    running: list[_Running] = []
    finished = len(grid.cells) - len(todo)

    def launch(cell: Cell) -> None:
        run_dir = _prepare_dir(grid, cell)
        with open(run_dir / LOG, "ab") as fh:
            start = fh.tell()
            fh.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt (grid pid {os.getpid()})\n".encode())
        proc = ctx.Process(target=cell_process, args=(str(run_dir), os.getpid(), threads), name=cell.name)
        proc.start()
        running.append(_Running(cell, proc, time.perf_counter(), start))

    def reap(r: _Running, ended: float) -> None:
        nonlocal finished
        run_dir = grid.run_dir(r.cell)
        wall = ended - r.start
        info = _cell_info(run_dir)
        rc = r.proc.exitcode
        if finished_summary(run_dir) is not None:
            state, error = "done", None
        else:
            error = _last_error(run_dir / LOG, r.log_from)
            if error is None:
                error = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}, no summary.json"
            state = "failed"
        info = {"cell": r.cell.name, "wall_s": float(info.get("wall_s", 0.0)) + wall,
                "attempts": int(info.get("attempts", 0)) + 1, "status": state, "error": error}  # fmt: skip
        _atomic(run_dir / CELL_INFO, lambda p: p.write_text(dumps(info, indent=1)), unique=True)
        status[r.cell.name] = (state, error)
        finished += 1
        summary = finished_summary(run_dir) or {}
        p5 = ((summary.get("metrics") or {}).get("precision") or {}).get("5")
        what = (f"P@5 {p5:.4f}" if p5 is not None else "done") if state == "done" else f"FAILED: {error}"
        say(f"[{finished}/{len(grid.cells)}] {r.cell.name}: {what} ({wall:.1f} s)")
        try:
            table()
        except OSError as e:  # a full disk: the cells keep their results; the next reap writes the table
            say(
                f"{out / RESULTS} not updated ({e}); the cells' folders keep their results, next try after the next cell"
            )

    try:
        while todo or running:
            while todo and len(running) < jobs:
                launch(todo.pop(0))
            multiprocessing.connection.wait([r.proc.sentinel for r in running])
            ended = time.perf_counter()
            done = [r for r in running if r.proc.exitcode is not None]
            for r in done:
                running.remove(r)
                r.proc.join()
            try:  # the next cells start before the table is rewritten
                while todo and len(running) < jobs:
                    launch(todo.pop(0))
            finally:  # a launch that fails (a full disk) still records the cells that ended
                for r in done:
                    reap(r, ended)
    except BaseException:  # Ctrl-C or a bug here: stop the cells (their checkpoints stay for a rerun)
        for r in running:
            r.proc.terminate()
        for r in running:
            r.proc.join()
        raise
    try:
        return table()
    except OSError as e:  # the final table (a full disk): one line, the cells' folders keep their results
        raise GridError(
            f"{out / RESULTS} not written ({e}); the cells keep their results: rerun to write it"
        ) from e


__all__ = [
    "Cell",
    "Grid",
    "GridError",
    "check_inputs",
    "load_grid",
    "plan",
    "result_row",
    "run_grid",
    "threads_per_job",
    "write_results",
]
