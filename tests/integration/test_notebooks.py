"""Notebooks stay runnable: their code cells are executed against the shared session."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(spark, notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "import seg_spark" in code or "from seg_spark" in code
    namespace: dict = {}
    exec(compile(code, str(notebook), "exec"), namespace)
    assert namespace["spark"] is spark
    assert namespace["result"].stages["segment"].metrics["truth_adjusted_rand_index"] > 0.6
