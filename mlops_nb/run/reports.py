"""Executed notebooks -> self-contained HTML without code cells, readable offline.

During a run, a ``Renderer`` child process renders each task's notebook as soon as the task ends, while
the next tasks run (nbconvert's import and its rendering cost ~2 s of one core, and a run leaves a core
idle much of the time). The reports land in ``reports/`` only when the run succeeds.

    python -m mlops_nb.run.reports STAGING_DIR      # the child: reads "<notebook>\t<name>" lines
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# nbconvert's templates link MathJax and require.js from CDNs; the reports have no math and no widgets
_REMOTE_SCRIPT = re.compile(r'<script[^>]+src="(?:https?:)?(?://[^"]*)?"[^>]*>\s*</script>\s*', re.I)

# and the lab template imports mermaid from a CDN in an inline module script
_REMOTE_MODULE = re.compile(r'<script type="module">(?:(?!</script>).)*?cdnjs(?:(?!</script>).)*</script>\s*', re.S)


_exporter = None


def exporter():
    """One HTML exporter a process: its templates load once."""
    global _exporter
    if _exporter is None:
        from .notebooks import import_nbformat

        import_nbformat()  # before nbconvert imports it
        from nbconvert import HTMLExporter

        _exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                                 exclude_output_prompt=True, embed_images=True)
        _exporter.mathjax_url = ""
    return _exporter


def render(notebook: Path, out: Path, title: str | None = None) -> Path:
    from .notebooks import import_nbformat

    nb = import_nbformat().read(str(notebook), as_version=4)
    nb.metadata.setdefault("title", title or Path(notebook).stem)
    body, _ = exporter().from_notebook_node(nb)
    body = _REMOTE_SCRIPT.sub("", body)
    body = _REMOTE_MODULE.sub("", body)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(out)
    return out


class Renderer:
    """Renders notebooks in a child process as they are submitted; ``finish`` moves the reports into
    place, ``cancel`` drops them. A notebook the child could not render is rendered here instead."""

    def __init__(self, parent: Path):
        Path(parent).mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix="mlops-nb-reports-", dir=parent))
        self.submitted: list[tuple[Path, str]] = []
        self._proc = subprocess.Popen([sys.executable, "-m", "mlops_nb.run.reports", str(self.staging)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def submit(self, notebook: Path, name: str) -> None:
        self.submitted.append((Path(notebook), name))
        try:
            self._proc.stdin.write(f"{notebook}\t{name}\n")
            self._proc.stdin.flush()
        except (OSError, ValueError):  # the child is gone: finish() renders here
            pass

    def finish(self, reports_dir: Path) -> list[Path]:
        try:
            out, _ = self._proc.communicate(timeout=600)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self._proc.kill()
            out = ""
        done = set()
        for line in (out or "").splitlines():
            try:
                done.add(json.loads(line)["name"])
            except (ValueError, KeyError, TypeError):
                continue
        paths = []
        for notebook, name in self.submitted:
            target = Path(reports_dir) / f"{name}.html"
            staged = self.staging / f"{name}.html"
            if name in done and staged.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
                paths.append(target)
            elif notebook.exists():
                try:
                    paths.append(render(notebook, target, title=name))
                except Exception:  # the run has landed: a notebook nbconvert cannot read costs its report only
                    continue
        shutil.rmtree(self.staging, ignore_errors=True)
        return paths

    def cancel(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        shutil.rmtree(self.staging, ignore_errors=True)


def _main(staging: str) -> int:
    os.nice(5)  # the run's own tasks go first
    exporter()  # nbconvert's import and templates, while the parent imports Ploomber
    for line in sys.stdin:
        notebook, _, name = line.rstrip("\n").partition("\t")
        try:
            render(Path(notebook), Path(staging) / f"{name}.html", title=name)
        except Exception:  # the parent renders it itself, and sees the error there
            continue
        print(json.dumps({"name": name}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
