"""``{% fragment "name" value … %}…{% endfragment %}``: markup cached under a digest of the values it
is drawn from.

A list page spends most of its time in the template engine drawing fifty rows that look exactly as
they did the last time anyone asked. The enclosed markup is kept in the shared cache under a key
made from everything it depends on: the fragment's name, the source of the template it is written
in, the values given to the tag (lists, dicts, dataclasses, text, numbers, dates), the script
prefix, time zone and language. Rows that change give a different key, so a cached fragment is
never out of date; the timeout only bounds how long unused fragments are kept.

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
from django.core.cache import cache
from django.urls import get_script_prefix
from django.utils import timezone, translation
from django.utils.functional import Promise
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)
register = template.Library()

# Bumped when the way keys are made changes.
_VERSION = 1
FRAGMENT_SECONDS = 600


def _plain(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID | Promise):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
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
        if self.source_digest is None:  # a template made from a string: nothing to tell versions apart
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
            cache.set(key, str(html), FRAGMENT_SECONDS)
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
        _source_digest(parser),
    )


def _source_digest(parser: template.base.Parser) -> str | None:
    """A digest of the whole template file the tag is written in, so changed markup never meets old
    cache; ``None`` for a template made from a string, which is then never cached."""
    origin = getattr(parser, "origin", None)
    if origin is None or origin.loader is None:
        return None
    return hashlib.sha256(origin.loader.get_contents(origin).encode()).hexdigest()[:16]
