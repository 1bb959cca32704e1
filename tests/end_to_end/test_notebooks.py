"""The notebooks: committed without outputs, and every cell runs from a clean kernel (slow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# What each notebook must have shown once it has run.
SHOWS = {
    "01_masking_and_reconstruction": ["image/png", "PSNR", "hidden patches per image"],
    "02_embeddings_and_linear_probe": ["kNN top-1", "linear probe top-1"],
}


def test_there_are_notebooks():
    assert [path.stem for path in NOTEBOOKS] == sorted(SHOWS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_committed_without_outputs(path: Path):
    cells = json.loads(path.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code, "a notebook without code"
    for index, cell in enumerate(code):
        assert cell["outputs"] == [] and cell["execution_count"] is None, f"code cell {index} keeps its outputs"
        source = "".join(cell["source"])
        assert not re.search(r"^\s*class \w", source, re.M), f"code cell {index} defines a class: import it instead"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import nbclient  # the dev extra's: a missing one fails the test rather than skipping it
    import nbformat

    monkeypatch.delenv("MAE_CHECKPOINT", raising=False)  # the notebook trains its own small checkpoint
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    notebook = nbformat.read(path, as_version=4)
    # Run from the notebooks folder, as Jupyter does; the notebooks write only to temporary folders.
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3")
    client.execute(cwd=str(path.parent))  # a failing cell raises CellExecutionError with its traceback
    outputs = json.dumps([output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs])
    for shown in SHOWS[path.stem]:
        assert shown in outputs
