"""Our exception tree.

Library code raises these; only the CLI turns them into exit codes and text (and, later, the service into
HTTP statuses). Each message says what was expected, what was found and how to fix it.
"""
from __future__ import annotations

import difflib


class MlopsNbError(Exception):
    """Base of every error we raise on purpose."""

    exit_code = 1
    http_status = 500


class SettingsError(MlopsNbError, ValueError):
    """A setting (settings.ini, MLOPS_NB_* or -p) is unknown, badly typed or points at nothing."""

    exit_code = 2
    http_status = 400


class DataError(MlopsNbError, ValueError):
    """Input data cannot be read or does not have the shape the pipeline needs."""

    exit_code = 3
    http_status = 422


class FeatureStoreError(DataError):
    """Feature definitions, a spine or pushed events are not what the feature store needs."""


class ValidationFailed(DataError):
    """Ingested data broke one or more rules of its contract."""

    def __init__(self, findings):
        self.findings = list(findings)
        lines = [f"Data validation failed: {len(self.findings)} rule(s) broken."]
        lines += [f"  - {f}" for f in self.findings]
        lines.append("Fix the source data (or the rule: in mlops_nb/data/contracts.py, or a project's record.yaml) "
                     "and run again.")
        super().__init__("\n".join(lines))


class PipelineError(MlopsNbError):
    """A task of the pipeline failed, or the pipeline could not be built."""

    exit_code = 4


class UpstreamNotReady(PipelineError):
    """A task run alone (``--only``) whose upstream tasks' products are missing or stale."""


class TaskTimeoutError(PipelineError):
    """A task ran longer than pipeline.task_timeout."""


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM arrived during a run. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` in a task or in Ploomber swallows it; the run rolls back and the CLI exits
    128 + the signal's number."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class RunLockedError(MlopsNbError):
    """Another run holds the project's run lock."""

    exit_code = 5


class NotFoundError(MlopsNbError, LookupError):
    """A named thing (task, run, model version) does not exist."""

    exit_code = 6
    http_status = 404


class ExportError(MlopsNbError):
    """An export could not be written: no champion, an unwritable output, a missing exporter environment."""

    exit_code = 7


def did_you_mean(name: str, choices) -> str:
    """Kedro-style hint for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
