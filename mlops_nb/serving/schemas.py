"""Request and response schemas, built from the model's flight record (``transforms.RECORD``).

One source for the fields, their types and ranges: the service's OpenAPI schema, the validation of every
request and the training data's contract agree by construction. Unknown fields, NaN and infinity are
refused (HTTP 400 naming the field). The fields the online feature store provides (``provided``: field ->
its view) say so in their description: they may be left out (or null) and are then looked up.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, create_model, model_validator

from ..data.logs import KEY_MAX_CHARS, REQUEST_ID_PATTERN
from ..lib.record import RECORD, REQUIRED

CODE = r"^[A-Za-z0-9]{1,8}$"
INTEGER_FIELDS = {"year", "month", "day", "sched_dep_time", "sched_arr_time"}


def _field(name: str, kind: str, lo, hi, doc: str, *, as_list: bool, max_rows: int | None = None):
    if kind == "category":
        base = Annotated[str, Field(pattern=CODE, description=doc)]
    elif name in INTEGER_FIELDS:
        base = Annotated[int, Field(ge=lo, le=hi, description=doc)]
    else:
        base = Annotated[float, Field(ge=lo, le=hi, allow_inf_nan=False, description=doc)]
    required = name in REQUIRED
    if as_list:
        item = base if required else Optional[base]
        return (list[item], Field(..., min_length=1, max_length=max_rows, description=doc) if required
                else Field(None, min_length=1, max_length=max_rows, description=doc))
    return (base, ...) if required else (Optional[base], None)


def _spec(name: str, provided: dict[str, str]) -> tuple:
    """A RECORD entry, its description saying so when the feature store provides the field."""
    kind, lo, hi, doc = RECORD[name]
    if name in provided:
        doc = (f"{doc}. Provided by the online feature store (view {provided[name]}) when left out or null: the "
               "view's value for this flight's keys as of its prediction time (features.lead before its scheduled "
               "departure); a value sent wins")
    return kind, lo, hi, doc


def record_model(provided: dict[str, str] | None = None):
    """One flight record; ``provided``: field -> view of the fields the feature store provides."""
    provided = provided or {}
    model = create_model("FlightRecord", __config__=ConfigDict(extra="forbid"),
                         **{name: _field(name, *_spec(name, provided), as_list=False) for name in RECORD})
    model.__doc__ = "One scheduled flight, with what is known before it leaves." + (
        " The fields the feature store provides may be left out." if provided else "")
    return model


FlightRecord = record_model()


class _Columns(BaseModel):
    @model_validator(mode="after")
    def _same_length(self):
        lengths = {name: len(v) for name, v in self if v is not None}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"every column must have as many values; got lengths {lengths}")
        return self

    def n_rows(self) -> int:
        return next(len(v) for _, v in self if v is not None)


def columns_model(max_rows: int, provided: dict[str, str] | None = None):
    """Many flights as columns: each field a list, all of one length, at most ``max_rows`` long."""
    model = create_model(
        "FlightColumns", __base__=_Columns,
        **{name: _field(name, *_spec(name, provided or {}), as_list=True, max_rows=max_rows) for name in RECORD})
    model.model_config["extra"] = "forbid"
    model.model_rebuild(force=True)
    model.__doc__ = columns_model.__doc__.replace("``max_rows``", str(max_rows))
    return model


KEY_DOC = "routing key of a canary rollout: the same key always gets the same arm (default: random)"


def request_models(max_rows: int, provided: dict[str, str] | None = None):
    """The request bodies, with the row limit of the settings; ``provided``: field -> view of the fields the
    feature store provides."""
    record = FlightRecord if not provided else record_model(provided)
    flights = create_model(
        "PredictRequest", __config__=ConfigDict(extra="forbid"),
        flights=(list[record], Field(..., min_length=1, max_length=max_rows)),
        key=(Optional[str], Field(None, max_length=200, description=KEY_DOC)))
    columns = create_model(
        "PredictBatchRequest", __config__=ConfigDict(extra="forbid"),
        columns=(columns_model(max_rows, provided), ...),
        key=(Optional[str], Field(None, max_length=200, description=KEY_DOC)))
    return flights, columns


Rows = Union[Literal["all"], list[int]]


class StoreFeatures(BaseModel):
    """What the online feature store gave the request's rows. A provided field of a row that is named in none
    of ``sent``, ``missing`` and ``stale`` is the store's value, as of its view's ``as_of``."""
    provided: list[str] = Field(description="the record's fields the store provides: looked up for each row that "
                                            "leaves them out or sends null")
    as_of: dict[str, Optional[str]] = Field(
        description="view -> the time its values are as of (ISO 8601, the flights' clock), null when it is not "
                    "materialized or the store could not be read: the views read for this request (none when every "
                    "row sent every provided field)")
    sent: dict[str, Rows] = Field(description="field -> the rows (0-based; 'all': every row) that sent it: their "
                                              "values won over the store")
    missing: dict[str, Rows] = Field(
        description="field -> the rows for which the store gave no number (the view not materialized, the store "
                    "absent or unreadable, no events of the key in the window, a null observation): NaN for the model")
    stale: dict[str, Rows] = Field(description="field -> the rows for which the view's values were older than its "
                                               "ttl at the row's prediction time: NaN for the model")


class Prediction(BaseModel):
    request_id: str
    model_version: str
    arm: str = Field(description="champion or challenger: which model answered")
    p_late: list[float] = Field(description="probability of arriving more than 15 minutes late, a row each")
    late: list[bool] = Field(description="p_late >= the model's threshold")
    features: Optional[StoreFeatures] = Field(None, description="what the online feature store gave the rows; null "
                                                                "when the service reads no feature store")


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    mode: str
    champion: dict
    challenger: dict = Field(default_factory=dict, description="the challenger in a rollout; empty otherwise")


class Outcome(BaseModel):
    """The observed outcome of a predicted request, named by its request id or by its key (exactly one: the
    published schema says so too, so that clients and fuzzers generate valid bodies)."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [
        {"required": ["request_id"], "properties": {"request_id": {"type": "string"}}},
        {"required": ["key"], "properties": {"key": {"type": "string"}}}]})
    request_id: Optional[str] = Field(None, pattern=REQUEST_ID_PATTERN,
                                      description="the request_id of the prediction's answer (16 hex digits)")
    key: Optional[str] = Field(None, min_length=1, max_length=KEY_MAX_CHARS,
                               description="the key the prediction request was sent with")
    late: StrictBool = Field(description="the observed outcome: did the flight arrive late (true or false)")
    arr_delay: Optional[float] = Field(None, allow_inf_nan=False,
                                       description="the observed arrival delay in minutes, if known")

    @model_validator(mode="after")
    def _one_id(self):
        if (self.request_id is None) == (self.key is None):
            found = "both" if self.request_id is not None else "neither"
            raise ValueError(f"an outcome names its prediction by exactly one of request_id or key; got {found}")
        return self


def feedback_model(max_rows: int):
    """The body of POST /feedback, with the row limit of the settings."""
    return create_model(
        "FeedbackRequest", __config__=ConfigDict(extra="forbid"),
        outcomes=(list[Outcome], Field(..., min_length=1, max_length=max_rows,
                                       description=f"the outcomes, 1 to {max_rows} of them")))


class FeedbackAnswer(BaseModel):
    accepted: int = Field(description="outcomes written to the feedback log (all of the request's)")
    received_at: str = Field(description="when they were received (UTC, ISO 8601), their received_at")


# A record described by data (``lib.spec``, a project's record.yaml): its request bodies and answer, built from
# the spec as the flight record's are from RECORD. Body {"records": [...]} (or {"columns": {...}}); a closed
# category accepts its categories only, an open one any text up to CATEGORY_MAX_CHARS; a nullable field may be
# left out or null.
CATEGORY_MAX_CHARS = 200


def _spec_field(f, *, as_list: bool, max_rows: int | None = None):
    from typing import Literal

    doc = f.description or f"{f.kind} field '{f.name}'"
    if f.kind == "category":
        base = (Annotated[Literal[tuple(f.categories)], Field(description=doc)] if f.closed else
                Annotated[str, Field(min_length=1, max_length=CATEGORY_MAX_CHARS, description=doc)])
    elif f.integer:
        base = Annotated[int, Field(ge=f.min, le=f.max, description=doc)]
    else:
        base = Annotated[float, Field(ge=f.min, le=f.max, allow_inf_nan=False, description=doc)]
    if as_list:
        item = Optional[base] if f.nullable else base
        return (list[item], Field(None if f.nullable else ..., min_length=1, max_length=max_rows, description=doc))
    return (Optional[base], None) if f.nullable else (base, ...)


def spec_models(spec, max_rows: int):
    """(PredictRequest, PredictBatchRequest, the answer) of a record described by data: {"records": [...]}
    of records (``key`` as for flights) and {"columns": {...}} of columns; the answer gives each row's
    probability that the target is the positive value, and whether it reaches the model's threshold."""
    record = create_model("Record", __config__=ConfigDict(extra="forbid"),
                          **{f.name: _spec_field(f, as_list=False) for f in spec.fields})
    record.__doc__ = f"One record: the inputs of the model of '{spec.target}'."
    columns = create_model("RecordColumns", __base__=_Columns,
                           **{f.name: _spec_field(f, as_list=True, max_rows=max_rows) for f in spec.fields})
    columns.model_config["extra"] = "forbid"
    columns.model_rebuild(force=True)
    columns.__doc__ = f"Many records as columns: each field a list, all of one length, at most {max_rows} long."
    records = create_model(
        "PredictRequest", __config__=ConfigDict(extra="forbid"),
        records=(list[record], Field(..., min_length=1, max_length=max_rows)),
        key=(Optional[str], Field(None, max_length=200, description=KEY_DOC)))
    batch = create_model(
        "PredictBatchRequest", __config__=ConfigDict(extra="forbid"),
        columns=(columns, ...), key=(Optional[str], Field(None, max_length=200, description=KEY_DOC)))
    answer = create_model(
        "Scores", request_id=(str, ...), model_version=(str, ...),
        arm=(str, Field(description="champion or challenger: which model answered")),
        probability=(list[float], Field(description=f"P({spec.target} = {spec.positive!r}), a row each")),
        positive=(list[bool], Field(description="probability >= the model's threshold, a row each")))
    return records, batch, answer
