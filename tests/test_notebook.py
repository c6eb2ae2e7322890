"""notebooks/filtered_clients.ipynb runs top to bottom (nbclient) on the embedded ML-100K: the analysis
a user opens works with the records the CLI writes (its own cells assert the crosstab against the
summary's detection counts)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "filtered_clients.ipynb"


def test_filtered_clients_notebook_executes(tmp_path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "All" in text  # the crosstab with margins printed
    forged = nb.cells[4].outputs[-1]["data"]["text/plain"]
    assert "size" in forged and "mean" in forged
