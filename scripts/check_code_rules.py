"""The portal's own code rules, which ruff and bandit do not know. Run by `make lint` and `make test`.

PRT001  An HTTP call through ``requests`` passes ``timeout=``. That covers ``requests.get(...)`` and
        friends, and calls on a session: a name or attribute called ``session`` or ``*_session``,
        or a name bound to ``requests.Session()`` (Django's ``request.session`` and a test client's
        ``client.session`` are session stores, not HTTP sessions). A call that forwards
        ``**kwargs`` passes when its function sets ``kwargs["timeout"]`` (or
        ``setdefault("timeout", ...)``) first. The Microsoft 365 clients call ``self._request(...)``,
        whose one ``session.request(..., timeout=...)`` this rule checks.
PRT002  A status field changes only in a service (``*/services.py`` or ``*/services/*.py``): no
        ``obj.<status field> = ...`` followed by ``obj.save()``, no ``save(update_fields=[...])``
        naming a status field, and no ``queryset.update(<status field>=...)`` or
        ``bulk_update(..., [<status field>])`` anywhere else. Status fields are the model fields
        whose choices are a ``...Status`` or ``...State`` class; tests and migrations are exempt.

A line may opt out with ``# code-rules: allow PRT00N <reason>``; the reason is required.

Usage: python scripts/check_code_rules.py [PATH ...]   (default: the whole repository)
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "node_modules", "build", "var", "__pycache__", "test-artifacts"}
HTTP_VERBS = {"get", "post", "put", "patch", "delete", "head", "options", "request"}
ALLOW = re.compile(r"#\s*code-rules:\s*allow\s+(PRT\d{3})\s+\S")


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    col: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"


# --- which fields are status fields -------------------------------------------------------------


def _is_status_choices(node: ast.expr) -> bool:
    """``SomethingStatus.choices`` or ``SomethingState.choices``."""
    if not (isinstance(node, ast.Attribute) and node.attr == "choices"):
        return False
    owner = node.value
    name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
    return name.endswith(("Status", "State"))


def status_fields_in(tree: ast.AST) -> set[str]:
    """Names of model fields declared with status choices in one models module."""
    fields = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                targets: list[ast.expr] = []
                if isinstance(statement, ast.Assign):
                    targets, value = statement.targets, statement.value
                elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                    targets, value = [statement.target], statement.value
                else:
                    continue
                if isinstance(value, ast.Call) and any(
                    keyword.arg == "choices" and _is_status_choices(keyword.value) for keyword in value.keywords
                ):
                    fields.update(target.id for target in targets if isinstance(target, ast.Name))
    return fields


def status_fields(root: Path = ROOT) -> set[str]:
    fields: set[str] = set()
    for path in python_files([root]):
        if path.name == "models.py" or path.parent.name == "models":
            fields |= status_fields_in(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return fields


# --- PRT001: timeouts -----------------------------------------------------------------------------


def _terminal_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_requests_session_call(node: ast.expr) -> bool:
    """``requests.Session()`` or ``Session()``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr == "Session" and _terminal_name(func.value) == "requests"
    return isinstance(func, ast.Name) and func.id == "Session"


def _session_names(tree: ast.AST) -> set[str]:
    """Names bound to a new ``requests.Session()`` anywhere in the module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _is_requests_session_call(node.value):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                if _is_requests_session_call(item.context_expr) and isinstance(item.optional_vars, ast.Name):
                    names.add(item.optional_vars.id)
    return names


def _is_django_session(node: ast.expr) -> bool:
    """``request.session`` or ``client.session``: Django's session store, on a request or a test client."""
    if not (isinstance(node, ast.Attribute) and node.attr == "session"):
        return False
    owner = _terminal_name(node.value)
    if isinstance(node.value, ast.Call):
        owner = _terminal_name(node.value.func)
    return owner.lstrip("_") == "request" or "client" in owner


def _is_http_session(node: ast.expr, session_names: set[str]) -> bool:
    if _is_requests_session_call(node):
        return True
    if _is_django_session(node):
        return False
    name = _terminal_name(node)
    return name in session_names or name == "session" or name.endswith("_session")


def _requests_aliases(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names the module uses for the ``requests`` module, and verbs imported from it."""
    modules, verbs = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.asname or alias.name for alias in node.names if alias.name == "requests")
        elif isinstance(node, ast.ImportFrom) and node.module in ("requests", "requests.api"):
            verbs.update(alias.asname or alias.name for alias in node.names if alias.name in HTTP_VERBS)
    return modules, verbs


def _sets_timeout_in_kwargs(function: ast.AST | None, kwargs_name: str) -> bool:
    if function is None:
        return False
    for node in ast.walk(function):
        # kwargs["timeout"] = ...
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Subscript)
                    and _terminal_name(target.value) == kwargs_name
                    and isinstance(target.slice, ast.Constant)
                    and target.slice.value == "timeout"
                ):
                    return True
        # kwargs.setdefault("timeout", ...)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "setdefault"
            and _terminal_name(node.func.value) == kwargs_name
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "timeout"
        ):
            return True
    return False


def _passes_timeout(call: ast.Call, function: ast.AST | None) -> bool:
    return any(
        keyword.arg == "timeout"
        or (
            keyword.arg is None
            and isinstance(keyword.value, ast.Name)
            and _sets_timeout_in_kwargs(function, keyword.value.id)
        )
        for keyword in call.keywords
    )


def _is_http_call(call: ast.Call, modules: set[str], verbs: set[str], session_names: set[str]) -> bool:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in verbs
    if not isinstance(func, ast.Attribute) or func.attr not in HTTP_VERBS:
        return False
    if isinstance(func.value, ast.Name) and func.value.id in modules:
        return True
    return _is_http_session(func.value, session_names)


# --- PRT002: status writes outside services ----------------------------------------------------------


def _names_status_field(node: ast.expr, fields: set[str]) -> bool:
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return any(isinstance(element, ast.Constant) and element.value in fields for element in node.elts)
    return False


def _is_queryset(node: ast.expr) -> bool:
    """An expression that reads as a queryset: ``X.objects...``, ``....filter(...)`` and the like."""
    while True:
        if isinstance(node, ast.Attribute):
            if node.attr == "objects":
                return True
            node = node.value
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr in (
                "filter",
                "exclude",
                "all",
                "select_for_update",
                "select_related",
                "only",
                "order_by",
            ):
                return True
            node = node.func
        else:
            return False


def _status_writes_in(function: ast.AST, fields: set[str]) -> Iterator[tuple[ast.AST, str]]:
    assigned: dict[str, int] = {}  # receiver (as source) -> line of the status assignment
    nodes = sorted(
        (node for node in ast.walk(function) if hasattr(node, "lineno")),
        key=lambda node: (node.lineno, node.col_offset),
    )
    for node in nodes:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and target.attr in fields:
                assigned.setdefault(ast.unparse(target.value), node.lineno)
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method, receiver = node.func.attr, node.func.value
        if method == "save":
            update_fields = next((k.value for k in node.keywords if k.arg == "update_fields"), None)
            if update_fields is not None and _names_status_field(update_fields, fields):
                yield node, f"`{ast.unparse(receiver)}.save()` writes a status field"
            elif ast.unparse(receiver) in assigned:
                line = assigned[ast.unparse(receiver)]
                yield node, f"`{ast.unparse(receiver)}.save()` after setting its status on line {line}"
        elif method == "update" and _is_queryset(receiver):
            changed = sorted(k.arg for k in node.keywords if k.arg in fields)
            if changed:
                yield node, f"`.update({changed[0]}=...)` on a queryset"
        elif method == "bulk_update" and len(node.args) >= 2 and _names_status_field(node.args[1], fields):
            yield node, "`bulk_update()` of a status field"


def _is_exempt_from_status_rule(relative: str) -> bool:
    parts = relative.split("/")
    return parts[0] == "tests" or "migrations" in parts or "services" in parts[:-1] or parts[-1] == "services.py"


# --- running ---------------------------------------------------------------------------------------


_SCOPES = ast.FunctionDef | ast.AsyncFunctionDef


def _module_scope(tree: ast.Module) -> ast.Module:
    """The module's own statements, outside any function or class, as one more scope."""
    return ast.Module(
        body=[node for node in tree.body if not isinstance(node, _SCOPES | ast.ClassDef)], type_ignores=[]
    )


def _scopes(tree: ast.Module) -> Iterator[ast.AST]:
    yield _module_scope(tree)
    yield from (node for node in ast.walk(tree) if isinstance(node, _SCOPES))


def _allowed(lines: list[str], line: int, code: str) -> bool:
    match = ALLOW.search(lines[line - 1]) if 0 < line <= len(lines) else None
    return bool(match and match.group(1) == code)


def check_source(source: str, relative: str, *, fields: set[str]) -> list[Finding]:
    """Findings for one file; ``relative`` is its path from the repository root, with ``/``."""
    tree = ast.parse(source, filename=relative)
    modules, verbs = _requests_aliases(tree)
    session_names = _session_names(tree)
    checks_status = not _is_exempt_from_status_rule(relative)
    findings: dict[tuple[int, int, str], Finding] = {}

    def add(node: ast.AST, code: str, message: str) -> None:
        key = (node.lineno, node.col_offset + 1, code)
        findings.setdefault(key, Finding(relative, *key, message))

    for scope in _scopes(tree):
        function = scope if isinstance(scope, _SCOPES) else None
        for node in ast.walk(scope):
            if (
                isinstance(node, ast.Call)
                and _is_http_call(node, modules, verbs, session_names)
                and not _passes_timeout(node, function)
            ):
                add(
                    node, "PRT001", f"`{ast.unparse(node.func)}(...)` without `timeout=`: a silent server would hang it"
                )
        if checks_status:
            for node, what in _status_writes_in(scope, fields):
                add(node, "PRT002", f"{what} outside a service: move the transition into a `<thing>_<verb>` service")
    lines = source.splitlines()
    return sorted(finding for finding in findings.values() if not _allowed(lines, finding.line, finding.code))


def python_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file() and path.suffix == ".py":
            yield path
        elif path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_dir() and (child.name in SKIP_DIRS or child.name.startswith(".")):
                    continue
                yield from python_files([child])


def main(argv: list[str]) -> int:
    paths = [Path(arg).resolve() for arg in argv] or [ROOT]
    fields = status_fields()
    findings: list[Finding] = []
    for path in python_files(paths):
        relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()
        findings.extend(check_source(path.read_text(encoding="utf-8"), relative, fields=fields))
    for finding in findings:
        print(finding)
    if findings:
        print(f"Found {len(findings)} code rule violation(s); see scripts/check_code_rules.py.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
