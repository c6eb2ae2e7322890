"""The ``fedrec`` command line (typer + rich). Tables go to stdout, logs and progress to stderr;
``--json`` prints one JSON object on stdout instead of a table (DESIGN.md section 10)."""

from __future__ import annotations

import errno
import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedrec.config import ConfigError, load_config, load_yaml, unread_key
from fedrec.data import DATASETS, DataError
from fedrec.runs import dumps

app = typer.Typer(
    help="Byzantine-robust federated recommendation (FISM/MF + BPR, Adam, gradient-based filtering).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: list, statistics, download.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)

DEFAULT_KS = (1, 2, 3, 4, 5)


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Bad input ends the command with one line on stderr and exit code 2, never a traceback."""
    try:
        yield
    except (DataError, ConfigError, ValueError, FileNotFoundError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as e:  # a path the user gave that the system refuses (a 300-character name)
        if e.errno not in _PATH_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename is not None else ""
        err.print(f"[bold red]error:[/] {where}{e.strerror}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None


# errors that say a given path is unusable (bad input), unlike e.g. a full disk
_PATH_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS}
)  # EPERM / EROFS: /sys or a read-only mount, which os.access may call writable for root


def _notes(lines: list[str]) -> None:
    """Notes on stderr (e.g. inputs skipped), as plain text."""
    for line in lines:
        err.print(line, highlight=False, markup=False, soft_wrap=True)


def _print_json(obj: Any) -> None:
    sys.stdout.write(dumps(obj) + "\n")  # strict: null for NaN


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")] = False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


def metric_ks(metrics: dict[str, dict[str, Any]]) -> list[int]:
    """The K values a summary's metrics hold (eval.ks need not be 1..5), ascending."""
    return sorted(
        {int(k) for by_k in metrics.values() if isinstance(by_k, dict) for k in by_k if str(k).isdigit()}
    )


def metrics_table(metrics: dict[str, dict[str, float]], ks=DEFAULT_KS, title: str | None = None) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for k in ks:
        table.add_column(f"@{k}", justify="right")
    names = {"precision": "Precision", "recall": "Recall", "ndcg": "NDCG", "hit": "HR"}
    for m, label in names.items():
        if m in metrics:
            table.add_row(label, *(f"{metrics[m].get(str(k), float('nan')):.4f}" for k in ks))
    return table


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see configs/).")] = None,
    dataset: Annotated[str | None, typer.Option(help=f"{', '.join(DATASETS)} or a .inter file.")] = None,
    model: Annotated[
        str | None, typer.Option(help="fism | mf; centralized also implicit-bpr | recbole-bpr | pop")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="federated | centralized")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam | sgd | momentum | adagrad | rmsprop")] = None,
    rounds: Annotated[
        int | None, typer.Option(help="Federated rounds (default: federated.epochs / e).")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs (federated: 1 epoch = 1/e rounds).")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset root (else $FEDREC_DATA_DIR).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where run directories go.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: section.key=value.")] = None,
    attack: Annotated[str | None, typer.Option(help="Byzantine behaviour (see `fedrec attacks`).")] = None,
    byzantine: Annotated[float | None, typer.Option(help="Share of Byzantine clients, e.g. 0.4.")] = None,
    defense: Annotated[str | None, typer.Option(help="Server defense (see `fedrec defenses`).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue a killed federated run directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> None:
    """Train a model and print its Precision@K / Recall@K table; writes a run directory."""
    with _clean_errors():
        given = {k: v for k, v in locals().items() if k not in ("resume", "as_json", "config") and v}
        if resume is not None:
            from fedrec.federation.runner import RunFinished, resume_federated

            if given or config is not None:  # a resumed run is the run its config.yaml describes
                flag = {"out_dir": "--out", "set_": "--set"}
                names = ", ".join(flag.get(k, f"--{k.replace('_', '-')}") for k in given) or "--config"
                raise ConfigError(
                    f"--resume continues the run as its config.yaml says: {names} cannot change it"
                )

            try:
                with _progress("round") as bar:
                    summary, run_dir = resume_federated(resume, progress=_round_progress(bar))
            except RunFinished as done:  # a no-op: say so, touch nothing
                err.print(str(done), highlight=False, markup=False, soft_wrap=True)
                if as_json:
                    _print_json(done.summary)
                return
        else:
            given = _train_overrides(locals(), config) + list(set_ or [])
            cfg = load_config(config, given)
            if (unread := unread_key(cfg, [text.partition("=")[0].strip() for text in given])) is not None:
                raise ConfigError(
                    f"{unread}: the most-popular baseline (pop) trains nothing and does not read it"
                )
            if cfg.train.mode == "federated":
                from fedrec.federation.runner import run_federated

                with _progress("round") as bar:
                    summary, run_dir = run_federated(cfg, progress=_round_progress(bar))
            elif cfg.train.mode == "centralized":
                from fedrec.baselines.runner import run_centralized

                with _progress("epoch") as bar:
                    summary, run_dir = run_centralized(cfg, progress=_epoch_progress(bar))
            else:
                raise ConfigError(f"train.mode={cfg.train.mode!r}: expected 'federated' or 'centralized'")
    if as_json:
        _print_json(summary)
        return
    title = f"{summary['dataset']} · {summary['model']} · {summary['mode']} · {summary['seconds']:.1f}s"
    out.print(metrics_table(summary["metrics"], ks=metric_ks(summary["metrics"]) or DEFAULT_KS, title=title))
    det = summary.get("detection")
    honest_rejected = bool(det) and (det["all_rounds"].get("false_rejection_rate") or 0) > 0
    if det and (
        summary.get("defense", "none") != "none" or summary.get("byzantine_clients") or honest_rejected
    ):
        a = det["all_rounds"]
        if summary.get("byzantine_clients"):
            out.print(
                f"defense {summary['defense']} vs {summary['attack']['name']}: Byzantine rejected "
                f"{a['recall']:.1%}, honest rejected {a['false_rejection_rate']:.1%}, precision "
                f"{a['precision']:.1%} (f = {det['f']})"
            )
        else:  # no Byzantine client: recall and precision have nothing to count
            out.print(
                f"defense {summary['defense']}, no attack: honest rejected {a['false_rejection_rate']:.1%}"
            )
        share = a.get("forged_share_rejected")
        if share is not None and not math.isnan(share):  # NaN: nothing was forged
            out.print(
                f"share of the forged gradient (|g~ - g|^2) rejected {share:.2%}; "
                f"uploads forging at least their own gradient's norm: {a['substantial_byzantine']}, "
                f"rejected {a['substantial_recall']:.1%}"
            )
    for line in summary.get("warnings") or ():
        err.print(f"[bold yellow]warning:[/] {line}", highlight=False, markup=True, soft_wrap=True)
    err.print(f"run directory: {run_dir}")


# options that only federated training reads: without --mode (and without train.mode in the -c file)
# they make the run federated; with a centralized mode they are an error, never ignored
FEDERATED_ONLY = {
    "attack": "--attack",
    "byzantine": "--byzantine",
    "defense": "--defense",
    "rounds": "--rounds",
}
# what --epochs sets for each centralized model (pop trains nothing)
CENTRALIZED_EPOCHS = {
    "recbole-bpr": "centralized.recbole_epochs",
    "implicit-bpr": "centralized.implicit_iterations",
}


def _config_mode(config: Path | None) -> str | None:
    """``train.mode`` as the -c file states it, or None (unreadable files fail later, with their line)."""
    if config is None or not config.is_file():
        return None
    import yaml

    try:
        doc = load_yaml(config.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return None
    train = doc.get("train") if isinstance(doc, dict) else None
    return train.get("mode") if isinstance(train, dict) else None


def _train_overrides(opts: dict[str, Any], config: Path | None = None) -> list[str]:
    """The typed shortcut options of ``train`` as config overrides (before any --set). The mode follows
    from the options: ``--mode``, else the -c file's ``train.mode``, else federated when a federated-only
    option is given (centralized otherwise, the default)."""
    keys = {
        "dataset": "data.dataset", "model": "model.name", "mode": "train.mode", "optimizer": "train.optimizer",
        "rounds": "federated.rounds", "seed": "train.seed", "data_dir": "data.data_dir", "device": "run.device",
        "out_dir": "run.out_dir", "attack": "attack.name", "byzantine": "attack.fraction",
        "defense": "defense.name",
    }  # fmt: skip
    fed = [flag for name, flag in FEDERATED_ONLY.items() if opts.get(name) is not None]
    mode = opts.get("mode") or _config_mode(config) or ("federated" if fed else None)
    if mode == "centralized" and fed:
        raise ConfigError(f"{', '.join(fed)}: only federated training reads it, and the mode is centralized")
    ds = opts.get("dataset")
    if isinstance(ds, str) and ds.endswith(".inter") and not Path(ds).expanduser().is_absolute():
        # config.yaml must name the file from anywhere: evaluate or resume from another folder missed it
        opts = {**opts, "dataset": str(Path(ds).expanduser().resolve())}
    overrides = [f"{key}={opts[name]}" for name, key in keys.items() if opts.get(name) is not None]
    if mode is not None and opts.get("mode") is None:
        overrides.insert(0, f"train.mode={mode}")
    if opts.get("epochs") is not None:
        # --epochs sets the length of whichever mode runs
        epochs = opts["epochs"]
        if not (math.isfinite(epochs) and epochs > 0):  # int() below would raise on inf / nan
            raise ConfigError(f"--epochs={epochs}: expected a finite number > 0")
        model = opts.get("model")
        if (mode or "centralized") == "centralized" and model == "pop":
            raise ConfigError("--epochs: the most-popular baseline (pop) trains nothing")
        sets = [t.partition("=") for t in opts.get("set_") or []]
        final = next(
            (v.strip() for k, _, v in reversed(sets) if k.strip() == "train.mode"), mode
        )  # --set wins
        if (final or "centralized") == "centralized" and not float(epochs).is_integer():  # was cut to int
            raise ConfigError(f"--epochs={epochs}: centralized training runs whole epochs")
        overrides += [f"federated.epochs={epochs}", f"centralized.epochs={int(epochs)}"]
        if model in CENTRALIZED_EPOCHS:
            overrides.append(f"{CENTRALIZED_EPOCHS[model]}={int(epochs)}")
    return overrides


def _epoch_progress(bar):
    progress, task = bar

    def on_progress(ev: dict[str, Any]) -> None:
        p5 = f"  P@5 {ev['P@5']:.4f}" if ev.get("P@5") is not None else ""
        progress.update(task, total=ev["epochs"], completed=ev["epoch"], status=f"loss {ev['loss']:.1f}{p5}")

    return on_progress


def _round_progress(bar):
    progress, task = bar
    last_p5: list[float] = []

    def on_progress(ev: dict[str, Any]) -> None:
        if ev.get("P@5") is not None:
            last_p5[:] = [ev["P@5"]]
        p5 = f"  P@5 {last_p5[0]:.4f}" if last_p5 else ""
        speed = ev["t"] / ev["elapsed"] if ev.get("elapsed") else 0.0
        status = f"loss {ev['loss']:.1f}{p5}  {speed:.1f} rounds/s"
        progress.update(task, total=ev["rounds"], completed=ev["t"], status=status)

    return on_progress


@contextmanager
def _progress(unit: str):
    """A rich progress bar on stderr that appears with the first update, so an error while loading
    data stays a single line."""
    progress = Progress(
        TextColumn(f"[bold]{unit}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=err,
    )
    task = progress.add_task(unit, total=None, status="")

    class LazyBar:
        started = False
        said = -1  # the last tenth of the run reported as a plain line

        def update(self, *args, **kwargs) -> None:
            if not err.is_terminal:
                # a pipe or a log file gets no live bar: one plain line per tenth of the run instead
                total, done = kwargs.get("total"), kwargs.get("completed")
                if total and done is not None and (tenth := int(10 * done / total)) > self.said:
                    self.said = tenth
                    status = kwargs.get("status", "")
                    err.print(f"{unit} {done}/{total} {status}".rstrip(), highlight=False, markup=False)
                return
            if not self.started:
                progress.start()
                self.started = True
            progress.update(*args, **kwargs)

    bar = LazyBar()
    try:
        yield bar, task
    finally:
        if bar.started:
            progress.stop()


def _summary_problem(summary: Any) -> str | None:
    """Why ``fedrec report`` cannot tabulate a parsed summary.json (None when it can)."""
    if not isinstance(summary, dict):
        return f"not a run summary (a JSON {type(summary).__name__}, not an object)"
    metrics = summary["metrics"]
    for name in ("precision", "recall"):
        by_k = metrics.get(name)
        if not isinstance(by_k, dict) or not by_k:
            return f"no {name}@K in its metrics"
        for k, v in by_k.items():  # null: a NaN metric (strict JSON)
            if not str(k).isdigit() or not (v is None or isinstance(v, int | float)):
                return f"{name}@{k} = {v!r} is not a metric value"
    missing = [key for key in ("dataset", "model", "mode") if not isinstance(summary.get(key), str)]
    if not isinstance(summary.get("seconds"), int | float):
        missing.append("seconds")
    return f"malformed run summary (no {', '.join(missing)})" if missing else None


def _report_ks(rows: list[dict[str, Any]]) -> list[int]:
    """The K columns of ``report``: K = 1..5 where the runs have them; a run evaluated at none of those
    (e.g. eval.ks = [10, 20]) adds its own K, so every run shows its numbers."""
    have = [set(metric_ks({m: s["metrics"][m] for m in ("precision", "recall")})) for s in rows]
    ks = {k for h in have for k in h if k in DEFAULT_KS}
    for h in have:
        if not h & ks:
            ks |= h
    return sorted(ks)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (with summary.json).")],
    markdown: Annotated[bool, typer.Option(help="Print a Markdown table (for docs/RESULTS.md).")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Tabulate P@1..5 / R@1..5 of finished runs (the K a run has, when its eval.ks lacks 1..5);
    unfinished or unreadable directories are skipped, each with a line on stderr (exit 2 only when
    none is left)."""
    from fedrec.runs import read_summary

    def skip(d: Path, why: str) -> None:
        _notes([f"skipped {d}: {why}"])

    with _clean_errors():
        rows = []
        for d in run_dirs:
            if not (d / "summary.json").is_file():
                skip(d, "no summary.json (unfinished, or not a run directory)")
                continue
            try:
                summary = read_summary(d)
            except UnicodeDecodeError:
                skip(d / "summary.json", "not UTF-8 text")
                continue
            except ValueError as e:  # json.JSONDecodeError: truncated or not JSON
                skip(d / "summary.json", f"not valid JSON ({e})")
                continue
            except RecursionError:  # [[[...]]] nested past the parser
                skip(d / "summary.json", "not valid JSON (nested too deep)")
                continue
            except OSError as e:
                skip(d / "summary.json", f"cannot be read ({e.strerror or e})")
                continue
            if isinstance(summary, dict) and not isinstance(summary.get("metrics"), dict):
                skip(d, "no P@K / R@K in its summary (a testbed run?)")  # accuracy, not P@K
                continue
            if (why := _summary_problem(summary)) is not None:
                skip(d / "summary.json", why)
                continue
            rows.append({**summary, "run": d.name})
        if not rows:
            raise FileNotFoundError("no finished run directory among the arguments")
    if as_json:
        _print_json({"runs": rows})
        return

    def threat(s: dict[str, Any]) -> tuple[str, str]:
        a = s.get("attack") or {}
        name = a.get("name", "none") if isinstance(a, dict) else str(a)
        frac = a.get("fraction") if isinstance(a, dict) else None
        shown = name != "none" and isinstance(frac, int | float) and frac
        return (f"{name} {frac:g}" if shown else str(name)), str(s.get("defense", "none"))

    def num(v: Any) -> str:
        return "–" if v is None else f"{v:.4f}"  # None: a K the run lacks, or a NaN metric

    def cells(s: dict[str, Any], ks, full: bool = False) -> list[str]:
        m = s["metrics"]
        return (
            [s["run"], *([s["dataset"], s["model"]] if full else []), s["mode"], *threat(s)]
            + [num(m[name].get(str(k))) for name in ("precision", "recall") for k in ks]
            + [f"{s['seconds']:.0f}"]
        )

    ks = _report_ks(rows)
    if markdown:
        head = ["run", "dataset", "model", "mode", "attack", "defense"]
        head += [f"P@{k}" for k in ks] + [f"R@{k}" for k in ks] + ["seconds"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for s in rows:
            print("| " + " | ".join(cells(s, ks, full=True)) + " |")
        return
    # the terminal table: P@5 and R@5 only (else the smallest K), so it reads at 100 columns (--markdown
    # has every K)
    k = 5 if 5 in ks else ks[0]
    table = Table("run", "mode", "attack", "defense", f"P@{k}", f"R@{k}", "s")
    for s in rows:
        table.add_row(*cells(s, (k,)))
    out.print(table)


@app.command()
def experiment(
    grid_file: Annotated[Path, typer.Argument(help="Grid YAML (see configs/grids/).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder (else the grid's out:, else runs/<name>).")
    ] = None,
    jobs: Annotated[
        int, typer.Option(help="Cells run in parallel, one torch thread each (or $OMP_NUM_THREADS).")
    ] = 1,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value: narrows a grid key's list to one value, else adds to set:."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the cells and their state; run nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results (or the plan) as JSON.")] = False,
) -> None:
    """Run a grid of configs (lists expand to every combination) in parallel processes into one Parquet
    table, OUT/results.parquet; finished cells are skipped and killed ones resume. The grid is checked
    whole before anything runs."""
    from fedrec.experiments.grid import GridError, load_grid, plan, projected, projection, run_grid

    with _clean_errors():
        if jobs < 1:
            raise GridError(f"--jobs {jobs}: must be at least 1")
        grid = load_grid(grid_file, out=out_dir, overrides=list(set_ or []))
    if dry_run:
        cells, cost = plan(grid), projection(grid, jobs)
        if as_json:
            _print_json({"grid": str(grid_file), "out": str(grid.out), "cells": cells, "projection": cost})
            return
        # the name says the values (--json has them by key)
        table = Table("cell", "state", title=f"{len(cells)} cells -> {grid.out}")
        table.columns[0].overflow = "fold"
        table.columns[1].no_wrap = True
        for c in cells:
            table.add_row(c["cell"], c["status"])
        out.print(table)
        out.print(projected(cost), highlight=False, soft_wrap=True)
        return
    with _clean_errors():
        rows = run_grid(
            grid, jobs, say=lambda line: err.print(line, highlight=False, markup=False, soft_wrap=True)
        )
    failed = [r for r in rows if r["status"] == "failed"]
    if as_json:
        _print_json({"grid": str(grid_file), "out": str(grid.out), "results": str(grid.out / "results.parquet"),
                     "cells": rows})  # fmt: skip
    else:
        out.print(_results_table(rows, grid.keys))
    err.print(f"results: {grid.out / 'results.parquet'}", highlight=False)
    if failed:
        err.print(
            f"{len(failed)} of {len(rows)} cells failed (their cell.log says why), e.g. "
            f"{failed[0]['cell']}: {failed[0]['error']}",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(1)


def _results_table(rows: list[dict[str, Any]], keys: list[str]) -> Table:
    """P@K and R@K at K = 5 (else the smallest K), detection and seconds per cell: reads at 100 columns."""
    ks = sorted({int(c.split("@")[1]) for r in rows for c in r if c.startswith("precision@")})
    k = 5 if 5 in ks else (ks[0] if ks else 5)

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    table = Table("cell", "status", f"P@{k}", f"R@{k}", "Byz rej", "hon rej", "s")
    table.columns[0].overflow = "fold"
    for r in rows:
        table.add_row(
            r["cell"], r["status"], num(r.get(f"precision@{k}"), ".4f"), num(r.get(f"recall@{k}"), ".4f"),
            num(r["byzantine_rejected"], ".1%"), num(r["honest_rejected"], ".1%"), num(r["wall_s"], ".0f"),
        )  # fmt: skip
    return table


@app.command(context_settings={"allow_extra_args": True})
def evaluate(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run directory (with config.yaml and checkpoint.pt).")],
    ks: Annotated[
        list[str] | None,
        typer.Option("--ks", help="Cut-offs, e.g. --ks 1 5 10 (default: the run's eval.ks)."),
    ] = None,
    users: Annotated[
        str, typer.Option(help="benign: training's evaluated users (non-Byzantine); all: every user.")
    ] = "benign",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Re-score a run's saved model at other K or on other users (same split, same evaluator)."""
    from fedrec.experiments.evaluate import evaluate_run

    with _clean_errors():
        # click gives an option one value: the rest of `--ks 1 5 10` arrive as extra arguments
        paths = [str(run_dir), *ctx.args]
        extra = [a for a in paths if a.isdigit() and not Path(a).exists()]
        rest = [a for a in paths if a not in extra]
        if extra and ks is None:
            raise ConfigError(f"unexpected argument {extra[0]!r} (K values go after --ks)")
        if len(rest) != 1:
            raise ConfigError(f"expected one run directory, got {len(rest)}: {' '.join(rest)}")
        values = [v for text in [*(ks or []), *extra] for v in text.replace(",", " ").split()]
        if not all(v.isascii() and v.isdigit() and int(v) > 0 for v in values) or (
            ks is not None and not values
        ):
            raise ConfigError(f"--ks {' '.join(values)}: expected positive integers")
        res = evaluate_run(Path(rest[0]), [int(v) for v in values] or None, users)
    if as_json:
        _print_json(res)
        return
    where = "" if res["round"] is None else f" · round {res['round']} of {res['rounds']}"
    title = (
        f"{res['dataset']} · {res['model']} · {res['mode']}{where} · {res['evaluated_users']} {users} users"
    )
    out.print(metrics_table(res["metrics"], ks=res["ks"], title=title))
    if res["round"] is not None and res["round"] < res["rounds"]:
        err.print(f"note: the checkpoint is at round {res['round']}; the run was not finished")


@app.command()
def defenses(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The server defenses, by config name (--defense NAME; --set defense.params.NAME=VALUE), and the
    robust rules they are built on."""
    from fedrec.defenses import DEFENSES

    def jsonable(v: Any) -> Any:
        return v if v is None or isinstance(v, bool | int | float | str) else repr(v)

    rows = [{"name": d.name, "rule": d.rule, "space": d.space, "scope": d.scope, "verify": d.verify,
             "params": {k: jsonable(v) for k, v in {**d.spec.params, **d.params}.items()},
             "resilient": d.spec.resilient, "description": d.description}
            for d in DEFENSES.values()]  # fmt: skip
    if as_json:
        _print_json({"defenses": rows})
        return
    # names never wrap; space, scope and the verifier go with the rule, so the table reads at 100 columns
    table = Table("name", "rule · space · scope", "parameters", "what it does")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        where = f"{r['rule']} · {r['space']} · {r['scope']}" + (" · verify" if r["verify"] else "")
        table.add_row(r["name"], where, params, r["description"])
    out.print(table)


@app.command()
def attacks(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The Byzantine attacks, by config name (--attack NAME)."""
    import dataclasses as dc

    from fedrec.attacks import ATTACKS

    rows = [
        {"name": name, "rule_consistent": cls.rule_consistent, "omniscient": cls.omniscient,
         "params": {f.name: f.default for f in dc.fields(cls)}, "description": (cls.__doc__ or "").strip().splitlines()[0]}
        for name, cls in ATTACKS.items()
    ]  # fmt: skip
    if as_json:
        _print_json({"attacks": rows})
        return
    table = Table("name", "passes the rule verifier", "omniscient", "parameters", "what it does")
    table.columns[0].no_wrap = True
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        table.add_row(
            r["name"],
            "yes" if r["rule_consistent"] else "no",
            "yes" if r["omniscient"] else "no",
            params,
            r["description"],
        )
    out.print(table)


@app.command()
def testbed(
    rule: Annotated[str | None, typer.Option(help="Robust rule (fedrec.defenses.base.RULES).")] = None,
    attack: Annotated[str | None, typer.Option(help="Attack (see `fedrec attacks`) or none.")] = None,
    momentum: Annotated[float | None, typer.Option(help="Worker momentum beta in [0, 1).")] = None,
    byzantine: Annotated[int | None, typer.Option(help="Number f of Byzantine workers.")] = None,
    workers: Annotated[int | None, typer.Option(help="Number n of workers (default 15).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random draw.")] = None,
    steps: Annotated[int | None, typer.Option(help="Server steps.")] = None,
    model: Annotated[str | None, typer.Option(help="softmax | mlp")] = None,
    shards: Annotated[str | None, typer.Option(help="iid | sorted (label-sorted shards)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where run directories go.")] = Path("runs"),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override: lr=0.1, rule_params.x=1, attack_params.z=1.5."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> None:
    """Dense testbed on scikit-learn's digits (RESAM / SignGuard setting); writes a run directory."""
    from fedrec.testbed import make_config, run_testbed
    from fedrec.testbed.run import prepare

    opts = {"rule": rule, "attack": attack, "momentum": momentum, "f": byzantine, "n": workers, "seed": seed,
            "steps": steps, "model": model, "shards": shards}  # fmt: skip
    with _clean_errors():
        cfg = make_config(list(set_ or []), **{k: v for k, v in opts.items() if v is not None})
        prepare(cfg)  # the rule, its parameters and the attack, before any work
        with _progress("step") as bar:
            progress, task = bar
            summary, run_dir = run_testbed(
                cfg, out_dir, progress=lambda t: progress.update(task, completed=t, total=cfg.steps)
            )
    if as_json:
        _print_json(summary)
        return
    out.print(
        f"testbed {cfg.model} n={cfg.n} f={cfg.f} beta={cfg.momentum} · {cfg.rule} vs {cfg.attack}: "
        f"final accuracy {summary['final_accuracy']:.4f}, max {summary['max_accuracy']:.4f} "
        f"({cfg.steps} steps, {summary['seconds']:.1f}s)",
        highlight=False,
    )
    err.print(f"run directory: {run_dir}")


demo_app = typer.Typer(help="Short demonstrations.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@demo_app.command("camouflage")
def demo_camouflage(
    dataset: Annotated[str, typer.Option(help="Dataset (default: the embedded ML-100K).")] = "ml100k",
    byzantine: Annotated[float, typer.Option(help="Share of Byzantine clients.")] = 0.4,
    rounds: Annotated[int, typer.Option(help="Rounds of each short run.")] = 500,
    lr: Annotated[
        float, typer.Option(help="Adam's step size (the paper's 1e-3 needs ~10,000 rounds).")
    ] = 0.01,
    seed: Annotated[int, typer.Option()] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset root (else $FEDREC_DATA_DIR).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Camouflaged Byzantine uploads carry the honest parameters but far-away gradients: parameter-space
    Krum keeps them, gradient-space Krum (A-RFRS) rejects them (paper 000 Section 4)."""
    from fedrec.experiments.camouflage_demo import run_demo

    with _clean_errors(), _progress("round") as bar:
        progress, task = bar

        def on_progress(name: str, ev: dict[str, Any]) -> None:
            progress.update(task, total=ev["rounds"], completed=ev["t"], status=f"defense {name}")

        res = run_demo(dataset=dataset, fraction=byzantine, rounds=rounds, seed=seed, lr=lr,
                       data_dir=None if data_dir is None else str(data_dir), progress=on_progress)  # fmt: skip
    if as_json:
        _print_json(res)
        return
    r = res["round"]
    out.print(
        f"[bold]Round {r['round']}[/]: {r['clients']} uploads, {r['byzantine']} Byzantine (f = {r['f']}); "
        f"each Byzantine upload lists {r['rows_listed_per_byzantine_upload']} rows."
    )
    out.print(
        f"  max |theta_byzantine - theta_honest| = {r['max_abs_theta_difference']:.3g}   (parameters: camouflaged)"
    )
    out.print(f"  max |m_byzantine - m_honest|         = {r['max_abs_m_difference']:.3g}")
    out.print(
        f"  ||g_byzantine - g_honest|| = {r['gradient_distance']:.3g}  vs  ||g_honest|| = "
        f"{r['honest_gradient_norm']:.3g}   (gradients: far apart)"
    )
    table = Table(
        "defense", "space", "Byzantine kept", "honest kept", title="who each defense keeps in that round"
    )
    from fedrec.defenses import DEFENSES

    for name, k in r["kept"].items():
        table.add_row(name, DEFENSES[name].space, f"{k['byzantine_kept']} / {r['byzantine']}",
                      f"{k['honest_kept']} / {r['clients'] - r['byzantine']}")  # fmt: skip
    out.print(table)
    table = Table("defense", *[f"P@{k}" for k in DEFAULT_KS], "Byzantine rejected", "honest rejected",
                  title=f"{res['dataset']}, {res['rounds']} rounds, lr {res['lr']:g}, {res['fraction']:.0%} camouflage on touched rows",
                  caption="clean: the same run without Byzantine clients")  # fmt: skip
    for name, run in res["runs"].items():
        byz = "—" if run["byzantine_rejected"] is None else f"{run['byzantine_rejected']:.1%}"
        table.add_row(name,
                      *[f"{run['precision'][str(k)]:.4f}" for k in DEFAULT_KS], byz,
                      f"{run['honest_rejected']:.1%}")  # fmt: skip
    out.print(table)
    out.print("[bold]Verdict[/]")
    for c in res["verdict"]:
        mark = "[green]yes[/]" if c["holds"] else "[red]no[/]"
        out.print(f"  {mark}  {c['claim']}\n         {c['figures']}", highlight=False, soft_wrap=True)


# ---- fedrec plot: figures from run directories and grid results (issue 13 item 4) -----------------
plot_app = typer.Typer(
    help="Figures (PNG; SVG too with --svg) from run directories and grid results, and paper 000's.",
    no_args_is_help=True,
)
app.add_typer(plot_app, name="plot")
PlotOut = Annotated[Path, typer.Option("--out", help="Folder the figures go to.")]
PlotSvg = Annotated[bool, typer.Option("--svg", help="Also write an SVG.")]
PlotName = Annotated[str | None, typer.Option("--name", help="File name, without extension.")]
PlotRuns = Annotated[list[Path], typer.Argument(help="Finished federated run directories.")]
PlotLabels = Annotated[list[str] | None, typer.Option("--label", help="Legend label, one per run, in order.")]


def _plot_save(fig, out_dir: Path, stem: str, svg: bool) -> None:
    from fedrec.experiments.plots import save

    for path in save(fig, out_dir, stem, svg=svg):
        out.print(str(path), highlight=False, soft_wrap=True)


def _check_plot_name(name: str | None) -> None:
    """--name is a file inside --out: a separator or '..' would write the figure elsewhere (checked
    before any work)."""
    from fedrec.runs import run_name_problem

    if name and (why := run_name_problem(name, "the figure's file")) is not None:
        raise ValueError(f"--name {name!r}: {why}")


def _plot_labels(labels: list[str] | None, runs: list[Path]) -> list[str] | None:
    if labels and len(labels) != len(runs):
        raise ValueError(f"--label given {len(labels)} times for {len(runs)} run directories")
    return labels or None


@plot_app.command("curves")
def plot_curves(
    run_dirs: PlotRuns,
    metric: Annotated[str, typer.Option(help="precision | recall | ndcg | hit")] = "precision",
    k: Annotated[int, typer.Option("--k", help="The K of metric@K.")] = 5,
    window: Annotated[int, typer.Option(help="Rounds in the loss's rolling mean.")] = 50,
    label: PlotLabels = None,
    out_dir: PlotOut = Path("docs/figures"),
    svg: PlotSvg = False,
    name: PlotName = None,
) -> None:
    """metric@K over rounds (and the training loss, where checkpoint.pt recorded it), one line per run."""
    from fedrec.experiments.plots import curves_figure, load_run

    with _clean_errors():
        _check_plot_name(name)
        labels = _plot_labels(label, run_dirs)
        runs = [load_run(d, losses=True) for d in run_dirs]
        fig = curves_figure(runs, metric=metric, k=k, labels=labels, loss_window=window)
        _plot_save(fig, out_dir, name or "curves", svg)


@plot_app.command("detection")
def plot_detection(
    run_dirs: PlotRuns,
    window: Annotated[int, typer.Option(help="Rounds pooled in each point (rolling window).")] = 100,
    label: PlotLabels = None,
    out_dir: PlotOut = Path("docs/figures"),
    svg: PlotSvg = False,
    name: PlotName = None,
) -> None:
    """Share of the Byzantine and of the honest uploads rejected over rounds, one line per run."""
    from fedrec.experiments.plots import detection_figure, load_run

    with _clean_errors():
        _check_plot_name(name)
        labels = _plot_labels(label, run_dirs)
        runs = [load_run(d, rounds=True) for d in run_dirs]
        _plot_save(detection_figure(runs, window=window, labels=labels), out_dir, name or "detection", svg)


MAX_FIG1_ROUND = 100_000  # paper 000's Figure 1 projects round 24


@plot_app.command("fig1")
def plot_fig1(
    dataset: Annotated[
        str, typer.Option(help="Dataset (default: the embedded ML-100K) or a .inter file.")
    ] = "ml100k",
    model: Annotated[str, typer.Option(help="mf (the paper's) | fism")] = "mf",
    attack: Annotated[str, typer.Option(help="The Byzantine clients' attack.")] = "camouflage",
    round_: Annotated[int, typer.Option("--round", help="The round whose uploads are projected.")] = 24,
    honest: Annotated[int, typer.Option(help="Benign clients in that round.")] = 58,
    byzantine: Annotated[int, typer.Option(help="Byzantine clients in that round.")] = 32,
    seed: Annotated[int, typer.Option()] = 0,
    lr: Annotated[float, typer.Option(help="Adam's eta (paper 000: 1e-3).")] = 1e-3,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset root (else $FEDREC_DATA_DIR).")] = None,
    out_dir: PlotOut = Path("docs/figures"),
    svg: PlotSvg = False,
    name: PlotName = None,
) -> None:
    """Paper 000 Figure 1: PCA of the uploaded parameters and of the reconstructed gradients of one
    round's clients (a short run: every round samples honest + byzantine clients, no defense)."""
    from fedrec.experiments.figure1 import figure1_config, figure1_data
    from fedrec.experiments.plots import fig1_figure

    with _clean_errors():
        _check_plot_name(name)
        if model not in ("mf", "fism"):
            raise ValueError(f"--model {model!r}: expected mf or fism")
        # the figure runs to that round with every round recorded: 1e11 asked for 800 GB
        if not 1 <= round_ <= MAX_FIG1_ROUND:
            raise ValueError(f"--round {round_}: expected 1 to {MAX_FIG1_ROUND:,}")
        if not 0 <= seed < 2**62:  # past int64 torch refused it mid-figure
            raise ValueError(f"--seed {seed}: expected a seed in [0, 2^62)")
        cfg = figure1_config(dataset, model=model, attack=attack, honest=honest, byzantine=byzantine,
                             round=round_, seed=seed, lr=lr, data_dir=None if data_dir is None else str(data_dir))  # fmt: skip
        d = figure1_data(cfg, honest, byzantine)
        title = (f"{d.dataset}, {d.model.upper()} + Adam, round {d.round}: {honest} benign and {byzantine} "
                 f"Byzantine clients ({d.attack})")  # fmt: skip
        fig = fig1_figure(d.params, d.grads, d.byzantine, title=title)
        _plot_save(fig, out_dir, name or f"fig1-pca-{d.dataset}", svg)
    err.print(
        f"round {d.round}: max |theta_byzantine - theta_honest| = {d.max_param_gap:.3g}; "
        f"mean ||g~ - g|| / ||g|| = {d.grad_gap:.3g}",
        highlight=False,
        soft_wrap=True,
    )


@plot_app.command("fig2")
def plot_fig2(
    clean_run: Annotated[Path, typer.Argument(help="The attack-free run directory.")],
    camo_runs: Annotated[list[Path], typer.Argument(help="Camouflage run directories (any defense).")],
    k: Annotated[int, typer.Option("--k", help="The K of Precision@K.")] = 5,
    out_dir: PlotOut = Path("docs/figures"),
    svg: PlotSvg = False,
    name: PlotName = None,
) -> None:
    """Paper 000 Figure 2 (right): Precision@K over rounds, clean training vs the camouflage attack."""
    from fedrec.experiments.plots import fig2_figure, load_run

    with _clean_errors():
        _check_plot_name(name)
        fig = fig2_figure(load_run(clean_run), [load_run(d) for d in camo_runs], k=k)
        _plot_save(fig, out_dir, name or "fig2-camouflage", svg)


@plot_app.command("grid")
def plot_grid(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="results.parquet files, folders of run summaries (*.json) or of run directories."
        ),
    ],
    figure: Annotated[int, typer.Option(help="Paper 000 figure: 3, 4, 6, 7, 8, 9 or 10.")],
    where: Annotated[
        list[str] | None, typer.Option(help="Select rows: COLUMN=V1,V2 (replaces the figure's own choice).")
    ] = None,
    rows: Annotated[str | None, typer.Option(help="Column of the panel rows (e.g. attack.name).")] = None,
    at_k: Annotated[
        int | None, typer.Option(help="One panel per dataset: metric@K over the rows column.")
    ] = None,
    partial: Annotated[bool, typer.Option(help="Draw even where cells are missing or failed.")] = False,
    title: Annotated[str | None, typer.Option(help="Title instead of the paper's caption.")] = None,
    out_dir: PlotOut = Path("docs/figures"),
    svg: PlotSvg = False,
    name: PlotName = None,
) -> None:
    """Paper 000 Figures 3/6 (A-FRS vs FMF), 4/7 (defenses x fractions x datasets), 8 (Adam vs SGD),
    9-10 (defenses under SGD with momentum / AdaGrad) from a grid's results: mean ± std over seeds; the
    numbers at K = 5 (or --at-k) as a Markdown table on stdout."""
    from fedrec.experiments.plots import grid_figure, grid_markdown, load_results

    with _clean_errors():
        _check_plot_name(name)
        chosen: dict[str, tuple[str, ...]] = {}
        for w in where or []:
            col, sep, values = w.partition("=")
            if not sep or not col.strip() or not values.strip():
                raise ValueError(f"--where {w!r}: expected COLUMN=VALUE[,VALUE...]")
            chosen[col.strip()] = tuple(v.strip() for v in values.split(","))
        notes: list[str] = []  # said once the figure is made: an error stays one line
        table = load_results(results, say=notes.append)
        fig = grid_figure(table, figure, where=chosen, rows=rows, at_k=at_k, partial=partial, title=title)
        text = grid_markdown(table, figure, where=chosen, rows=rows, at_k=at_k, partial=partial)
        _notes(notes)
        out.print(text, markup=False, highlight=False, soft_wrap=True)
        _plot_save(fig, out_dir, name or f"fig{figure}", svg)


@plot_app.command("worstcase")
def plot_worstcase(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="results.parquet files, folders of run summaries (*.json) or of run directories."
        ),
    ],
    metric: Annotated[str, typer.Option(help="Column to compare, e.g. precision@5.")] = "precision@5",
    title: Annotated[str | None, typer.Option(help="Title of the heatmap.")] = None,
    without: Annotated[
        list[str] | None,
        typer.Option(
            help="Leave an attack out (its name, all its variants; repeatable): another threat model."
        ),
    ] = None,
    out_dir: PlotOut = Path("docs/figures"),
    svg: PlotSvg = False,
    name: PlotName = None,
) -> None:
    """Every defense against every attack: the metric as a fraction of the attack-free undefended run,
    each defense's worst case and the attack that achieves it, overall and per dataset and attack
    fraction (Markdown on stdout, a heatmap PNG)."""
    from fedrec.experiments.plots import load_results
    from fedrec.experiments.worstcase import heatmap_figure, markdown, worst_case

    with _clean_errors():
        _check_plot_name(name)
        notes: list[str] = []
        wc = worst_case(load_results(results, say=notes.append), metric, without=tuple(without or ()))
        _notes(notes)
        out.print(markdown(wc), markup=False, highlight=False, soft_wrap=True)
        default = "-".join(["worstcase", *(f"without-{a}" for a in wc.without)])  # not the full table's file
        _plot_save(heatmap_figure(wc, title), out_dir, name or default, svg)


@data_app.command("list")
def data_list(
    data_dir: Annotated[Path | None, typer.Option(help="Dataset root (else $FEDREC_DATA_DIR).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The known datasets and where each would be read from."""
    from fedrec.data import dataset_source

    rows = []
    for name in DATASETS:
        try:
            src = [str(p) for p in dataset_source(name, data_dir)]
            rows.append({"dataset": name, "available": True, "source": src})
        except DataError as e:
            rows.append({"dataset": name, "available": False, "source": str(e)})
    if as_json:
        _print_json({"datasets": rows})
        return
    table = Table("dataset", "available", "source")
    for r in rows:
        src = r["source"] if isinstance(r["source"], str) else ", ".join(r["source"])
        table.add_row(r["dataset"], "yes" if r["available"] else "no", src)
    out.print(table)


@data_app.command("stats")
def data_stats(
    names: Annotated[
        list[str] | None, typer.Argument(help="Datasets (default: the four of paper 000).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset root (else $FEDREC_DATA_DIR).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Users / items / interactions of each dataset, next to paper 000 Appendix G's figures."""
    from fedrec.data import expected_stats, load_dataset

    rows, failed = [], False
    for name in names or list(DATASETS):
        try:
            s = load_dataset(name, data_dir).stats()
        except DataError as e:
            failed = True
            rows.append({"dataset": name, "error": str(e)})
            continue
        try:
            exp = expected_stats(name)
        except (DataError, KeyError):
            exp = None
        s["expected"] = exp
        s["matches_paper"] = (
            None if exp is None else all(s[k] == exp[k] for k in ("users", "items", "interactions"))
        )
        rows.append(s)
    if as_json:
        _print_json({"datasets": rows})
    else:
        table = Table("dataset", "users", "items", "interactions", "density", "paper (Appendix G)")
        for r in rows:
            if "error" in r:
                table.add_row(r["dataset"], "-", "-", "-", "-", "[red]unavailable[/]")
                continue
            exp = r["expected"]
            paper = "-" if exp is None else f"{exp['users']:,} / {exp['items']:,} / {exp['interactions']:,}"
            mark = "" if r["matches_paper"] is None else (" ✓" if r["matches_paper"] else " [red]✗[/]")
            table.add_row(
                r["dataset"], f"{r['users']:,}", f"{r['items']:,}", f"{r['interactions']:,}",
                f"{r['density']:.4%}", paper + mark,
            )  # fmt: skip
        out.print(table)
    for r in rows:
        if "error" in r:
            err.print(f"[bold red]error:[/] {r['error']}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(2)


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help=f"One of {', '.join(DATASETS)}.")],
    cache_dir: Annotated[Path | None, typer.Option(help="Target root (else the user cache).")] = None,
) -> None:
    """Download a dataset from its official URL into the cache, verifying sha256 checksums."""
    from fedrec.data import download

    with _clean_errors():
        if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
            raise ValueError(f"--cache-dir {cache_dir}: not a folder")
        path = download(name, cache_dir)
    err.print(f"{name}: verified and stored in {path}")


if __name__ == "__main__":
    app()
