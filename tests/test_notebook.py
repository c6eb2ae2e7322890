"""The notebooks run top to bottom (nbclient) on the embedded ML-100K, and show their figures inline.

notebooks/filtered_clients.ipynb: the analysis a user opens works with the records the CLI writes (its
own cells assert the crosstab against the summary's detection counts); its histogram is an inline
image (on 4bd84a9 the cell forced the Agg backend and had no output). notebooks/figure1.ipynb: paper
000 Figure 1 with `fedrec.experiments.plots`."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    return nb


def cell_with(nb: nbformat.NotebookNode, text: str) -> nbformat.NotebookNode:
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    return cell


def images(cell: nbformat.NotebookNode) -> list[str]:
    return [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]


def test_filtered_clients_notebook_executes(tmp_path) -> None:
    nb = execute("filtered_clients.ipynb", tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "All" in text  # the crosstab with margins printed
    forged = nb.cells[4].outputs[-1]["data"]["text/plain"]
    assert "size" in forged and "mean" in forged
    (png,) = images(cell_with(nb, "Krum score"))
    assert len(png) > 2000  # base64 of a real figure, not an empty canvas


def test_figure1_notebook_shows_the_figure(tmp_path) -> None:
    nb = execute("figure1.ipynb", tmp_path)
    printed = "".join(o.get("text", "") for o in cell_with(nb, "figure1_data(").outputs)
    assert "90 clients" in printed and "max |theta_byzantine - theta_honest|" in printed
    (png,) = images(cell_with(nb, "fig1_figure("))
    assert len(png) > 2000
    table = cell_with(nb, "pca_2d(").outputs[-1]["data"]["text/plain"]
    assert "gradients" in table and "parameters" in table
