"""The scenario file: sites, nodes, links and workloads, validated with pydantic.

A bad file raises ConfigError with one line naming the file, the line, the field and the fix.
See docs/plan.md for a full, commented example.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgeshift.errors import ConfigError

_LOC_RE = re.compile(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*)\b")


# Sane ranges: far beyond any real deployment, yet small enough that sizing, costs and plots
# stay finite (a rate of 1e15 req/s or a price of 1e300 USD is a typo, not a plan).
MAX_NAME_CHARS = 128
MAX_PATH_CHARS = 1024
MAX_RPS = 1e9
MAX_MS = 3_600_000.0  # one hour, for SLOs and round trips
MAX_USD = 1e9  # one price: a node, an hour, a GB
MAX_NODES = 1_000_000  # per node group
MAX_BYTES = 1 << 40  # one request's payload: 1 TiB
MAX_DIM = 1 << 31

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Usd = Annotated[float, Field(ge=0, le=MAX_USD)]
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]


class _Strict(BaseModel):
    # inf and nan are refused by every float field: they would reach sizing, costs and plots.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NodeGroup(_Strict):
    """Identical nodes at a site: ``count`` exist (bought already), ``max_add`` may be added."""

    target: Name = Field(description="catalog target id (see `edgeshift targets list`)")
    name: Name | None = Field(None, description="pool name, shown in the plan; default: target")
    count: int = Field(0, ge=0, le=MAX_NODES, description="nodes already there (purchase is sunk)")
    max_add: int | None = Field(
        None,
        ge=0,
        le=MAX_NODES,
        description="nodes/instances that may be added; default 0 owned, 1000 cloud",
    )
    purchase_usd: Usd | None = Field(None, description="overrides the catalog price")
    lifetime_years: float | None = Field(None, ge=0.01, le=100, description="overrides the catalog")
    usd_per_hour: Usd | None = Field(None, description="overrides the catalog price")


class Site(_Strict):
    name: Name
    kind: Literal["device", "edge", "on-prem", "cloud"]
    region: Name | None = Field(None, description="data-policy region; default: the site name")
    usd_per_kwh: float = Field(0.15, ge=0, le=1000)
    power_budget_w: float | None = Field(None, gt=0, le=1e9)
    lan_rtt_ms: float = Field(
        0.5, ge=0, le=MAX_MS, description="round trip between nodes of this site"
    )
    nodes: list[NodeGroup] = Field(default_factory=list)


class Link(_Strict):
    between: tuple[Name, Name]
    rtt_ms: float = Field(ge=0, le=MAX_MS)
    # From 1 kbit/s (a narrowband radio) to 10 Pbit/s: beyond, transfer times over/underflow.
    bandwidth_mbps: float = Field(ge=0.001, le=1e10)
    usd_per_gb: Usd = Field(0.0, description="egress price of payloads crossing it")


class Slo(_Strict):
    p95_ms: float | None = Field(None, gt=0, le=MAX_MS)
    p99_ms: float | None = Field(None, gt=0, le=MAX_MS)

    @model_validator(mode="after")
    def _exactly_one(self) -> Slo:
        if (self.p95_ms is None) == (self.p99_ms is None):
            raise ValueError("give exactly one of p95_ms or p99_ms, e.g. `slo: {p99_ms: 50}`")
        return self

    @property
    def quantile(self) -> float:
        return 0.95 if self.p95_ms is not None else 0.99

    @property
    def ms(self) -> float:
        return self.p95_ms if self.p95_ms is not None else self.p99_ms  # type: ignore[return-value]


class VariantSpec(_Strict):
    """Another way to run the model: an optimize artifact, or a precision with a known drop."""

    artifact: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description="artifact dir from `edgeshift optimize`",
    )
    precision: Literal["fp32", "fp16", "bf16", "int8"] | None = None
    accuracy_drop: float | None = Field(
        None, ge=0, le=100, description="measured metric drop vs fp32"
    )

    @field_validator("artifact")
    @classmethod
    def _path_parts(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value)

    @model_validator(mode="after")
    def _one_kind(self) -> VariantSpec:
        if (self.artifact is None) == (self.precision is None):
            raise ValueError(
                "give either `artifact: DIR` or `precision: int8` with `accuracy_drop: X`"
            )
        if self.precision is not None and self.accuracy_drop is None:
            raise ValueError(
                "a precision variant needs its measured `accuracy_drop` (0 if none), "
                "e.g. from `edgeshift optimize`"
            )
        return self


class Workload(_Strict):
    name: Name
    model: str = Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description="zoo name, .onnx file or artifact dir (relative to the file)",
    )
    site: Name = Field(description="the site where its data is produced")
    mean_rps: float = Field(gt=0, le=MAX_RPS)
    peak_rps: float = Field(gt=0, le=MAX_RPS)
    payload_bytes: int = Field(
        ge=0, le=MAX_BYTES, description="request size sent when it crosses a link"
    )
    slo: Slo
    data_policy: Literal["anywhere", "region", "site"] = "anywhere"
    allow_sites: list[Name] | None = None
    deny_sites: list[Name] = Field(default_factory=list)
    shapes: dict[Name, Dim | list[Dim]] = Field(
        default_factory=dict,
        description="dynamic dims or input shapes, as `--shape`: {seq: 128} or {x: [1, 64]}",
    )
    accuracy_budget: float = Field(0.0, ge=0, le=100, description="largest accuracy drop allowed")
    variants: list[VariantSpec] = Field(default_factory=list, max_length=64)

    @field_validator("model")
    @classmethod
    def _path_parts(cls, value: str) -> str:
        return _check_path(value)

    @model_validator(mode="after")
    def _peak_at_least_mean(self) -> Workload:
        if self.peak_rps < self.mean_rps:
            raise ValueError(
                f"peak_rps {self.peak_rps:g} < mean_rps {self.mean_rps:g} — peak is the "
                "busiest rate, at least the mean"
            )
        return self


class Simulation(_Strict):
    requests: int = Field(
        20_000, ge=100, le=10_000_000, description="simulated requests per workload"
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed of the arrivals")
    service: Literal["deterministic", "exponential"] = "deterministic"


class Scenario(_Strict):
    """A whole scenario file."""

    version: Literal[1] = 1
    name: str = Field("", max_length=MAX_NAME_CHARS)
    headroom: float = Field(0.8, ge=0.01, le=1, description="max utilization at peak rate")
    hours_per_month: float = Field(730.0, ge=1, le=744, description="744 h: a 31-day month")
    sites: list[Site] = Field(min_length=1)
    links: list[Link] = Field(default_factory=list)
    workloads: list[Workload] = Field(min_length=1)
    simulation: Simulation = Field(default_factory=lambda: Simulation.model_validate({}))

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        names = [s.name for s in self.sites]
        _unique(names, "sites", "site")
        _unique([w.name for w in self.workloads], "workloads", "workload")
        for i, site in enumerate(self.sites):
            # Groups with one name and identical hardware merge into one pool; clashes do not.
            identity: dict[str, tuple[object, ...]] = {}
            for j, n in enumerate(site.nodes):
                hardware = (n.target, n.purchase_usd, n.lifetime_years, n.usd_per_hour)
                if identity.setdefault(n.name or n.target, hardware) != hardware:
                    raise ValueError(
                        f"sites[{i}].nodes[{j}].name: {n.name or n.target!r} names two different "
                        "node groups at one site — give each its own name"
                    )
        known = set(names)
        seen: set[frozenset[str]] = set()
        for i, link in enumerate(self.links):
            for end in link.between:
                _known(end, known, f"links[{i}].between")
            if link.between[0] == link.between[1]:
                raise ValueError(
                    f"links[{i}] joins {link.between[0]} to itself — use the site's lan_rtt_ms"
                )
            key = frozenset(link.between)
            if key in seen:
                raise ValueError(f"links[{i}]: a second link between {' and '.join(link.between)}")
            seen.add(key)
        regions = {s.name: s.region or s.name for s in self.sites}
        for i, w in enumerate(self.workloads):
            _known(w.site, known, f"workloads[{i}].site")
            for other in [*(w.allow_sites or []), *w.deny_sites]:
                _known(other, known, f"workloads[{i}] allow_sites/deny_sites")
            if w.allow_sites is not None and w.data_policy != "anywhere":
                outside = [
                    s
                    for s in w.allow_sites
                    if (w.data_policy == "site" and s != w.site)
                    or (w.data_policy == "region" and regions[s] != regions[w.site])
                ]
                if outside:
                    raise ValueError(
                        f"workloads[{i}] ({w.name}): data_policy {w.data_policy!r} keeps data "
                        f"in {w.site if w.data_policy == 'site' else regions[w.site]} but "
                        f"allow_sites names {', '.join(outside)} — drop them or relax the policy"
                    )
            if w.site in w.deny_sites and w.data_policy == "site":
                raise ValueError(
                    f"workloads[{i}] ({w.name}): data may not leave {w.site} but deny_sites "
                    f"denies {w.site} itself — nothing could run it; drop one of the two"
                )
        return self


def _check_path(value: str) -> str:
    # A file system refuses a component past 255 bytes with an OSError, not a clear message.
    long = [part for part in re.split(r"[/\\]", value) if len(part.encode()) > 255]
    if long:
        raise ValueError(
            f"a path component is {len(long[0].encode())} bytes, file systems allow 255 — "
            "shorten the name"
        )
    if "\x00" in value:
        raise ValueError("contains a NUL character — give a plain zoo name or path")
    return value


def _unique(names: list[str], where: str, what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: {what} name {dupes[0]!r} is used twice — names must differ")


def _known(name: str, known: set[str], where: str) -> None:
    if name in known:
        return
    near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.5)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ValueError(
        f"{where}: unknown site {name!r} — {hint}sites are: {', '.join(sorted(known))}"
    )


def parse_scenario(text: str, source: str = "scenario") -> Scenario:
    """Validate scenario YAML TEXT; errors name SOURCE, the line and the field."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on big files
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError(
            f"{source}: malformed YAML at {where} ({exc.problem}) — fix the syntax there"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML ({exc}) — fix the syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a scenario is a mapping with sites, links and workloads — "
            "see docs/plan.md for an example"
        )
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        # A misspelt field also reports the field it meant as missing: name the typo first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        err = errors[0]
        loc = tuple(err["loc"])
        field = _loc_text(loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        # Cross-field checks run on the whole file; their message starts with the field path.
        root = yaml.compose(text, Loader=loader)  # node positions, only when reporting
        line = _line_of(root, loc or _loc_from_message(msg))
        at = f" (line {line})" if line else ""
        if err["type"] == "extra_forbidden":
            msg = "unknown field — remove it or check its spelling (see docs/plan.md)"
        elif err["type"] == "missing":
            msg = "missing — add it (see docs/plan.md for every field)"
        else:
            msg = _with_fix(err, msg)
        where = f"{field}: " if field else ""
        raise ConfigError(f"{source}{at}: {where}{msg}") from exc


_BOUNDS = {"gt": "> {}", "ge": ">= {}", "lt": "< {}", "le": "<= {}"}


def _with_fix(err: Any, msg: str) -> str:
    """Pydantic's message for ERR, on one line, with what to write instead."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    shown = _short(value)
    if kind == "finite_number":
        return f"{shown} is not a finite number — give a real value (no .inf or .nan)"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        bounds = " and ".join(_BOUNDS[k].format(_short(v)) for k, v in ctx.items() if k in _BOUNDS)
        return f"{shown} is out of range — give a number {bounds} (see docs/plan.md)"
    if kind == "string_too_long":
        return (
            f"{len(value)} characters, at most {ctx.get('max_length')} — shorten it"
            if isinstance(value, str)
            else f"too long — at most {ctx.get('max_length')} characters"
        )
    if kind == "string_too_short":
        return "empty — give a name"
    if kind == "too_long":
        return f"too many items, at most {ctx.get('max_length')} — list fewer"
    if kind == "too_short":
        return f"too few items, at least {ctx.get('min_length')} — add one (see docs/plan.md)"
    one_line = " ".join(msg.split())
    if "—" in one_line:
        return one_line
    return f"{one_line}, got {shown} — see docs/plan.md for the field's form"


def _short(value: object) -> str:
    if isinstance(value, str):
        # YAML reads 1e15 (no dot) as a string: show the number the user meant.
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, float):
        return f"{value:g}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate the scenario file at PATH."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"scenario not found: {p} — check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read scenario {p} ({exc}) — pass a YAML text file") from exc
    return parse_scenario(text, str(p))


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _loc_from_message(msg: str) -> tuple[Any, ...]:
    m = _LOC_RE.match(msg)
    if not m:
        return ()
    loc: list[Any] = []
    for name, index in re.findall(r"([a-z_]+)(?:\[(\d+)\])?", m.group(1)):
        loc.append(name)
        if index:
            loc.append(int(index))
    return tuple(loc)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at LOC (the deepest one that exists), None if none does."""
    line = None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if key.value == part:
                    child = value
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            break
        line = child.start_mark.line + 1
        node = child
    return line
