"""``|clip:N``: Django's ``|truncatechars:N`` without walking text that already fits.

``truncatechars`` checks every character for combining marks before it knows whether anything
needs cutting; a list of fifty alerts spends more on that than on the rest of each row. Text of
at most N code points never has more than N visible characters, so it is returned as it is and
only longer text goes through Django's filter.
"""

from __future__ import annotations

from django import template
from django.template.defaultfilters import truncatechars

register = template.Library()


@register.filter(is_safe=True)
def clip(value: object, length: int) -> object:
    """The same text as ``value|truncatechars:length``."""
    if isinstance(value, str) and isinstance(length, int) and len(value) <= length:
        return value
    return truncatechars(value, length)
