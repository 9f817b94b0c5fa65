"""How a registered model is scored when it serves: features in NumPy, and a compiled form of the trees.

A one-row prediction through the trained scikit-learn pipeline cost about 15 ms: pandas and the
ColumnTransformer to build the model's input (5 ms), then ``HistGradientBoostingClassifier`` walking its
200 trees one Python call at a time (10 ms). ``Scorer`` does the same arithmetic without either cost:

- the model's input is built in NumPy from validated records: ``lib.transforms.record_arrays`` and
  ``derive_arrays`` (the features' one implementation, which training reaches through ``derive``), then
  the fitted pipeline's own encoder tables (the ``OrdinalEncoder``'s categories, ``DropEmptyColumns``'
  mask), read off the pipeline, not copied;
- the classifier is compiled with treelite (``treelite.sklearn.import_model``, scored by GTIL, its
  interpreter): about 0.05 ms a row against scikit-learn's 2-10 ms, but slower than scikit-learn's
  vectorised loops on thousands of rows. Treelite is chosen by measurement (STACK.md): native categorical
  splits, a largest difference of about 1e-15 from scikit-learn over every reference test row. ONNX
  (skl2onnx) has no converter for the native categorical splits the model uses.

``registry.gate.compile_model`` runs when the gate saves a candidate: it compiles, then checks on the test
rows and the gate's golden rows that (1) the NumPy input equals the pipeline's own transform, value for value, and (2)
compiled and scikit-learn probabilities agree within ``TOLERANCE`` with the same decision at the model's
threshold; and it measures up to how many rows the compiled form is the faster (``max_rows``). Its report
goes into the version's ``model.json`` (``compiled``) and the compiled bytes beside the model file; a
version that fails a check is served by scikit-learn and its report says why. Any other pipeline shape
(``logreg``) is served by the scikit-learn pipeline as trained.

A model of a record described by data (``lib.spec``: ``lib.model.spec_of`` finds it in the pipeline) is
scored the same way, with its spec's ``record_arrays`` and ``derive_arrays`` in place of the flight record's.
"""
from __future__ import annotations

import math

import numpy as np

from ..lib.record import CATEGORICAL
from ..lib.transforms import derive_arrays, record_arrays, record_frame



class Scorer:
    """P(late) of validated records, by the fastest path the version allows (see the module docstring)."""

    def __init__(self, pipeline, compiled=None, max_rows: int = 0):
        from ..lib.model import spec_of

        self.pipeline = pipeline
        self.spec = spec_of(pipeline)  # None: the flight record
        self.record_frame = record_frame if self.spec is None else self.spec.record_frame
        self.record_arrays = record_arrays if self.spec is None else self.spec.record_arrays
        self.plan = encoding_plan(pipeline)
        self.compiled = compiled if self.plan is not None else None
        self.max_rows = int(max_rows) if self.compiled is not None else 0

    @property
    def path(self) -> str:
        if self.compiled is not None:
            return f"treelite up to {self.max_rows} rows, then scikit-learn"
        return "scikit-learn (NumPy input)" if self.plan is not None else "scikit-learn pipeline"

    def predict(self, rows) -> np.ndarray:
        """``rows``: validated records (a list of dicts), a dict of columns (lists; None for an absent
        optional column), or a frame (the recorder's, for the shadow model)."""
        if self.plan is None:
            if isinstance(rows, dict):
                rows = {k: v for k, v in rows.items() if v is not None}
            return self.pipeline.predict_proba(self.record_frame(rows))[:, 1].astype(np.float64)
        if isinstance(rows, (list, dict)):
            columns = self.record_arrays(rows)
        else:
            frame = self.record_frame(rows)
            columns = {name: frame[name].to_numpy() for name in frame.columns}
        X = self.plan.matrix(columns)
        if len(X) <= self.max_rows:
            return self.compiled.predict(X)
        return self.plan.classifier.predict_proba(X)[:, 1].astype(np.float64)


class EncodingPlan:
    """The fitted encoder of a ``build_model("hgb")`` pipeline, as NumPy lookups."""

    def __init__(self, names: list[str], categories: dict[str, dict], classifier, derive=derive_arrays):
        self.names = names
        self.categories = categories
        self.classifier = classifier
        self.derive = derive  # the record's derive_arrays: the flight record's, or a spec's

    def matrix(self, columns: dict) -> np.ndarray:
        """The classifier's input: what ``pipeline[:-1].transform`` gives, built without pandas."""
        derived = self.derive(columns)
        X = np.array([derived[name] if name not in self.categories else
                      [self.categories[name].get(v, math.nan) for v in derived[name]] for name in self.names],
                     dtype=np.float64)
        return np.ascontiguousarray(X.T)  # one NumPy call for the columns, then rows in C order for treelite


def encoding_plan(pipeline) -> EncodingPlan | None:
    """The plan of a pipeline shaped as ``lib.model.build_model("hgb")`` makes it, else None."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.preprocessing import OrdinalEncoder

    from ..lib.model import spec_of

    spec = spec_of(pipeline)
    categorical = CATEGORICAL if spec is None else spec.categorical
    try:
        steps = dict(pipeline.named_steps)
        classifier, encode = steps["classify"], steps["encode"]
        transformer, drop = encode.steps[0][1], encode.steps[1][1]
        ordinal = transformer.named_transformers_["cat"]
        if not (isinstance(classifier, HistGradientBoostingClassifier) and isinstance(transformer, ColumnTransformer)
                and isinstance(ordinal, OrdinalEncoder)):
            return None
        if categorical and list(ordinal.feature_names_in_) != categorical:  # none: the encoder was never fitted
            return None
        names = [str(n) for n, keep in zip(transformer.get_feature_names_out(), drop.keep_) if keep]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None
    categories = ({col: {c: float(i) for i, c in enumerate(cats) if isinstance(c, str)}
                   for col, cats in zip(categorical, ordinal.categories_)} if categorical else {})
    return EncodingPlan(names, categories, classifier, derive_arrays if spec is None else spec.derive_arrays)


class Compiled:
    """A compiled model, scored one call into treelite's C API a batch (``TreeliteGTILPredict``, one thread):
    ``treelite.gtil.predict`` spends more than the trees' own time on a row parsing its config and asking
    for the output shape (0.035 ms against 0.018 ms). The same numbers: the check compares against it."""

    def __init__(self, blob: bytes):
        import ctypes

        import treelite
        from treelite.core import _LIB, _check_call
        from treelite.gtil.gtil import GTILConfig

        self.model = treelite.Model.deserialize_bytes(blob)
        self._config = GTILConfig(predict_type="default", nthread=1)
        self._ctypes, self._lib, self._check = ctypes, _LIB, _check_call
        self._double = ctypes.POINTER(ctypes.c_double)
        shape = ctypes.POINTER(ctypes.c_uint64)()
        ndim = ctypes.c_uint64()
        _check_call(_LIB.TreeliteGTILGetOutputShape(self.model.handle, ctypes.c_uint64(1), self._config.handle,
                                                    ctypes.byref(shape), ctypes.byref(ndim)))
        per_row = np.ctypeslib.as_array(shape, shape=(ndim.value,)).tolist()
        if per_row != [1, 1, 1] or (self.model.input_type, self.model.output_type) != ("float64", "float64"):
            raise ValueError(f"a compiled model of one probability a row was expected; got output shape {per_row} "
                             f"and types {self.model.input_type}/{self.model.output_type}")

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        out = np.empty(len(X), dtype=np.float64)
        self._check(self._lib.TreeliteGTILPredict(self.model.handle, X.ctypes.data_as(self._double), b"float64",
                                                  self._ctypes.c_uint64(len(X)), out.ctypes.data_as(self._double),
                                                  self._config.handle))
        return out
