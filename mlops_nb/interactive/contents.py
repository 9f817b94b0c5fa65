"""The contents manager of ``mlops-nb lab``: jupytext's (percent .py files open as notebooks), with the values
of a run injected into task notebooks when they are opened and dropped when they are saved.

What Ploomber's Jupyter extension did, which ``mlops-nb lab`` switches off (it wraps jupytext's manager, and
every contents request then failed with HTTP 500). Any client of the server's contents API gets the cell:
JupyterLab, the classic notebook, nbclient through the server. A notebook that is not a task's is served
as jupytext serves it.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from jupytext.async_contentsmanager import build_async_jupytext_contents_manager_class

from .. import config
from ..errors import MlopsNbError
from ..run import notebooks
from . import cell_source, task_of


class TaskContentsManager(build_async_jupytext_contents_manager_class(AsyncLargeFileManager)):
    async def get(self, path, content=True, type=None, format=None, **kwargs):
        model = await super().get(path, content=content, type=type, format=format, **kwargs)
        if content and model.get("type") == "notebook" and model.get("content"):
            source = await asyncio.to_thread(self._cell, path)
            if source is not None:
                notebooks.inject(model["content"], source)
                # the project's kernel without asking (a percent file names none; jupytext does not save it back)
                model["content"]["metadata"].setdefault("kernelspec", dict(notebooks.KERNELSPEC))
        return model

    async def save(self, model, path=""):
        if model.get("type") == "notebook" and model.get("content"):
            notebooks.strip(model["content"])
        return await super().save(model, path)

    def _cell(self, path: str) -> str | None:
        """The injected cell's source for the notebook at ``path`` (below the server's root), or None when it
        is no task's notebook (or the project's settings cannot be read: then it opens as it is)."""
        try:
            settings = config.load(check_inputs=False)
            name = task_of(Path(self.root_dir) / path.strip("/"), settings)
            return None if name is None else cell_source(name, settings)
        except MlopsNbError as e:
            self.log.warning("mlops-nb: %s opens without a run's values: %s", path, e)
            return None
