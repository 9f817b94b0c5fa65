"""Task products on disk: small JSON receipts written atomically, so a crash never leaves half a file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# A JSON product that the runner reads says what it is under this key ("snapshot", "metrics", "gate"),
# so that renaming its product key in pipeline.yaml cannot silently cut it off.
RECEIPT_KEY = "receipt"


def write_json(path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def scratch_dir(product_path) -> Path:
    """An empty folder beside a product, for files a task hands to something else (e.g. the registry)."""
    path = Path(product_path)
    d = path.with_name(f".{path.stem}.scratch")
    if d.exists():
        import shutil

        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def save_model(estimator, path) -> str:
    """Pickle a fitted model atomically; returns the file's sha256, which later loads check."""
    import hashlib

    import joblib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    joblib.dump(estimator, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, path)
    return digest


def load_model(path, sha256: str | None = None):
    """Unpickle a model, refusing a file whose bytes are not the ones recorded (the registry's check)."""
    from ..registry.versions import load_file

    return load_file(path, sha256)
