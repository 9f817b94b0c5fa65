""".ipynb task notebooks, as a user keeps them: run by `mlops-nb run` with the run's values injected; saved
from JupyterLab with outputs (the task is not stale for that) or with a changed cell (it is); opened through
a real `mlops-nb lab` server with the values injected, saved back without them."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from conftest import assert_up_to_date, run_ok, write_settings
from test_lab import Lab, execute, injected, values_of

SPEC = """\
tasks:
  - source: notebooks/tasks/draw.py
    product:
      nb: data/products/draw.ipynb
      data: data/products/draw.json
    params:
      greeting: '{{registry.model_name}}'

  - source: notebooks/tasks/use.ipynb
    product:
      nb: data/products/use.ipynb
      out: data/products/use.json
"""

DRAW = '''\
# %% tags=["parameters"]
upstream = None
product = None
greeting = "hello"

# %%
import json
from pathlib import Path

Path(product["data"]).write_text(json.dumps({"greeting": greeting}))
'''

USE_CELLS = [
    ("markdown", "# Use\nReads what `draw` wrote.", []),
    ("code", 'upstream = ["draw"]\nproduct = None\nfactor = 2', ["parameters"]),
    ("code", "%time answer = 21 * factor\nimport json\nfrom pathlib import Path\n\nfrom mlops_nb import config", []),
    ("code", 'data = json.loads(Path(upstream["draw"]["data"]).read_text())\n'
             'Path(product["out"]).write_text(json.dumps({"seen": data["greeting"], "answer": answer}))\nanswer', []),
]


def write_ipynb(path: Path, cells=USE_CELLS, outputs: bool = False) -> None:
    """An .ipynb as JupyterLab saves it: cell ids, a kernelspec, and (``outputs``) the outputs of a run by hand."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, (kind, source, tags) in enumerate(cells):
        cell = (nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell)(source)
        cell.id = f"cell-{i}"
        if tags:
            cell.metadata["tags"] = tags
        if outputs and kind == "code":
            cell.execution_count = i
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"by hand {i}\n")]
        nb.cells.append(cell)
    nbformat.write(nb, str(path))


@pytest.fixture
def tiny(tmp_path) -> Path:
    root = tmp_path / "tiny"
    (root / "notebooks" / "tasks").mkdir(parents=True)
    write_settings(root / "settings.ini", {"registry.model_name": "tiny_model"})
    (root / "pipeline.yaml").write_text(SPEC, encoding="utf-8")
    (root / "notebooks" / "tasks" / "draw.py").write_text(DRAW, encoding="utf-8")
    write_ipynb(root / "notebooks" / "tasks" / "use.ipynb")
    return root


def test_an_ipynb_task_runs_and_is_stale_only_when_its_cells_change(tiny):
    run_ok(tiny, "run", "--quiet")
    out = json.loads((tiny / "data/products/use.json").read_text())
    assert out == {"seen": "tiny_model", "answer": 42}
    executed = nbformat.read(str(tiny / "data/products/use.ipynb"), as_version=4)
    tags = [c.metadata.get("tags", []) for c in executed.cells]
    assert tags[2] == ["injected-parameters"], tags
    assert "upstream = {'draw':" in executed.cells[2].source
    assert executed.cells[-1].outputs[0]["data"]["text/plain"] == "42"

    write_ipynb(tiny / "notebooks/tasks/use.ipynb", outputs=True)  # run by hand and saved: same cells
    assert_up_to_date(tiny)

    changed = [*USE_CELLS[:2], (USE_CELLS[2][0], USE_CELLS[2][1].replace("21", "20"), []), USE_CELLS[3]]
    write_ipynb(tiny / "notebooks/tasks/use.ipynb", cells=changed, outputs=True)
    result = run_ok(tiny, "run", "--quiet")
    assert result.task_table() == {"draw": "skipped", "use": "ran"}, str(result)
    assert json.loads((tiny / "data/products/use.json").read_text())["answer"] == 40
    executed = nbformat.read(str(tiny / "data/products/use.ipynb"), as_version=4)
    assert all("by hand" not in json.dumps(c.get("outputs", [])) for c in executed.cells)  # not the saved outputs


def test_the_imports_of_an_ipynb_task_are_fingerprinted(tiny):
    from mlops_nb.run.plan import imported_modules, parameters_cell, task_text

    source = tiny / "notebooks/tasks/use.ipynb"
    assert "config" in imported_modules(task_text(source))  # the magic line does not hide the imports
    assert parameters_cell(source) == {"upstream": ["draw"], "product": None, "factor": 2}


def test_an_ipynb_without_a_parameters_cell_is_refused(tiny):
    from conftest import run_cli

    write_ipynb(tiny / "notebooks/tasks/use.ipynb", cells=[(k, s, []) for k, s, _ in USE_CELLS])
    result = run_cli(tiny, "run", "--quiet")
    assert result.returncode == 4, str(result)
    assert "use.ipynb has no cell tagged 'parameters'; tag the cell that declares upstream" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_ipynb_task_opens_in_lab_with_the_values_and_saves_clean(tiny, tmp_path):
    run_ok(tiny, "run", "--quiet")
    path = tiny / "notebooks/tasks/use.ipynb"
    write_ipynb(path, outputs=True)
    before = path.read_bytes()
    server = Lab(tiny, tmp_path)
    try:
        model = server.call("GET", "/api/contents/notebooks/tasks/use.ipynb?type=notebook&content=1")
        nb = model["content"]
        at, source = injected(nb)
        assert at == 2
        values = values_of(source)
        assert set(values) == {"upstream", "product"}  # factor keeps its default, as in a run
        assert values["upstream"] == {"draw": {"nb": str(tiny / "data/products/draw.ipynb"),
                                               "data": str(tiny / "data/products/draw.json")}}
        assert values["product"]["out"] == str(tiny / "data/interactive/use.json")

        executed = execute(nb, path.parent)
        assert json.loads((tiny / "data/interactive/use.json").read_text()) == {"seen": "tiny_model", "answer": 42}

        server.call("PUT", "/api/contents/notebooks/tasks/use.ipynb", {
            "type": "notebook", "format": "json", "content": json.loads(nbformat.writes(executed))})
    finally:
        server.stop()
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert all("injected-parameters" not in c["metadata"].get("tags", []) for c in saved["cells"])
    assert [c["source"] for c in saved["cells"]] == [c["source"] for c in json.loads(before)["cells"]]
    assert_up_to_date(tiny)
