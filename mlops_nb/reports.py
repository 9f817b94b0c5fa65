"""Executed notebooks -> self-contained HTML without code cells, readable offline."""
from __future__ import annotations

import re
from pathlib import Path

# nbconvert's templates link MathJax and require.js from CDNs; the reports have no math and no widgets
_REMOTE_SCRIPT = re.compile(r'<script[^>]+src="(?:https?:)?(?://[^"]*)?"[^>]*>\s*</script>\s*', re.I)

# and the lab template imports mermaid from a CDN in an inline module script
_REMOTE_MODULE = re.compile(r'<script type="module">(?:(?!</script>).)*?cdnjs(?:(?!</script>).)*</script>\s*', re.S)


def render(notebook: Path, out: Path, title: str | None = None) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    nb.metadata.setdefault("title", title or Path(notebook).stem)
    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, embed_images=True)
    exporter.mathjax_url = ""
    body, _ = exporter.from_notebook_node(nb)
    body = _REMOTE_SCRIPT.sub("", body)
    body = _REMOTE_MODULE.sub("", body)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(out)
    return out


def render_tasks(plan, names, reports_dir: Path) -> list[Path]:
    """Render the executed notebook of each named task to reports_dir/<task>.html."""
    out = []
    for name in names:
        nb = plan.tasks[name].products.get("nb")
        if nb is not None and nb.suffix == ".ipynb" and nb.exists():
            out.append(render(nb, reports_dir / f"{name}.html", title=name))
    return out
