"""What a Flower message holds, described without its numbers: the form of the coordinator's
audit log (``server/audit.py``) and of each site's own log of what it sent (``client/app.py``),
so the two can be compared line by line."""

from __future__ import annotations

import math
import re
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

MAX_STRING = 200  # longer config strings are logged truncated (with their length) and flagged

#: One token of letters, digits, ``_ . -``: what a task label looks like (the server's audit
#: checks class names against the same pattern, ``server/audit.py`` LABEL).
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")


def sendable_label(name: object) -> bool:
    """Whether a site may send ``name`` as a class name: one ``LABEL`` token and no BIDS
    ``sub-`` entity (never free text, a person's name or a subject id).

    Parameters
    ----------
    name : object
        A class name as read from a site's events.

    Returns
    -------
    bool
    """
    return isinstance(name, str) and LABEL.fullmatch(name) is not None and "sub-" not in name.lower()


def value_type(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        inner = sorted({type(v).__name__ for v in value})
        return f"list[{'|'.join(inner) or 'empty'}]"
    return type(value).__name__


def config_value(value: Any) -> Any:
    """A config value as logged: strings (cut at MAX_STRING), numbers and bools as they are,
    bytes as their length only."""
    if isinstance(value, (list, tuple)):
        return [config_value(v) for v in value]
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, str) and len(value) > MAX_STRING:
        return {"str": value[:MAX_STRING], "length": len(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def describe_content(content: RecordDict) -> dict[str, Any]:
    """Per record: arrays -> name, shape, dtype, bytes; metrics -> key and value type; config ->
    key and value (values are short strings such as the modality and class names)."""
    records: dict[str, Any] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            records[name] = {
                "type": "array",
                "arrays": {
                    key: {"shape": list(a.shape), "dtype": str(a.dtype), "bytes": len(a.data)}
                    for key, a in record.items()
                },
            }
        elif isinstance(record, MetricRecord):
            records[name] = {"type": "metric", "values": {key: value_type(v) for key, v in record.items()}}
        elif isinstance(record, ConfigRecord):
            records[name] = {"type": "config", "values": {key: config_value(v) for key, v in record.items()}}
        else:
            records[name] = {"type": type(record).__name__}
    return records
