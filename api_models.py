"""The HTTP API's requests and answers, declared once as pydantic models.

flask-openapi3 validates requests with these models and writes the OpenAPI document (`/openapi.json`)
from them, so the document, the validation and the answers cannot drift apart. Each schema says
exactly what the server accepts: a request the schema allows is never refused with 400, and one it
forbids is (the schemathesis test in tests/test_api_schema.py checks both ways).

Numbers: OpenAPI 3.1 (JSON Schema 2020-12) counts 1.0 as an integer, so integer fields take any whole
number (1 or 1.0) and refuse booleans, strings and fractions (`_whole_number`), instead of pydantic's
strict int (which refuses 1.0) or its lax int (which takes "1" and true).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union
from uuid import UUID

from typing_extensions import NotRequired, TypedDict

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, RootModel, Strict,
                      TypeAdapter, ValidationError, WithJsonSchema, model_validator)
from pydantic_core import PydanticCustomError

from config import MAX_REACH_MINUTES

MAX_STORE_IDS = 100_000     # store_ids of one trigger (a 1 MiB body holds far fewer of realistic length)
MAX_STORE_ID_CHARS = 255    # as the loader's limit (database.MAX_STORE_ID): longer ids are never stored
MAX_LIST_LIMIT = 1000       # GET /reports?limit=
MAX_LIST_OFFSET = 1_000_000_000
COLUMN_SETS = ("standard", "extended")

# --- as_of: ISO 8601 with the years 1970-2200 as written, and only real dates and times ---------------
# The server parses what this pattern admits and nothing else, so the document is the whole rule.
# Leap years in range: divisible by 4, except 2100 and 2200 (2000 is one).
_YEAR = r"(?:19[7-9][0-9]|20[0-9]{2}|21[0-9]{2}|2200)"
_LEAP = r"(?:19(?:7[26]|8[048]|9[26])|20(?:0[048]|[2468][048]|[13579][26])|21(?:0[48]|[2468][048]|[13579][26]))"
_MONTH_DAY = (r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
              r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
              r"|02-(?:0[1-9]|1[0-9]|2[0-8]))")
_DATE = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP}-02-29)"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
_OFFSET = r"(?:Z| ?UTC|[+-](?:[01][0-9]|2[0-3])(?::?[0-5][0-9])?)"
AS_OF_PATTERN = rf"^{_DATE}(?:[T ]{_TIME}{_OFFSET}?)?$"

# A CSV body must start with the table's header line (the columns in this order; the loader also takes
# other orders, extra columns and a BOM, but the document promises only this form).
STATUS_CSV_PATTERN = r"^store_id,status,timestamp_utc\r?\n"
SPECIAL_HOURS_CSV_PATTERN = r"^store_id,date,start_time_local,end_time_local\r?\n"


def _whole_number(value: Any) -> Any:
    """Any JSON number without a fraction (1 and 1.0 alike); booleans and strings are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


# (the bounds come before the validator: after it, pydantic would write them as unknown `ge`/`le` keys)
ReachMinutes = Annotated[int, Strict(), Field(ge=1, le=MAX_REACH_MINUTES), BeforeValidator(_whole_number)]
AsOf = Annotated[str, Field(pattern=AS_OF_PATTERN, examples=["2023-01-25T18:13:22Z"])]
# At least one character that is not white space: ids are trimmed, and an empty id names no store.
StoreIdItem = Annotated[str, Field(min_length=1, max_length=MAX_STORE_ID_CHARS, pattern=r"\S")]
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


# --- errors -----------------------------------------------------------------------------------------

class Error(BaseModel):
    """Every error answer: a 4xx for the client's mistakes, 500 (details only in the server log)."""

    error: str = Field(description="What is wrong, in words")


# --- POST /trigger_report ---------------------------------------------------------------------------

class TriggerRequest(BaseModel):
    """Optional report parameters; an empty body (or none) is the default report."""

    model_config = ConfigDict(extra="forbid", openapi_extra={
        "required": False,
        "description": "Optional; an empty body means every store, the latest poll's time, standard columns "
                       "and the service's reach. At most 1 MiB."})

    as_of: Optional[AsOf] = Field(None, description=(
        "The report's `now`, ISO 8601: a date, or a date and time (`T` or a space) with an optional `Z`, "
        "` UTC` or offset (converted to UTC; none = UTC). Years 1970 to 2200 as written. Default: the "
        "latest poll."))
    store_ids: Optional[list[StoreIdItem]] = Field(None, min_length=1, max_length=MAX_STORE_IDS, description=(
        "Only these stores (trimmed; repeats count once). Default: every store."))
    columns: Optional[Literal["standard", "extended"]] = Field(None, description=(
        "`extended` adds unknown_last_hour/day/week. Default: standard."))
    reach_minutes: Optional[ReachMinutes] = Field(None, description=(
        "How far a poll speaks on either side of it, in minutes; null = unbounded (the classic nearest "
        "poll). Absent: the service's SM_POLL_REACH_MINUTES (120)."))

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        # flask-openapi3 hands over what get_json(silent=True) made of the body: None for an empty body,
        # but also for JSON null, invalid JSON or another Content-Type. api.py (`take_trigger_body`) has
        # answered all of those already (415 or 400), so None here is the empty body: the default report.
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object with optional keys "
                             "as_of, store_ids, columns, reach_minutes")
        return data


class TriggerAccepted(BaseModel):
    model_config = ConfigDict(openapi_extra={
        "description": "Queued; poll the Location (/get_report?report_id=...) until it is done",
        "headers": {"Location": {"description": "/get_report?report_id=<report_id>",
                                 "schema": {"type": "string"}}},
        "links": {name: {"operationId": name, "parameters": {"report_id": "$response.body#/report_id"}}
                  for name in ("get_report", "download_report", "report_rows", "delete_report")}})

    report_id: str = Field(json_schema_extra={"format": "uuid"})


# --- GET /get_report --------------------------------------------------------------------------------

class ReportQuery(BaseModel):
    report_id: str = Field(pattern=UUID_PATTERN, min_length=36, max_length=36,
                           description="The id /trigger_report returned (a UUID)")


class ReportRunning(BaseModel):
    status: Literal["Running"]
    progress: float = Field(ge=0, le=1, description="Share done, 0 to 1 (a queued report is 0)")


class ReportFailed(BaseModel):
    status: Literal["Failed"]
    error: str = Field(description="Why, in words (never a stack trace)")


class ReportWarning(BaseModel):
    """`store_ids_without_polls` (count, examples), `as_of_before_first_poll` (first_poll),
    `stores_without_polls_this_week` (count)."""

    code: str
    message: str
    count: Optional[int] = None
    examples: Optional[list[str]] = None
    first_poll: Optional[str] = None


class ReportMeta(BaseModel):
    """Store counts: stores whose time zone was missing or unknown were reported in default_timezone."""

    stores: Optional[int] = None
    stores_without_timezone: Optional[int] = None
    stores_with_unknown_timezone: Optional[int] = None
    stores_without_polls_this_week: Optional[int] = None
    default_timezone: Optional[str] = None


class ReportComplete(BaseModel):
    status: Literal["Complete"]
    file: str = Field(description="The report's file name in reports/")
    download_url: str = Field(examples=["/reports/5b0c1a7e-2f4e-4a53-9c1b-2d3e4f5a6b7c.csv"])
    rows: int
    as_of: Optional[str] = Field(description="The report's `now` (UTC)")
    reach_minutes: Optional[int] = Field(description="The reach used; null = unbounded")
    warnings: list[ReportWarning]
    seconds: Optional[float] = None
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds in load, compute, write")
    meta: ReportMeta = Field(default_factory=ReportMeta)


class ReportStatus(RootModel[Union[ReportRunning, ReportComplete, ReportFailed]]):
    model_config = ConfigDict(title="ReportStatus", openapi_extra={
        "description": "The job's status; with `Accept: text/csv` and a complete report, the CSV itself",
        "content": {"text/csv": {"schema": {"type": "string"}}}})


# --- GET /reports, DELETE /reports/<id> -------------------------------------------------------------

class ReportListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=MAX_LIST_LIMIT, description="Reports per page")
    offset: int = Field(0, ge=0, le=MAX_LIST_OFFSET, description="Reports to skip (newest first)")


class ReportPath(BaseModel):
    report_id: UUID


class ReportParameters(BaseModel):
    as_of: Optional[str] = Field(None, description="as_of as asked (UTC), null = the latest poll")
    stores_requested: Optional[int] = Field(None, description="How many store_ids were asked; null = all")
    columns: str
    reach_minutes: Optional[int] = Field(None, description="null = unbounded")


class ReportEntry(BaseModel):
    report_id: str
    status: Literal["Queued", "Running", "Complete", "Failed"]
    created_at: str
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    progress: float
    attempts: int
    parameters: ReportParameters
    as_of: Optional[str] = Field(None, description="The report's `now`, once known")
    rows: Optional[int] = None
    seconds: Optional[float] = None
    error: Optional[str] = None
    download_url: Optional[str] = Field(None, description="Set once Complete")


class ReportList(BaseModel):
    reports: list[ReportEntry] = Field(description="Newest first")
    total: int = Field(description="Reports in the table")
    limit: int
    offset: int


# --- POST /store_status, POST /special_hours --------------------------------------------------------

class Poll(TypedDict):
    """One poll. A row whose values cannot be read is rejected (counted with its reason), not the
    request: empty or unsafe store_id, unknown status, unparsable or impossible timestamp."""

    __pydantic_config__ = ConfigDict(extra="forbid", title="Poll")  # type: ignore[misc]

    store_id: Annotated[str, Field(examples=["8419537941919820732"])]
    status: Annotated[str, Field(description="active or inactive", examples=["active"])]
    timestamp_utc: Annotated[str, Field(examples=["2023-01-22 12:09:39.388884 UTC"], description=(
        "UTC, `YYYY-MM-DD HH:MM:SS[.ffffff][ UTC]` or ISO 8601 with T, Z or +00:00"))]


class SpecialHours(TypedDict):
    """A store's own hours on one local date, replacing its weekday's; both times null or absent =
    closed. Rows that cannot be read are rejected (counted), not the request."""

    __pydantic_config__ = ConfigDict(extra="forbid", title="SpecialHours")  # type: ignore[misc]

    store_id: str
    date: Annotated[str, Field(examples=["2023-12-25"], description="The store's local date, YYYY-MM-DD")]
    start_time_local: NotRequired[Annotated[Optional[str], Field(examples=["09:00:00"])]]
    end_time_local: NotRequired[Annotated[Optional[str], Field(examples=["14:00:00"])]]


# Upload items are validated as dicts (TypedDict), not model instances: for a 29 MiB JSON body that is
# about 3x faster and 20% less memory, and they go straight into a DataFrame.
POLLS = TypeAdapter(list[Poll])
SPECIAL_HOURS = TypeAdapter(list[SpecialHours])
UPLOAD_ITEMS = {"Poll": TypeAdapter(Poll), "SpecialHours": TypeAdapter(SpecialHours)}


class LoadSummary(BaseModel):
    """Every row read lands in exactly one of new, already_stored, changed, conflicting, duplicates and
    rejected (their counts add up to read). `removed` is not a row read: stored rows the body replaced
    and does not have. `loaded` (for older clients) = read - rejected - duplicates."""

    table: str
    source: str
    read: int
    new: int
    already_stored: int
    changed: int = Field(description="store_status: stored active polls made inactive (inactive wins)")
    conflicting: int = Field(description="store_status: active rows at an instant that is inactive")
    duplicates: int = Field(description="Repeats of an earlier row of the body")
    rejected: dict[str, int] = Field(description="Reason -> rows")
    examples: dict[str, str] = Field(description="Reason -> one rejected row, with its line (row) number")
    removed: int = Field(description="special_hours: stored rows of the body's (store, date) pairs replaced")
    loaded: int
    seconds: float


# --- GET /health ------------------------------------------------------------------------------------

class Workers(BaseModel):
    alive: int
    configured: int


class Queue(BaseModel):
    depth: Optional[int] = Field(description="Reports waiting for their first run, in every process")
    limit: int


class Health(BaseModel):
    status: Literal["ok", "unhealthy"]
    reason: Optional[str] = Field(None, description="Why it is unhealthy (absent when ok)")
    database: str = Field(description="ok, or why the database cannot be written")
    reports: str = Field(description="ok, or why the reports folder cannot be written")
    workers: Workers = Field(description="The report threads of the process that answered")
    queue: Queue


# --- the endpoints behind the pages (all answered by reports_service) ---------------------------------
# Query parameters are text in the URL: their integers are read in pydantic's lax mode ("20" is 20), as
# in ReportListQuery. A parameter left out takes the service's default; none of them is nullable (a query
# string cannot say null).

REPORT_COLUMNS = ("store_id", "uptime_last_hour", "uptime_last_day", "uptime_last_week", "downtime_last_hour",
                  "downtime_last_day", "downtime_last_week", "unknown_last_hour", "unknown_last_day",
                  "unknown_last_week")   # report_generator.EXTENDED_COLUMNS (test_api_explain checks it)
NUMBER_COLUMNS = REPORT_COLUMNS[1:]
MAX_ROWS_LIMIT = 1000       # reports_service.MAX_LIMIT
MAX_FIND_LIMIT = 200        # reports_service.MAX_FIND_LIMIT
MAX_TIMELINE_DAYS = 7       # reports_service.MAX_TIMELINE_DAYS
UNBOUNDED_WORDS = ("none", "null", "unbounded", "")
# A part of a store id: at most as long as an id can be.
StoreIdPart = Annotated[str, Field(max_length=MAX_STORE_ID_CHARS)]


def _no_default(schema: dict) -> None:
    schema.pop("default", None)


class ReportRowsQuery(BaseModel):
    sort: Literal[REPORT_COLUMNS] = Field(  # type: ignore[valid-type]
        "downtime_last_week", description=(
            "A column of the report; ties are broken by store id, ascending. The `unknown_*` columns exist "
            "only in an extended report (a standard report answers 409). Default: downtime_last_week."))
    order: Literal["asc", "desc"] = Field(None, json_schema_extra=_no_default, description=(
        "Default: desc for a number column (worst stores first), asc for store_id"))
    limit: int = Field(50, ge=1, le=MAX_ROWS_LIMIT, description="Rows per page")
    offset: int = Field(0, ge=0, le=MAX_LIST_OFFSET, description="Rows to skip (of those that match q)")
    q: StoreIdPart = Field("", description="Keep the rows whose store id contains this text (any case)")


class ReportRow(BaseModel):
    """One store's row, as in the report's CSV (hour: minutes; day, week: hours). The unknown_* columns
    are in an extended report only."""

    store_id: str
    uptime_last_hour: float
    uptime_last_day: float
    uptime_last_week: float
    downtime_last_hour: float
    downtime_last_day: float
    downtime_last_week: float
    unknown_last_hour: float = Field(None, json_schema_extra=_no_default)
    unknown_last_day: float = Field(None, json_schema_extra=_no_default)
    unknown_last_week: float = Field(None, json_schema_extra=_no_default)


class ReportRows(BaseModel):
    """A page of a completed report's rows, with the parameters as applied."""

    report_id: str = Field(json_schema_extra={"format": "uuid"})
    total: int = Field(description="Rows that match q (all the report's rows without q)")
    rows: list[ReportRow]
    columns: list[str] = Field(description="The report's columns, as in its CSV")
    sort: str
    order: Literal["asc", "desc"]
    limit: int
    offset: int
    q: str


class StorePath(BaseModel):
    store_id: str = Field(min_length=1, max_length=MAX_STORE_ID_CHARS, pattern=r"\S",
                          json_schema_extra={"example": "8419537941919820732"},
                          description="A store id (surrounding spaces are ignored)")


_REACH_INT = TypeAdapter(Annotated[int, Field(ge=1, le=MAX_REACH_MINUTES)])
REACH_QUERY_RULE = f"a whole number of minutes from 1 to {MAX_REACH_MINUTES}, or none, unbounded or empty for unbounded"


def _reach_query(value: Any) -> Union[int, None]:
    """reach_minutes in a query: minutes (read as the other integer parameters are), or None for one of
    UNBOUNDED_WORDS. One rule, one message (a pydantic union would report each branch)."""
    if isinstance(value, str) and value in UNBOUNDED_WORDS:
        return None
    try:
        return _REACH_INT.validate_python(value)
    except ValidationError:
        raise PydanticCustomError("query_rule", "must be {rule}", {"rule": REACH_QUERY_RULE}) from None


ReachQuery = Annotated[Optional[int], PlainValidator(_reach_query), WithJsonSchema({"anyOf": [
    {"type": "integer", "minimum": 1, "maximum": MAX_REACH_MINUTES},
    {"type": "string", "enum": list(UNBOUNDED_WORDS)}]})]


def _query_example(example: str):
    """A parameter's example (OpenAPI parameters take `example`, not a list of `examples`), no default."""
    def edit(schema: dict) -> None:
        schema.pop("default", None)
        schema["example"] = example
    return edit


class TimelineQuery(BaseModel):
    as_of: Annotated[str, Field(pattern=AS_OF_PATTERN)] = Field(
        None, json_schema_extra=_query_example("2023-01-25T18:13:22Z"), description=(
        "The timeline's `now`, as in /trigger_report (ISO 8601, years 1970 to 2200 as written). Default: "
        "the latest poll."))
    reach_minutes: ReachQuery = Field(None, json_schema_extra=_no_default, description=(
        f"Minutes from 1 to {MAX_REACH_MINUTES}; `none`, `unbounded` or empty for unbounded reach. "
        "Absent: the service's SM_POLL_REACH_MINUTES (120), as for a report."))
    days: int = Field(MAX_TIMELINE_DAYS, ge=1, le=MAX_TIMELINE_DAYS,
                      description="How many days before `now` the intervals and segments cover")


class BusinessInterval(BaseModel):
    begin: str = Field(description="UTC")
    end: str = Field(description="UTC")
    begin_local: str = Field(description="In the store's time zone, with its offset")
    end_local: str
    special_date: Optional[str] = Field(description="The special date (YYYY-MM-DD) whose hours these are, "
                                                    "null on a regular day")


class SpecialDate(BaseModel):
    date: str = Field(description="Local date, YYYY-MM-DD")
    closed: bool
    hours: list[list[str]] = Field(description="[start, end] local times (HH:MM:SS) when open")


class DstChange(BaseModel):
    at: str = Field(description="UTC")
    offset_before: str
    offset_after: str


class TimelinePoll(BaseModel):
    at: str = Field(description="UTC")
    status: Literal["active", "inactive"]
    evidence: bool = Field(description="Whether a segment takes its status from this poll")


class Segment(BaseModel):
    begin: str = Field(description="UTC")
    end: str = Field(description="UTC")
    status: Literal["up", "down", "unknown"]
    seconds: float
    poll: Optional[str] = Field(description="The poll (UTC) whose status this is; null for unknown")


class TimelineTotals(BaseModel):
    """The store's row of a report with the same as_of and reach (extended columns)."""

    uptime_last_hour: float
    uptime_last_day: float
    uptime_last_week: float
    downtime_last_hour: float
    downtime_last_day: float
    downtime_last_week: float
    unknown_last_hour: float
    unknown_last_day: float
    unknown_last_week: float


class StoreTimeline(BaseModel):
    """Why a store's report row says what it says: the business time from `from` to `now`, cut into
    segments that are up or down (with the poll they take it from) or unknown (no poll within reach)."""

    store_id: str
    timezone: str = Field(description="The zone used (the store's, or the default if missing or unknown)")
    timezone_source: str = Field(description="store, default (missing) or default (unknown)")
    now: str = Field(description="UTC: the report's `now`")
    from_: str = Field(alias="from", description="UTC: `days` before now")
    reach_minutes: Optional[int] = Field(description="null = unbounded")
    business_intervals: list[BusinessInterval]
    special_dates: list[SpecialDate]
    dst_changes: list[DstChange]
    polls: list[TimelinePoll] = Field(description="From a day before `from` to `now`, oldest first")
    segments: list[Segment]
    totals: TimelineTotals


class StoreSearchQuery(BaseModel):
    q: StoreIdPart = Field("", description="A part of the store id (any case); empty lists the first stores")
    limit: int = Field(20, ge=1, le=MAX_FIND_LIMIT, description="Stores to list")


class FoundStore(BaseModel):
    store_id: str
    has_hours: bool = Field(description="false: no weekly hours (open 24/7)")
    timezone: Optional[str] = Field(description="As loaded; null if missing")
    timezone_known: bool


class StoreSearch(BaseModel):
    """Polled stores whose id contains q, those that start with it first."""

    model_config = ConfigDict(openapi_extra={"links": {"store_timeline": {
        "operationId": "store_timeline", "parameters": {"store_id": "$response.body#/stores/0/store_id"}}}})

    q: str
    total: int = Field(description="All the stores that match")
    stores: list[FoundStore]


class LoadRecord(LoadSummary):
    finished_at: str = Field(description="UTC")


class DataSummary(BaseModel):
    stores: int = Field(description="Polled stores")
    polls: int
    first_poll: Optional[str] = Field(description="UTC; null without polls")
    last_poll: Optional[str]
    stores_without_hours: int = Field(description="Polled stores without weekly hours (open 24/7)")
    stores_without_timezone: int
    stores_with_unknown_timezone: int
    special_hours_rows: int
    stores_with_special_hours: int
    stores_not_polled: int = Field(description="Stores with hours or a time zone but no poll")
    default_timezone: str
    last_load: Optional[LoadRecord] = Field(description="The newest load of any table; null before any")
    loads: list[LoadRecord] = Field(description="The latest loads, newest first")
