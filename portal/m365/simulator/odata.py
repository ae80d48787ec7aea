"""The OData query options Dataverse accepts, as pure functions over row dicts.

``$filter`` is tokenised and parsed by recursive descent into a small syntax tree, type-checked
against the table's columns, and compiled into one Python closure per query, so filtering
100,000 rows is one call per row. Comparisons follow Dataverse (SQL Server underneath): strings
compare case-insensitively, and a comparison with a null column is unknown, so ``ne`` does not
return rows where the column is null (ask for ``… or col eq null`` to include them).

Paging never re-counts: rows are sorted once by the ``$orderby`` keys plus the primary key,
and ``$skiptoken`` carries the sort-key values of the last row served, so the next page starts
after that position even when rows were added or removed in between.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import functools
import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

MAX_PAGE_SIZE = 5000
MAX_COUNT = 5000

CODE_QUERY = "0x80060888"
CODE_UNKNOWN_PROPERTY = "0x0"

EDM_TYPES = {
    "string": "Edm.String",
    "memo": "Edm.String",
    "int": "Edm.Int32",
    "bigint": "Edm.Int64",
    "decimal": "Edm.Decimal",
    "bool": "Edm.Boolean",
    "datetime": "Edm.DateTimeOffset",
    "guid": "Edm.Guid",
    "choice": "Edm.Int32",
    "lookup": "Edm.Guid",
}
NUMERIC_KINDS = frozenset({"int", "bigint", "decimal", "choice"})
STRING_KINDS = frozenset({"string", "memo"})
GUID_KINDS = frozenset({"guid", "lookup"})

SUPPORTED_OPTIONS = frozenset({"$select", "$filter", "$orderby", "$top", "$count", "$skiptoken"})
UNSUPPORTED_OPTIONS = frozenset({"$expand", "$apply", "$search", "$compute", "$levels"})

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool | None]


class ODataQueryError(Exception):
    """A query option Dataverse would refuse; answered as 400 with Dataverse's error body."""

    status = 400

    def __init__(self, message: str, code: str = CODE_QUERY) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class QueryTarget:
    """What the query engine needs to know about a table.

    ``kinds`` maps every property to its kind (``string``, ``int``, ``choice``, ``lookup``, …);
    ``sort_values`` optionally maps a column to a function giving the value to sort by (Dataverse
    sorts lookups by the target's primary name, not by the GUID).
    """

    type_name: str  # the logical name, e.g. "mailbox"
    key: str
    kinds: Mapping[str, str]
    sort_values: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    def unknown(self, name: str) -> ODataQueryError:
        return ODataQueryError(
            f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{self.type_name}'.",
            CODE_UNKNOWN_PROPERTY,
        )


@dataclass(frozen=True)
class OrderKey:
    column: str
    descending: bool = False


@dataclass
class Query:
    select: list[str] | None = None
    filter_text: str | None = None
    predicate: Predicate | None = None
    orderby: list[OrderKey] = field(default_factory=list)
    top: int | None = None
    count: bool = False
    skiptoken: str | None = None


@dataclass
class Page:
    rows: list[Row]
    count: int | None  # @odata.count (at most 5,000) when $count=true
    total: int  # every row matching the filter
    next_skiptoken: str | None


# -- tokens ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # NAME STRING INT DECIMAL GUID DATETIME DATE LPAREN RPAREN COMMA END
    text: str
    position: int
    value: Any = None


_TOKEN_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("SPACE", re.compile(r"\s+")),
    ("STRING", re.compile(r"'(?:[^']|'')*'")),
    ("GUID", re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?![\w-])")),
    (
        "DATETIME",
        re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?(?:Z|[+-]\d{2}:\d{2})?(?![\w:.-])"),
    ),
    ("DATE", re.compile(r"\d{4}-\d{2}-\d{2}(?![\w:.-])")),
    ("DECIMAL", re.compile(r"-?\d+\.\d+(?:[eE][+-]?\d+)?[mMdDfF]?(?![\w.])|-?\d+[eE][+-]?\d+(?![\w.])")),
    ("INT", re.compile(r"-?\d+[lL]?(?![\w.])")),
    ("NAME", re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")),
    ("LPAREN", re.compile(r"\(")),
    ("RPAREN", re.compile(r"\)")),
    ("COMMA", re.compile(r",")),
]


def syntax_error(text: str, position: int) -> ODataQueryError:
    return ODataQueryError(f"Syntax error at position {position} in '{text}'.")


def _match_token(text: str, position: int) -> tuple[str, re.Match[str]]:
    for kind, pattern in _TOKEN_PATTERNS:
        match = pattern.match(text, position)
        if match:
            return kind, match
    raise syntax_error(text, position)


def tokenize(text: str) -> list[Token]:
    """Split a ``$filter`` expression into tokens; literals carry their Python values."""
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        kind, match = _match_token(text, position)
        lexeme = match.group(0)
        if kind != "SPACE":
            tokens.append(Token(kind, lexeme, position, _literal_value(kind, lexeme, text, position)))
        position = match.end()
    tokens.append(Token("END", "", len(text)))
    return tokens


def _literal_value(kind: str, lexeme: str, text: str, position: int) -> Any:
    if kind == "STRING":
        return lexeme[1:-1].replace("''", "'")
    if kind == "INT":
        return int(lexeme.rstrip("lL"))
    if kind == "DECIMAL":
        return float(lexeme.rstrip("mMdDfF"))
    if kind == "GUID":
        return lexeme.lower()
    if kind in ("DATETIME", "DATE"):
        try:
            return _parse_moment(lexeme)
        except ValueError:
            raise syntax_error(text, position) from None
    return None


def _parse_moment(text: str) -> float:
    """Seconds since the epoch for an ISO 8601 date or date-time (naive means UTC)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    if len(value) == 10:
        moment = dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    else:
        if "." in value:  # Python accepts at most six fractional digits; OData allows seven.
            head, _, tail = value.partition(".")
            digits = re.match(r"\d+", tail)
            assert digits is not None
            value = f"{head}.{digits.group(0)[:6]}{tail[digits.end() :]}"
        moment = dt.datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


@functools.lru_cache(maxsize=262_144)
def _stored_moment(value: str) -> float:
    return _parse_moment(value)


# -- syntax tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnRef:
    name: str
    kind: str


@dataclass(frozen=True)
class Literal:
    kind: str  # string, int, decimal, bool, null, guid, datetime
    value: Any


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Comparison:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Logical:
    op: str  # "and" / "or"
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    operand: Node


Node = ColumnRef | Literal | Call | Comparison | Logical | Not

COMPARISON_OPERATORS = {"eq", "ne", "gt", "ge", "lt", "le"}
OPERATOR_KINDS = {
    "eq": "Equal",
    "ne": "NotEqual",
    "gt": "GreaterThan",
    "ge": "GreaterThanOrEqual",
    "lt": "LessThan",
    "le": "LessThanOrEqual",
}
STRING_FUNCTIONS = {"contains", "startswith", "endswith"}


class _Parser:
    """Recursive descent over the grammar (lowest precedence first)::

    or_expr    := and_expr ("or" and_expr)*
    and_expr   := unary ("and" unary)*
    unary      := "not" unary | comparison
    comparison := primary (("eq"|"ne"|"gt"|"ge"|"lt"|"le") primary)?
    primary    := "(" or_expr ")" | NAME "(" args ")" | NAME | literal
    """

    def __init__(self, text: str, target: QueryTarget) -> None:
        self.text = text
        self.target = target
        self.tokens = tokenize(text)
        self.index = 0

    def peek(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def keyword(self, *words: str) -> str | None:
        token = self.peek()
        if token.kind == "NAME" and token.text in words:
            self.index += 1
            return token.text
        return None

    def expect(self, kind: str) -> Token:
        token = self.peek()
        if token.kind != kind:
            raise syntax_error(self.text, token.position)
        return self.advance()

    def parse(self) -> Node:
        node = self.or_expr()
        if self.peek().kind != "END":
            raise syntax_error(self.text, self.peek().position)
        return node

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.keyword("or"):
            node = Logical("or", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.unary()
        while self.keyword("and"):
            node = Logical("and", node, self.unary())
        return node

    def unary(self) -> Node:
        if self.keyword("not"):
            return Not(self.unary())
        return self.comparison()

    def comparison(self) -> Node:
        left = self.primary()
        op = self.keyword(*COMPARISON_OPERATORS)
        if op is None:
            return left
        return Comparison(op, left, self.primary())

    def primary(self) -> Node:
        token = self.peek()
        if token.kind == "LPAREN":
            self.advance()
            node = self.or_expr()
            self.expect("RPAREN")
            return node
        if token.kind == "NAME":
            self.advance()
            if token.text in ("true", "false"):
                return Literal("bool", token.text == "true")
            if token.text == "null":
                return Literal("null", None)
            if self.peek().kind == "LPAREN":
                return self.call(token)
            if token.text in COMPARISON_OPERATORS or token.text in ("and", "or", "not"):
                raise syntax_error(self.text, token.position)
            kind = self.target.kinds.get(token.text)
            if kind is None:
                raise self.target.unknown(token.text)
            return ColumnRef(token.text, kind)
        literal_kinds = {
            "STRING": "string",
            "INT": "int",
            "DECIMAL": "decimal",
            "GUID": "guid",
            "DATETIME": "datetime",
            "DATE": "datetime",
        }
        if token.kind in literal_kinds:
            self.advance()
            return Literal(literal_kinds[token.kind], token.value)
        raise syntax_error(self.text, token.position)

    def call(self, name_token: Token) -> Node:
        name = name_token.text
        if name not in STRING_FUNCTIONS:
            raise ODataQueryError(f"An unknown function with name '{name}' was found.")
        self.expect("LPAREN")
        args: list[Node] = [self.primary()]
        while self.peek().kind == "COMMA":
            self.advance()
            args.append(self.primary())
        self.expect("RPAREN")
        if len(args) != 2:
            raise ODataQueryError(f"The function '{name}' takes 2 arguments; {len(args)} were given.")
        return Call(name, tuple(args))


# -- compilation -------------------------------------------------------------------------------


def _kind_of(node: Node) -> str:
    if isinstance(node, ColumnRef):
        return node.kind
    if isinstance(node, Literal):
        return node.kind
    return "bool"


def _edm(kind: str) -> str:
    return {"int": "Edm.Int32", "decimal": "Edm.Decimal", "null": "null", "bool": "Edm.Boolean"}.get(
        kind, EDM_TYPES.get(kind, "Edm.String")
    )


def _compatible(left: str, right: str) -> bool:
    if "null" in (left, right):
        return True
    if left in NUMERIC_KINDS | {"int", "decimal"} and right in NUMERIC_KINDS | {"int", "decimal"}:
        return True
    if left in STRING_KINDS and right in STRING_KINDS | {"string"}:
        return True
    if left in GUID_KINDS and right in GUID_KINDS:
        return True
    return left == right


def _normalizer(kind: str) -> Callable[[Any], Any]:
    """Bring a stored or literal value to the form comparisons and sorting use."""
    if kind in STRING_KINDS:
        return lambda value: value.casefold() if isinstance(value, str) else str(value).casefold()
    if kind in GUID_KINDS:
        return lambda value: str(value).lower()
    if kind == "datetime":
        return lambda value: value if isinstance(value, float) else _stored_moment(value)
    if kind == "bool":
        return lambda value: int(bool(value))
    return lambda value: value


def _three_valued_and(left: Predicate, right: Predicate) -> Predicate:
    def evaluate(row: Row) -> bool | None:
        first = left(row)
        if first is False:
            return False
        second = right(row)
        if second is False:
            return False
        if first is None or second is None:
            return None
        return True

    return evaluate


def _three_valued_or(left: Predicate, right: Predicate) -> Predicate:
    def evaluate(row: Row) -> bool | None:
        first = left(row)
        if first is True:
            return True
        second = right(row)
        if second is True:
            return True
        if first is None or second is None:
            return None
        return False

    return evaluate


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
_MIRRORED = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}


def _operand(node: Node) -> Callable[[Row], Any]:
    """A function giving the operand's normalised value for a row (None for null)."""
    if isinstance(node, ColumnRef):
        name, normalize = node.name, _normalizer(node.kind)

        def column_value(row: Row) -> Any:
            value = row.get(name)
            return None if value is None else normalize(value)

        return column_value
    assert isinstance(node, Literal)
    constant = None if node.value is None else _normalizer(node.kind)(node.value)
    return lambda row: constant


def _compile_comparison(node: Comparison, text: str) -> Predicate:
    left_kind, right_kind = _kind_of(node.left), _kind_of(node.right)
    for side in (node.left, node.right):
        if not isinstance(side, ColumnRef | Literal):
            raise ODataQueryError(f"The operand of '{node.op}' must be a property or a literal value in '{text}'.")
    if not _compatible(left_kind, right_kind) and not _compatible(right_kind, left_kind):
        raise ODataQueryError(
            "A binary operator with incompatible types was detected. Found operand types "
            f"'{_edm(left_kind)}' and '{_edm(right_kind)}' for operator kind '{OPERATOR_KINDS[node.op]}'."
        )
    op = node.op
    left, right = node.left, node.right
    if isinstance(left, Literal) and isinstance(right, ColumnRef):
        left, right, op = right, left, _MIRRORED[op]
    if isinstance(right, Literal) and right.kind == "null":
        if isinstance(left, Literal):
            result = (left.kind == "null") == (op == "eq")
            return lambda row: result
        name = left.name  # type: ignore[union-attr]
        if op == "eq":
            return lambda row: row.get(name) is None
        if op == "ne":
            return lambda row: row.get(name) is not None
        return lambda row: None
    compare = _OPERATORS[op]
    if isinstance(left, ColumnRef) and isinstance(right, Literal):
        name, normalize = left.name, _normalizer(left.kind)
        constant = _normalizer(right.kind)(right.value)
        if left.kind in NUMERIC_KINDS:

            def number_vs_literal(row: Row) -> bool | None:
                value = row.get(name)
                return None if value is None else compare(value, constant)

            return number_vs_literal

        def column_vs_literal(row: Row) -> bool | None:
            value = row.get(name)
            if value is None:
                return None
            return compare(normalize(value), constant)

        return column_vs_literal
    first, second = _operand(left), _operand(right)

    def general(row: Row) -> bool | None:
        a, b = first(row), second(row)
        if a is None or b is None:
            return None
        return compare(a, b)

    return general


def _compile_call(node: Call) -> Predicate:
    column, needle = node.args
    if not isinstance(column, ColumnRef) or column.kind not in STRING_KINDS:
        raise ODataQueryError(f"The first argument of '{node.name}' must be a string property.")
    if not isinstance(needle, Literal) or needle.kind != "string":
        raise ODataQueryError(f"The second argument of '{node.name}' must be a string literal.")
    name, text = column.name, needle.value.casefold()
    if node.name == "contains":

        def contains(row: Row) -> bool | None:
            value = row.get(name)
            return None if value is None else text in value.casefold()

        return contains
    if node.name == "startswith":
        return lambda row: None if row.get(name) is None else row[name].casefold().startswith(text)
    return lambda row: None if row.get(name) is None else row[name].casefold().endswith(text)


def compile_node(node: Node, text: str) -> Predicate:
    if isinstance(node, Logical):
        left, right = compile_node(node.left, text), compile_node(node.right, text)
        return _three_valued_and(left, right) if node.op == "and" else _three_valued_or(left, right)
    if isinstance(node, Not):
        inner = compile_node(node.operand, text)

        def negate(row: Row) -> bool | None:
            value = inner(row)
            return None if value is None else not value

        return negate
    if isinstance(node, Comparison):
        return _compile_comparison(node, text)
    if isinstance(node, Call):
        return _compile_call(node)
    if isinstance(node, ColumnRef) and node.kind == "bool":
        name = node.name
        return lambda row: row.get(name)
    if isinstance(node, Literal) and node.kind == "bool":
        value = bool(node.value)
        return lambda row: value
    raise ODataQueryError(f"The $filter expression '{text}' must evaluate to true or false.")


def parse_filter(text: str, target: QueryTarget) -> Predicate:
    """Compile a ``$filter`` expression into a predicate (``True`` keeps the row)."""
    if not text.strip():
        raise ODataQueryError("The $filter query option must not be empty.")
    return compile_node(_Parser(text, target).parse(), text)


# -- $select / $orderby / $top -----------------------------------------------------------------


def parse_select(text: str, target: QueryTarget) -> list[str]:
    names: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if not name:
            raise ODataQueryError(f"Syntax error in $select '{text}'.")
        if name == "*":
            return []
        if name not in target.kinds:
            raise target.unknown(name)
        if name not in names:
            names.append(name)
    return names


def parse_orderby(text: str, target: QueryTarget) -> list[OrderKey]:
    keys: list[OrderKey] = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise ODataQueryError(f"Syntax error in $orderby '{text}'.")
        if words[0] not in target.kinds:
            raise target.unknown(words[0])
        keys.append(OrderKey(words[0], len(words) == 2 and words[1] == "desc"))
    return keys


def parse_query(options: Mapping[str, str], target: QueryTarget) -> Query:
    """Read the query options of a collection request; unknown ``$`` options are refused as Dataverse does."""
    for name in options:
        if not name.startswith("$"):
            continue  # custom query options are ignored, as OData allows
        if name == "$skip":
            raise ODataQueryError("The query parameter $skip is not supported")
        if name in UNSUPPORTED_OPTIONS:
            raise ODataQueryError(f"The query option '{name}' is not supported by the simulator.")
        if name not in SUPPORTED_OPTIONS and name != "$format":
            raise ODataQueryError(f"The query parameter '{name}' is not supported.")
    query = Query()
    if "$select" in options:
        query.select = parse_select(options["$select"], target) or None
    if "$filter" in options:
        query.filter_text = options["$filter"]
        query.predicate = parse_filter(options["$filter"], target)
    if "$orderby" in options:
        query.orderby = parse_orderby(options["$orderby"], target)
    if "$top" in options:
        raw = options["$top"].strip()
        if not raw.isdigit():
            raise ODataQueryError(
                f"Invalid value '{raw}' for $top query option found. The $top query option "
                "requires a non-negative integer value."
            )
        query.top = int(raw)
    if "$count" in options:
        raw = options["$count"].strip().lower()
        if raw not in ("true", "false"):
            raise ODataQueryError(f"'{options['$count']}' is not a valid count option.")
        query.count = raw == "true"
    query.skiptoken = options.get("$skiptoken")
    return query


# -- sorting and paging ------------------------------------------------------------------------


class _Descending:
    """Inverts the order of one sort component, so mixed asc/desc keys sort in a single pass."""

    __slots__ = ("value",)

    def __init__(self, value: tuple[Any, ...]) -> None:
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return other.value < self.value

    def __gt__(self, other: _Descending) -> bool:
        return other.value > self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value

    def __le__(self, other: _Descending) -> bool:
        return other.value <= self.value

    def __ge__(self, other: _Descending) -> bool:
        return other.value >= self.value

    __hash__ = None  # type: ignore[assignment]


class _SortPlan:
    """Sort keys for a query: the ``$orderby`` columns then the primary key (unique, so the order is total).

    Sorting runs one stable pass per key, last key first, each with a cheap per-row key (nulls
    first ascending, last descending, as SQL Server orders them); the composite key, which
    wraps descending parts, is only built for the few rows a binary search visits.
    """

    def __init__(self, orderby: Sequence[OrderKey], target: QueryTarget) -> None:
        self.keys = [*orderby, OrderKey(target.key)]
        self.extractors: list[Callable[[Row], Any]] = []
        self.passes: list[tuple[Callable[[Row], tuple[Any, ...]], bool]] = []
        for key in self.keys:
            kind = target.kinds.get(key.column, "guid")
            resolve = target.sort_values.get(key.column)
            if resolve is not None:
                kind = "string"
            extract = _sort_extractor(key.column, kind, resolve)
            self.extractors.append(extract)
            if key.column == target.key:
                # Primary keys are never null and are stored in lower case: sort on them directly.
                self.passes.append((operator.itemgetter(key.column), key.descending))
            else:
                self.passes.append((_flagged(key.column, kind, resolve, extract), key.descending))
        self.signature = ",".join(f"{key.column} {'desc' if key.descending else 'asc'}" for key in self.keys)

    def sort(self, rows: list[Row]) -> None:
        for flagged, descending in reversed(self.passes):
            rows.sort(key=flagged, reverse=descending)

    def components(self, row: Row) -> list[Any]:
        return [extract(row) for extract in self.extractors]

    def key_from_components(self, components: Sequence[Any]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for key, value in zip(self.keys, components, strict=True):
            part = (0,) if value is None else (1, value)
            parts.append(_Descending(part) if key.descending else part)
        return tuple(parts)

    def key(self, row: Row) -> tuple[Any, ...]:
        return self.key_from_components(self.components(row))


def _sort_extractor(column: str, kind: str, resolve: Callable[[Any], Any] | None) -> Callable[[Row], Any]:
    """The normalised value a row sorts by (None for null); strings case-insensitively, as Dataverse sorts."""
    if resolve is None and kind in STRING_KINDS:

        def string_value(row: Row) -> Any:
            value = row.get(column)
            return None if value is None else value.casefold()

        return string_value
    normalize = _normalizer(kind)

    def value_of(row: Row) -> Any:
        value = row.get(column)
        if value is not None and resolve is not None:
            value = resolve(value)
        return None if value is None else normalize(value)

    return value_of


def _flagged(
    column: str, kind: str, resolve: Callable[[Any], Any] | None, extract: Callable[[Row], Any]
) -> Callable[[Row], tuple[Any, ...]]:
    """A per-row sort key that puts nulls first; the common kinds get a closure without nested calls."""
    if resolve is None and kind in STRING_KINDS:

        def string_key(row: Row) -> tuple[Any, ...]:
            value = row.get(column)
            return (0,) if value is None else (1, value.casefold())

        return string_key
    if resolve is None and kind in NUMERIC_KINDS:

        def number_key(row: Row) -> tuple[Any, ...]:
            value = row.get(column)
            return (0,) if value is None else (1, value)

        return number_key

    def generic_key(row: Row) -> tuple[Any, ...]:
        value = extract(row)
        return (0,) if value is None else (1, value)

    return generic_key


def _encode_skiptoken(page_number: int, components: list[Any], served: int, signature: str) -> str:
    payload = json.dumps({"k": components, "n": served, "o": signature}, separators=(",", ":"))
    cookie = base64.urlsafe_b64encode(payload.encode("utf-8")).decode("ascii").rstrip("=")
    return f'<cookie pagenumber="{page_number}" pagingcookie="{quote(cookie, safe="")}" istracking="False" />'


_SKIPTOKEN = re.compile(r'<cookie pagenumber="(?P<page>\d+)" pagingcookie="(?P<cookie>[^"]*)"')


def _decode_skiptoken(token: str, plan: _SortPlan) -> tuple[int, tuple[Any, ...], int]:
    """Return (page number, sort key of the last row served, rows served so far)."""
    match = _SKIPTOKEN.search(token)
    invalid = ODataQueryError("The $skiptoken value is not valid for this query.")
    if not match:
        raise invalid
    try:
        cookie = unquote(match.group("cookie"))
        payload = json.loads(base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4)))
        components, served, signature = payload["k"], int(payload["n"]), payload["o"]
    except (ValueError, KeyError, TypeError):
        raise invalid from None
    if signature != plan.signature or not isinstance(components, list) or len(components) != len(plan.keys):
        raise invalid
    return int(match.group("page")), plan.key_from_components(components), served


def execute(
    rows: Iterable[Row],
    query: Query,
    target: QueryTarget,
    *,
    page_size: int = MAX_PAGE_SIZE,
) -> Page:
    """Filter, sort and cut one page; ``next_skiptoken`` is set when more rows follow.

    ``$top`` caps the rows served over all pages together.
    """
    page_size = max(1, min(page_size, MAX_PAGE_SIZE))
    predicate = query.predicate
    matched = [row for row in rows if predicate(row) is True] if predicate else list(rows)
    total = len(matched)
    plan = _SortPlan(query.orderby, target)
    plan.sort(matched)
    page_number, served, start = 1, 0, 0
    if query.skiptoken:
        page_number, last_key, served = _decode_skiptoken(query.skiptoken, plan)
        start = bisect.bisect_right(matched, last_key, key=plan.key)
    limit = page_size
    if query.top is not None:
        limit = min(limit, max(0, query.top - served))
    chosen = matched[start : start + limit]
    next_token = None
    remaining_after = len(matched) - (start + len(chosen))
    top_left = None if query.top is None else query.top - served - len(chosen)
    if chosen and remaining_after > 0 and (top_left is None or top_left > 0):
        next_token = _encode_skiptoken(
            page_number + 1, plan.components(chosen[-1]), served + len(chosen), plan.signature
        )
    return Page(
        rows=chosen,
        count=min(total, MAX_COUNT) if query.count else None,
        total=total,
        next_skiptoken=next_token,
    )


# -- Prefer ------------------------------------------------------------------------------------


def parse_prefer(header: str) -> dict[str, str | None]:
    """Split a ``Prefer`` header into preferences, honouring quoted values that contain commas.

    ``return=representation, odata.include-annotations="A,B"`` gives
    ``{"return": "representation", "odata.include-annotations": "A,B"}``.
    """
    preferences: dict[str, str | None] = {}
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    for item in items:
        name, separator, value = item.strip().partition("=")
        name = name.strip().lower()
        if not name:
            continue
        preferences[name] = value.strip().strip('"') if separator else None
    return preferences
