"""Declarative field maps: from a Salesforce record to a Charles contact upsert body.

A map is a YAML file. ``docs/field-maps.md`` describes the format, ``map_schema.py``
validates it and ``transforms.py`` converts the values. Loading reports problems with the
file, line and key. ``FieldMap.check_against`` compares the map with the object's
describe (``describe_check.py``) before any record moves. ``FieldMap.apply`` turns one record into either a ``Mapped`` payload
or a ``Skipped`` outcome with a reason. It never raises, so one bad record cannot stop a
cycle, and each value it drops adds a note that names the field and the reason but
never the value.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import phonenumbers
import yaml
from pydantic import ValidationError

from connector import transforms
from connector.describe_check import FieldUse, field_exists, type_problem, where_matches, where_problem
from connector.errors import ConfigurationError
from connector.map_schema import FieldMapSpec, TagSpec, ValueSpec, soql_literal, template_fields
from connector.transforms import COUNTRY_FIELD_TYPES, FIELD_TYPES, Converted, country_to_region

__all__ = ["FieldMap", "Mapped", "Skipped", "SOURCE_TYPE", "builtin_map_path", "country_to_region", "load_field_map"]

SOURCE_TYPE = "salesforce"

SkipReason = Literal["no_phone", "phone_invalid", "phone_region_unknown", "filtered_out", "mapping_error"]

@dataclass(frozen=True)
class Mapped:
    """A record that becomes an upsert; ``notes`` name the values dropped and why."""

    record_id: str
    payload: dict[str, Any]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skipped:
    """A record that is not sent, with a stable reason code for counting."""

    record_id: str
    reason: SkipReason
    detail: str


# One compiled map entry: the strings it yields for a record, from the first field that gives any.
_Extract = Callable[["_RecordContext"], list[str]]
# A transform with its options bound: one raw value, and the record it came from, to a Converted.
_Convert = Callable[[Any, "_RecordContext"], Converted]


@dataclass(frozen=True)
class _Target:
    """One entry of the map: where in the file it is, what it reads and where its value goes."""

    key: str
    loc: tuple[str | int, ...]
    spec: ValueSpec
    output: str
    labels: dict[str, str] = field(default_factory=dict)


class _RecordContext:
    """Per-record state of one ``apply``: the record, the notes so far, resolved phone regions and parsed phones."""

    def __init__(self, field_map: FieldMap, record: dict[str, Any]) -> None:
        self.field_map = field_map
        self.record = record
        self.notes: dict[str, None] = {}
        self._regions: dict[tuple[str, ...], str | None] = {}
        # The default map reads MobilePhone and Phone for the identity, the phone numbers and
        # the extension. Parsing each number once per record halves the time spent on phones.
        self._parsed: dict[tuple[str, str | None], phonenumbers.PhoneNumber | Converted] = {}
        self._e164: dict[tuple[str, str | None], Converted] = {}

    def read(self, name: str) -> Any:
        if name in self.field_map._unavailable:
            return None
        if "." not in name:
            return self.record.get(name)
        value: Any = self.record
        for part in name.split("."):
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    def note(self, field_name: str, key: str, problem: str) -> None:
        self.notes[f"{field_name} dropped from {key}: {problem}"] = None

    def phone(self, raw: Any, region: str | None, transform: Literal["phone", "phone_extension"]) -> Converted:
        """Apply the ``phone`` or ``phone_extension`` transform, parsing each text and region once per record."""
        if not isinstance(raw, str):
            return transforms.to_phone(raw, region) if transform == "phone" else transforms.to_phone_extension(raw, region)
        key = (raw, region)
        number = self._parsed.get(key)
        if number is None:
            number = self._parsed[key] = transforms.parse_phone(raw, region)
        if isinstance(number, Converted):
            return number
        if transform == "phone_extension":
            return transforms.phone_extension(number)
        converted = self._e164.get(key)
        if converted is None:
            converted = self._e164[key] = transforms.phone_e164(number, region)
        return converted

    def region(self, country_fields: tuple[str, ...]) -> str | None:
        """Return the region for national phone numbers: the record's first recognised country, else the default."""
        if country_fields not in self._regions:
            region = self.field_map.default_region
            for name in country_fields:
                country = transforms.scalar_text(self.read(name))
                found = country_to_region(country.values[0]) if country.values else None
                if found in phonenumbers.SUPPORTED_REGIONS:
                    region = found
                    break
            self._regions[country_fields] = region
        return self._regions[country_fields]


class FieldMap:
    """A validated field map, ready to apply to records."""

    def __init__(
        self,
        spec: FieldMapSpec,
        *,
        origin: str,
        default_region: str | None = None,
        tags_field: str | None = None,
        node: yaml.Node | None = None,
    ) -> None:
        self.spec = spec
        self.origin = origin
        self.default_region = default_region
        self._node = node
        self._unavailable: frozenset[str] = frozenset()
        self._identity_countries = tuple(spec.identity.country_from or ())

        self._names = [
            _target(f"names.{name}", ("names", name), value, name) for name, value in spec.names.items()
        ]
        self._phones = [
            _target(f"phone_numbers.{index}", ("phone_numbers", index), value, value.type)
            for index, value in enumerate(spec.phone_numbers)
        ]
        self._emails = [
            _target(f"email_addresses.{index}", ("email_addresses", index), value, value.type)
            for index, value in enumerate(spec.email_addresses)
        ]
        self._properties = [
            _target(f"custom_properties.{name}", ("custom_properties", name), value, name)
            for name, value in spec.custom_properties.items()
        ]
        self._tags = [_target(f"tags.{index}", ("tags", index), value, "tags") for index, value in enumerate(spec.tags)]
        if tags_field:
            extra = TagSpec.model_validate({"from": tags_field})
            self._tags.append(_target("SFCHARLES_TAGS_FIELD", (), extra, "tags"))
        self._uses = self._field_uses()
        self._compile()

    @property
    def object_name(self) -> str:
        return self.spec.object

    def _targets(self) -> list[_Target]:
        return [*self._names, *self._phones, *self._emails, *self._properties, *self._tags]

    def _field_uses(self) -> list[FieldUse]:
        identity = self.spec.identity
        uses = [
            FieldUse("identity.from", ("identity", "from"), name, FIELD_TYPES["phone"], "transform 'phone'", identity.optional)
            for name in identity.source
        ]
        uses += [
            FieldUse("identity.country_from", ("identity", "country_from"), name, COUNTRY_FIELD_TYPES, "a country field", identity.optional)
            for name in self._identity_countries
        ]
        for target in self._targets():
            spec = target.spec
            for name in spec.source or ():
                reader = f"transform {spec.transform!r}"
                uses.append(FieldUse(target.key, target.loc, name, FIELD_TYPES[spec.transform], reader, spec.optional))
            if spec.template is not None:
                for name in template_fields(spec.template):
                    uses.append(FieldUse(target.key, target.loc, name, None, "a template", spec.optional))
            for name in spec.country_from or ():
                uses.append(FieldUse(target.key, target.loc, name, COUNTRY_FIELD_TYPES, "a country field", spec.optional))
        return uses

    def source_fields(self) -> list[str]:
        """Return every Salesforce field the map reads, in a stable order, for the SOQL SELECT."""
        names: dict[str, None] = {}
        for use in self._uses:
            if use.name not in self._unavailable:
                names[use.name] = None
        for name in self.spec.where:
            names[name] = None
        return list(names)

    def soql_conditions(self) -> list[str]:
        """Return the map's ``where`` as SOQL conditions (``IsPersonAccount = true``), to be joined with AND.

        Field names passed the API-name pattern when the map was loaded, and values are
        written as SOQL literals with strings escaped, so no fragment can change the
        query's structure.
        """
        return [f"{name} = {soql_literal(value)}" for name, value in self.spec.where.items()]

    # ------------------------------------------------------------------ checks against the org

    def check_against(self, describe_fields: dict[str, str]) -> list[str]:
        """Compare the map with the object's describe (field API name to field type).

        Returns the problems found: missing fields, types that a transform cannot read,
        and ``where`` values that do not suit their field. Optional fields that the org
        lacks are dropped from the map instead, because orgs differ (MiddleName exists
        only where middle names are enabled).

        NOTE: fields behind a relationship (Account.Name) are checked only for the lookup
        field that leads to them (AccountId), because the parent object's describe is not read.
        """
        types = {name.lower(): str(field_type).lower() for name, field_type in describe_fields.items()}
        problems: list[str] = []
        unavailable: set[str] = set()
        for use in self._uses:
            if not field_exists(use.name, types):
                if use.optional:
                    unavailable.add(use.name)
                else:
                    problems.append(
                        f"{self._position(use.key, use.loc)}: field {use.name!r} does not exist on {self.object_name} "
                        "in this org; fix the name, mark it optional: true, or remove it"
                    )
                continue
            field_type = types.get(use.name.lower())
            if field_type is None:
                continue  # a relationship path: its type is on the parent object
            problem = type_problem(field_type, use)
            if problem:
                problems.append(f"{self._position(use.key, use.loc)}: field {use.name!r} is of type {field_type} on {self.object_name}, {problem}")
        for name, literal in self.spec.where.items():
            problem = where_problem(name, literal, types, self.object_name)
            if problem:
                problems.append(f"{self._position(f'where.{name}', ('where', name))}: {problem}")
        self._unavailable = frozenset(unavailable)
        self._compile()
        if all(name in unavailable for name in self.spec.identity.source):
            problems.append(
                f"{self._position('identity.from', ('identity', 'from'))}: none of the identity fields exists on "
                f"{self.object_name} in this org, so no record could get an external_reference_id"
            )
        return problems

    def _position(self, key: str, loc: tuple[str | int, ...]) -> str:
        line = _line_of(self._node, loc) if self._node is not None and loc else None
        return f"{self.origin}:{line}: {key}" if line else f"{self.origin}: {key}"

    # ------------------------------------------------------------------ mapping records

    def apply(self, record: dict[str, Any]) -> Mapped | Skipped:
        """Map one record to an upsert body, or skip it with a reason; never raises."""
        if not isinstance(record, dict):
            return Skipped("", "mapping_error", f"the record is a {type(record).__name__}, not a JSON object")
        record_id = _record_id(record)
        try:
            return self._apply(record, record_id)
        except Exception as exc:  # noqa: BLE001
            # The contract is that one record never stops a cycle. A bug here skips the
            # record under its own reason, which the cycle summary counts, instead of raising.
            return Skipped(record_id, "mapping_error", f"mapping failed with {exc.__class__.__name__}; report this as a bug")

    def _apply(self, record: dict[str, Any], record_id: str) -> Mapped | Skipped:
        context = _RecordContext(self, record)
        for name, literal in self.spec.where.items():
            if not where_matches(context.read(name), literal):
                return Skipped(record_id, "filtered_out", f"{name} does not equal the map's where value")

        identity = self._identity(context, record_id)
        if isinstance(identity, Skipped):
            return identity
        payload: dict[str, Any] = {"external_reference_id": identity, "source_type": SOURCE_TYPE}

        for output, extract in self._compiled_names:
            values = extract(context)
            if values:
                payload[output] = values[0]

        phones = _contact_points(self._compiled_phones, context, fold=False)
        if phones:
            payload["phone_numbers"] = phones
        emails = _contact_points(self._compiled_emails, context, fold=True)
        if emails:
            payload["email_addresses"] = emails

        properties = {}
        for output, extract in self._compiled_properties:
            values = extract(context)
            if values:
                properties[output] = values[0]
        if properties:
            payload["custom_properties"] = properties

        tags: dict[str, None] = {}
        for _output, extract in self._compiled_tags:
            tags.update(dict.fromkeys(extract(context)))
        if tags:
            payload["tags"] = list(tags)
        return Mapped(record_id, payload, tuple(context.notes))

    def _identity(self, context: _RecordContext, record_id: str) -> str | Skipped:
        region = context.region(self._identity_countries)
        first_problem: tuple[str, Converted] | None = None
        available = self._identity_fields
        for name, read in self._identity_readers:
            converted = context.phone(read(context.record), region, "phone")
            if converted.values:
                return converted.values[0]
            if converted.problem:
                context.note(name, "external_reference_id", converted.problem)
                if first_problem is None:
                    first_problem = (name, converted)
        if first_problem is None:
            verb = "is" if len(available) == 1 else "are"
            return Skipped(record_id, "no_phone", f"{' and '.join(available) or 'the identity fields'} {verb} empty")
        name, converted = first_problem
        return Skipped(record_id, converted.phone_problem or "phone_invalid", f"{name}: {converted.problem}")

    # ------------------------------------------------------------------ compiling the map

    def _compile(self) -> None:
        """Build one extract function per map entry, for the fields this org has.

        ``apply`` then runs a flat list of functions: the checks of the entry's spec (its
        transform, template, labels and the fields that exist) are made here once instead
        of once per record. ``check_against`` compiles again after it drops fields.
        """
        self._identity_fields = [name for name in self.spec.identity.source if name not in self._unavailable]
        self._identity_readers = [(name, _field_reader(name)) for name in self._identity_fields]
        self._compiled_names = [(target.output, self._compile_target(target)) for target in self._names]
        self._compiled_phones = [(target.output, self._compile_target(target)) for target in self._phones]
        self._compiled_emails = [(target.output, self._compile_target(target)) for target in self._emails]
        self._compiled_properties = [(target.output, self._compile_target(target)) for target in self._properties]
        self._compiled_tags = [(target.output, self._compile_target(target)) for target in self._tags]

    def _compile_target(self, target: _Target) -> _Extract:
        """Return the function that does what ``_values`` does for ``target``."""
        spec = target.spec
        if spec.value is not None:
            constant = spec.value
            return lambda _context: [constant]
        if spec.template is not None:
            return lambda context: self._values(target, context)

        key = target.key
        readers = [(name, _field_reader(name)) for name in spec.source or () if name not in self._unavailable]
        label = self._labeler(target)
        if spec.transform == "text":

            def extract_text(context: _RecordContext) -> list[str]:
                record = context.record
                for field_name, read in readers:
                    raw = read(record)
                    if isinstance(raw, str) and raw.isascii():
                        # What scalar_text does to ASCII text, without building a Converted.
                        plain = raw.strip()
                        if plain:
                            return [plain if label is None else label(plain)]
                        continue
                    converted = transforms.scalar_text(raw)
                    if converted.problem:
                        context.note(field_name, key, converted.problem)
                    if converted.values:
                        return list(converted.values) if label is None else [label(value) for value in converted.values]
                return []

            return extract_text

        convert = self._converter(spec)

        def extract(context: _RecordContext) -> list[str]:
            record = context.record
            for field_name, read in readers:
                converted = convert(read(record), context)
                if converted.problem:
                    context.note(field_name, key, converted.problem)
                if converted.values:
                    return list(converted.values) if label is None else [label(value) for value in converted.values]
            return []

        return extract

    def _converter(self, spec: ValueSpec) -> _Convert:
        """Return ``spec``'s transform as a function of the raw value and the record; as ``_convert`` does."""
        transform = spec.transform
        if transform in ("phone", "phone_extension"):
            countries = tuple(spec.country_from) if spec.country_from else self._identity_countries
            return lambda raw, context: context.phone(raw, context.region(countries), transform)
        if transform == "email":
            return lambda raw, _context: transforms.to_email(raw)
        if transform == "multipicklist":
            split = spec.split
            return lambda raw, _context: transforms.to_list(raw, split)
        if transform == "boolean":
            return lambda raw, _context: transforms.to_boolean(raw)
        if transform == "number":
            decimals = spec.decimals
            return lambda raw, _context: transforms.to_number(raw, decimals)
        if transform == "date":
            date_format = spec.format
            return lambda raw, _context: transforms.to_date(raw, date_format)
        if transform == "datetime":
            datetime_format = spec.format
            return lambda raw, _context: transforms.to_datetime(raw, datetime_format)
        return lambda raw, _context: transforms.scalar_text(raw)

    @staticmethod
    def _labeler(target: _Target) -> Callable[[str], str] | None:
        """Return the function that applies the entry's value map, or None when it has none."""
        if not target.labels:
            return None
        labels = target.labels
        default = target.spec.default

        def label(value: str) -> str:
            found = labels.get(value.casefold())
            if found is not None:
                return found
            return default if default is not None else value

        return label

    def _values(self, target: _Target, context: _RecordContext) -> list[str]:
        """Return the strings one map entry yields for the record: from the first field that gives any."""
        spec = target.spec
        if spec.value is not None:
            return [spec.value]
        text: str | None = None
        if spec.template is not None:
            text = self._render(target, context)
            candidates: list[str] = ["template"] if text else []
        else:
            candidates = [name for name in spec.source or () if name not in self._unavailable]
        for field_name in candidates:
            # Fields are read one at a time, so the ones after the first that gives a value are not read.
            raw = text if spec.template is not None else context.read(field_name)
            if spec.transform == "text" and isinstance(raw, str) and raw.isascii():
                # The common case, without building a Converted: what scalar_text does to ASCII text.
                plain = raw.strip()
                if plain:
                    return [self._label(target, plain)]
                continue
            converted = self._convert(spec, raw, context)
            if converted.problem:
                context.note(field_name, target.key, converted.problem)
            if converted.values:
                return [self._label(target, value) for value in converted.values]
        return []

    def _render(self, target: _Target, context: _RecordContext) -> str | None:
        """Fill a template; empty placeholders become empty text, and whitespace runs collapse to one space."""
        parts: list[str] = []
        filled = False
        for literal, field_name, _spec, _conversion in string.Formatter().parse(target.spec.template or ""):
            parts.append(literal)
            if field_name is None:
                continue
            converted = transforms.scalar_text(context.read(field_name))
            if converted.problem:
                context.note(field_name, target.key, converted.problem)
            if converted.values:
                parts.append(converted.values[0])
                filled = True
        return " ".join("".join(parts).split()) if filled else None

    def _convert(self, spec: ValueSpec, raw: Any, context: _RecordContext) -> Converted:
        transform = spec.transform
        if transform in ("phone", "phone_extension"):
            countries = tuple(spec.country_from) if spec.country_from else self._identity_countries
            return context.phone(raw, context.region(countries), transform)
        if transform == "email":
            return transforms.to_email(raw)
        if transform == "multipicklist":
            return transforms.to_list(raw, spec.split)
        if transform == "boolean":
            return transforms.to_boolean(raw)
        if transform == "number":
            return transforms.to_number(raw, spec.decimals)
        if transform == "date":
            return transforms.to_date(raw, spec.format)
        if transform == "datetime":
            return transforms.to_datetime(raw, spec.format)
        return transforms.scalar_text(raw)

    @staticmethod
    def _label(target: _Target, value: str) -> str:
        if not target.labels:
            return value
        label = target.labels.get(value.casefold())
        if label is not None:
            return label
        return target.spec.default if target.spec.default is not None else value


def _contact_points(entries: list[tuple[str, _Extract]], context: _RecordContext, *, fold: bool) -> list[dict[str, str]]:
    """Return ``{type, value}`` entries, dropping repeats of a value (case-insensitively when ``fold``)."""
    points: list[dict[str, str]] = []
    seen: set[str] = set()
    for output, extract in entries:
        for value in extract(context):
            key = value.casefold() if fold else value
            if key not in seen:
                seen.add(key)
                points.append({"type": output, "value": value})
    return points


def _field_reader(name: str) -> Callable[[dict[str, Any]], Any]:
    """Return the function that reads field ``name`` from a record; a dotted name follows relationships."""
    if "." not in name:
        return lambda record: record.get(name)
    parts = name.split(".")

    def read_path(record: dict[str, Any]) -> Any:
        value: Any = record
        for part in parts:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    return read_path


def _target(key: str, loc: tuple[str | int, ...], spec: ValueSpec, output: str) -> _Target:
    labels = {source.casefold(): label for source, label in (spec.map or {}).items()}
    return _Target(key, loc, spec, output, labels)


def _record_id(record: dict[str, Any]) -> str:
    value = record.get("Id")
    return value if isinstance(value, str) else ""


def builtin_map_path(name: str = "contact.yaml") -> Path:
    """Return the path of a shipped map: in the source tree in a checkout, else in the installed package."""
    checkout = Path(__file__).resolve().parent.parent / "field_maps" / name
    if checkout.is_file():
        return checkout
    return Path(str(resources.files("connector") / "builtin_field_maps" / name))


def load_field_map(path: Path | None = None, *, default_region: str | None = None, tags_field: str | None = None) -> FieldMap:
    """Read and validate a field map file; raise ConfigurationError naming file, line and key."""
    map_path = Path(path) if path is not None else builtin_map_path()
    try:
        text = map_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"field map {str(map_path)!r}: cannot read it ({exc.strerror}); set SFCHARLES_FIELD_MAP to an existing file") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"field map {map_path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"field map {map_path}: the top level must be a mapping with object, identity and the target fields")
    try:
        spec = FieldMapSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = [str(part) for part in error["loc"]]
            line = _line_of(node, error["loc"])
            where = f"{map_path}:{line}" if line else str(map_path)
            problems.append(f"  - {where}: key {'.'.join(loc) or '(top level)'}: {error['msg'].removeprefix('Value error, ')}")
        raise ConfigurationError(f"invalid field map ({len(problems)} problem(s)):\n" + "\n".join(problems)) from None
    return FieldMap(spec, origin=str(map_path), default_region=default_region, tags_field=tags_field, node=node)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Return the 1-based line of the deepest key or list item on the error's path that exists."""
    line = None
    current = node
    for part in loc:
        if current is None:
            break
        line = current.start_mark.line + 1
        child = None
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                if key_node.value == str(part):
                    line = key_node.start_mark.line + 1
                    child = value_node
                    break
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and part < len(current.value):
            child = current.value[part]
            line = child.start_mark.line + 1
        current = child
    return line
