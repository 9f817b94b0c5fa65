"""reports: the background renderer (a real child process) and the offline HTML it writes."""
from __future__ import annotations

import nbformat

from mlops_nb.run import reports


def notebook(path, text: str):
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("print('hidden code')")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    nb.cells = [nbformat.v4.new_markdown_cell("# A task"), code]
    nbformat.write(nb, str(path))
    return path


def test_renderer_renders_in_the_background_and_moves_reports_on_finish(tmp_path):
    renderer = reports.Renderer(tmp_path / "data")
    renderer.submit(notebook(tmp_path / "a.ipynb", "answer 42"), "a")
    renderer.submit(notebook(tmp_path / "b.ipynb", "answer 43"), "b")
    out = renderer.finish(tmp_path / "reports")
    assert out == [tmp_path / "reports" / "a.html", tmp_path / "reports" / "b.html"]
    html = out[0].read_text()
    assert "answer 42" in html and "hidden code" not in html
    assert "<script src=\"http" not in html
    assert list((tmp_path / "data").iterdir()) == [], "the staging folder is removed"


def test_renderer_skips_a_notebook_it_cannot_read_and_keeps_the_others(tmp_path):
    renderer = reports.Renderer(tmp_path / "data")
    (tmp_path / "broken.ipynb").write_text("{not json")
    renderer.submit(tmp_path / "broken.ipynb", "broken")
    renderer.submit(notebook(tmp_path / "ok.ipynb", "fine"), "ok")
    assert renderer.finish(tmp_path / "reports") == [tmp_path / "reports" / "ok.html"]
    assert not (tmp_path / "reports" / "broken.html").exists()


def test_cancel_leaves_no_report_and_no_staging(tmp_path):
    renderer = reports.Renderer(tmp_path / "data")
    renderer.submit(notebook(tmp_path / "a.ipynb", "x"), "a")
    renderer.cancel()
    assert not (tmp_path / "reports").exists()
    assert list((tmp_path / "data").iterdir()) == []
