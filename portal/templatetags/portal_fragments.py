"""``{% fragment "name" value … %}…{% endfragment %}``: markup cached under a digest of the values it
is drawn from.

A list page spends most of its time in the template engine drawing fifty rows that look exactly as
they did the last time anyone asked. The enclosed markup is kept in the shared cache under a key
made from everything it depends on: the fragment's name, the source of the template it is written
in and of the templates it includes, the values given to the tag (lists, dicts, dataclasses, text,
numbers, dates), the script prefix, time zone and language. Rows that change give a different key,
so a cached fragment is never out of date; ``PAGE_FRAGMENT_SECONDS`` only bounds how long unused
fragments are kept (0 turns the cache off).

The enclosed markup may use only the values given to the tag (and constants): anything else would
not be part of the key. Values that are not plain data (model objects, querysets) are refused with
an error, so a fragment cannot silently depend on something its key does not cover. Markup that
carries a CSRF token is never cached. If the cache cannot be reached the markup is drawn for the
request, as it would be without the tag.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import json
import logging
import uuid

from django import template
from django.conf import settings
from django.core.cache import cache
from django.template.loader_tags import IncludeNode
from django.urls import get_script_prefix
from django.utils import timezone, translation
from django.utils.functional import Promise
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)
register = template.Library()

# Bumped when the way keys are made changes.
_VERSION = 1


def _plain(value: object) -> object:
    """What the JSON encoder cannot write itself, as plain data; anything else is refused."""
    kind = type(value)
    if kind is dt.datetime or kind is dt.date or kind is dt.time:
        return value.isoformat()
    if dataclasses.is_dataclass(kind):
        return value.__dict__ if hasattr(value, "__dict__") else dataclasses.asdict(value)
    if isinstance(value, dt.date | dt.time | decimal.Decimal | uuid.UUID | Promise):
        return value.isoformat() if isinstance(value, dt.date | dt.time) else str(value)
    raise TypeError(
        f"{{% fragment %}} values must be plain data (lists, dicts, dataclasses, text, numbers, dates); "
        f"got {type(value).__name__}"
    )


def fragment_key(name: str, source_digest: str, values: list[object]) -> str:
    document = json.dumps(
        [name, values, get_script_prefix(), timezone.get_current_timezone_name(), translation.get_language()],
        default=_plain,
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"fragment:{_VERSION}:{source_digest}:{hashlib.sha256(document.encode()).hexdigest()}"


class FragmentNode(template.Node):
    def __init__(self, nodelist: template.NodeList, name, values, source_digest: str | None) -> None:
        self.nodelist = nodelist
        self.name = name
        self.values = values
        self.source_digest = source_digest

    def render(self, context: template.Context) -> str:
        seconds = settings.PAGE_FRAGMENT_SECONDS
        # A template made from a string has no source to tell its versions apart: never kept.
        if self.source_digest is None or seconds <= 0:
            return self.nodelist.render(context)
        key = fragment_key(
            str(self.name.resolve(context)), self.source_digest, [value.resolve(context) for value in self.values]
        )
        try:
            cached = cache.get(key)
        except RedisError:
            logger.warning("Template fragment cache unavailable; drawing the fragment", exc_info=True)
            return self.nodelist.render(context)
        if cached is not None:
            return cached
        html = self.nodelist.render(context)
        if "csrfmiddlewaretoken" in html:
            logger.error("Fragment %s carries a CSRF token and is not cached", self.name.token)
            return html
        try:
            cache.set(key, str(html), seconds)
        except RedisError:
            logger.warning("Template fragment cache unavailable; fragment not kept", exc_info=True)
        return html


@register.tag("fragment")
def do_fragment(parser: template.base.Parser, token: template.base.Token) -> FragmentNode:
    bits = token.split_contents()
    if len(bits) < 3:
        raise template.TemplateSyntaxError(f"{bits[0]!r} takes a name and at least one value it is drawn from.")
    nodelist = parser.parse(("endfragment",))
    parser.delete_first_token()
    return FragmentNode(
        nodelist,
        parser.compile_filter(bits[1]),
        [parser.compile_filter(bit) for bit in bits[2:]],
        _source_digest(parser, nodelist),
    )


def _source_digest(parser: template.base.Parser, nodelist: template.NodeList) -> str | None:
    """A digest of the template file the tag is written in and of every template the fragment
    includes, so changed markup never meets old cache; ``None`` for a template made from a string,
    which is then never cached."""
    origin = getattr(parser, "origin", None)
    if origin is None or origin.loader is None:
        return None
    digest = hashlib.sha256(origin.loader.get_contents(origin).encode())
    _add_included(digest, origin.loader.engine, nodelist, seen=set())
    return digest.hexdigest()[:16]


def _add_included(digest, engine: template.Engine, nodelist: template.NodeList, *, seen: set[str]) -> None:
    for node in nodelist.get_nodes_by_type(IncludeNode):
        name = node.template.var
        if not isinstance(name, str):
            raise template.TemplateSyntaxError(
                "{% fragment %} can include templates named in the template only: a fragment's key must "
                "cover the markup it includes."
            )
        if name in seen:
            continue
        seen.add(name)
        included, origin = engine.find_template(name)
        digest.update(origin.loader.get_contents(origin).encode())
        _add_included(digest, engine, included.nodelist, seen=seen)
