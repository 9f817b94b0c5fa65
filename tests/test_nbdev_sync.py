"""The committed library notebooks are clean, and the committed modules are exactly what nbdev exports
from them: `nbdev-clean && nbdev-export` in a copy of the project changes no file."""
from __future__ import annotations

import difflib
import json
import shutil
import subprocess
from pathlib import Path


from conftest import REPO, TIMEOUT, VENV_BIN, cli_env

NOTEBOOKS = REPO / "notebooks" / "lib"
FIX = "Run `nbdev-clean && nbdev-export` in the project folder and commit the notebooks and modules."


def cells_without_ids() -> list[str]:
    out = []
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        data = json.loads(nb.read_text(encoding="utf-8"))
        missing = sum(1 for c in data["cells"] if "id" not in c)
        if missing:
            out.append(f"{nb.name}: {missing} of {len(data['cells'])} cells")
    return out


def files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of the files nbdev reads or writes."""
    found = [*(root / "mlops_nb").rglob("*.py"), *(root / "notebooks" / "lib").glob("*.ipynb")]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(found) if "__pycache__" not in p.parts}


def first_difference(name: str, a: bytes, b: bytes, lines: int = 12) -> str:
    diff = difflib.unified_diff(a.decode(errors="replace").splitlines(), b.decode(errors="replace").splitlines(),
                                f"committed/{name}", f"after-nbdev/{name}", lineterm="", n=1)
    return "\n".join(list(diff)[:lines])


def test_nbdev_clean_and_export_change_nothing(tmp_path):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(NOTEBOOKS, tmp_path / "notebooks" / "lib")
    shutil.copytree(REPO / "mlops_nb", tmp_path / "mlops_nb", ignore=shutil.ignore_patterns("__pycache__"))
    committed = files(tmp_path)
    assert committed == files(REPO)  # the copy is faithful
    assert any(k.endswith(".ipynb") for k in committed) and "mlops_nb/lib/transforms.py" in committed

    for tool in ("nbdev-clean", "nbdev-export"):
        proc = subprocess.run([str(VENV_BIN / tool)], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                              timeout=TIMEOUT)
        assert proc.returncode == 0, f"{tool} failed:\n{proc.stdout}\n{proc.stderr}"

    after = files(tmp_path)
    added = sorted(set(after) - set(committed))
    removed = sorted(set(committed) - set(after))
    changed = sorted(k for k in set(after) & set(committed) if after[k] != committed[k])
    assert not (added or removed or changed), (
        f"The notebooks and the exported modules are out of sync. {FIX}\n"
        f"changed: {changed}\nadded: {added}\nremoved: {removed}\n\n"
        + "\n\n".join(first_difference(k, committed[k], after[k]) for k in changed[:3]))


def test_nbdev_export_leaves_the_hand_written_modules_alone(tmp_path):
    """Whatever the notebooks' state, exporting writes only the generated modules (and the index files)."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(NOTEBOOKS, tmp_path / "notebooks" / "lib")
    shutil.copytree(REPO / "mlops_nb", tmp_path / "mlops_nb", ignore=shutil.ignore_patterns("__pycache__"))
    committed = files(tmp_path)
    proc = subprocess.run([str(VENV_BIN / "nbdev-export")], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    after = files(tmp_path)
    assert set(after) == set(committed)
    changed = {k for k in after if after[k] != committed[k]}
    assert changed <= {"mlops_nb/lib/transforms.py", "mlops_nb/lib/model.py", "mlops_nb/lib/evaluation.py",
                       "mlops_nb/_modidx.py", "mlops_nb/__init__.py"}, sorted(changed)
    # and apart from the cell markers, the generated code is the committed code
    for name in ("mlops_nb/lib/transforms.py", "mlops_nb/lib/model.py", "mlops_nb/lib/evaluation.py"):
        strip = lambda b: [l for l in b.decode().splitlines() if not l.startswith("# %% ../../notebooks/lib/")]  # noqa: E731
        assert strip(after[name]) == strip(committed[name]), first_difference(name, committed[name], after[name])
