"""Request and response schemas, built from the model's flight record (``transforms.RECORD``).

One source for the fields, their types and ranges: the service's OpenAPI schema, the validation of every
request and the training data's contract agree by construction. Unknown fields, NaN and infinity are
refused (HTTP 400 naming the field).
"""
from __future__ import annotations

from typing import Annotated, Optional

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


FlightRecord = create_model(
    "FlightRecord", __config__=ConfigDict(extra="forbid"),
    **{name: _field(name, *spec, as_list=False) for name, spec in RECORD.items()})
FlightRecord.__doc__ = "One scheduled flight, with what is known before it leaves."


class _Columns(BaseModel):
    @model_validator(mode="after")
    def _same_length(self):
        lengths = {name: len(v) for name, v in self if v is not None}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"every column must have as many values; got lengths {lengths}")
        return self

    def n_rows(self) -> int:
        return next(len(v) for _, v in self if v is not None)


def columns_model(max_rows: int):
    """Many flights as columns: each field a list, all of one length, at most ``max_rows`` long."""
    model = create_model(
        "FlightColumns", __base__=_Columns,
        **{name: _field(name, *spec, as_list=True, max_rows=max_rows) for name, spec in RECORD.items()})
    model.model_config["extra"] = "forbid"
    model.model_rebuild(force=True)
    model.__doc__ = columns_model.__doc__.replace("``max_rows``", str(max_rows))
    return model


KEY_DOC = "routing key of a canary rollout: the same key always gets the same arm (default: random)"


def request_models(max_rows: int):
    """The request bodies, with the row limit of the settings."""
    flights = create_model(
        "PredictRequest", __config__=ConfigDict(extra="forbid"),
        flights=(list[FlightRecord], Field(..., min_length=1, max_length=max_rows)),
        key=(Optional[str], Field(None, max_length=200, description=KEY_DOC)))
    columns = create_model(
        "PredictBatchRequest", __config__=ConfigDict(extra="forbid"),
        columns=(columns_model(max_rows), ...),
        key=(Optional[str], Field(None, max_length=200, description=KEY_DOC)))
    return flights, columns


class Prediction(BaseModel):
    request_id: str
    model_version: str
    arm: str = Field(description="champion or challenger: which model answered")
    p_late: list[float] = Field(description="probability of arriving more than 15 minutes late, a row each")
    late: list[bool] = Field(description="p_late >= the model's threshold")


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
