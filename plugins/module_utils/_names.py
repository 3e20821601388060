# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One place that decides whether a user-given name may become a path, an object key, a database
or role name, a Kubernetes object name or a connection parameter.

Every value an inventory, a survey or an extra var can set is untrusted. The rules:

* A **path segment** (a backup set, a backup id, an object name) is one component of a file path and
  of an S3 key: never empty, no ``/`` or ``\\``, no NUL or other control character, not ``.`` or
  ``..`` and no leading dot (hidden files, traversal), at most 200 bytes of UTF-8.
* A **PostgreSQL name** (database, role) is taken literally by the server but libpq expands a
  ``dbname`` holding ``=`` or a URI prefix into connection settings; we refuse NUL, control
  characters and names longer than 63 bytes (the server would truncate them silently), and the
  callers pass names only inside a quoted connection string (:func:`conninfo`).
* A **Kubernetes name** follows the API's own DNS rules, checked before it is put in a URL.

Validators raise :class:`RunbookError` naming the option, the value (shortened, printable) and the
rule, so ``fail_json`` explains the refusal.
"""

from __future__ import annotations

import math
import re
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError

MAX_SEGMENT_BYTES = 200
PG_MAX_NAME_BYTES = 63
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4, "p": 1024 ** 5}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BACKUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$")
_HOST = re.compile(r"^[A-Za-z0-9:\[][A-Za-z0-9._:%\[\]-]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def shown(value: t.Any, limit: int = 60) -> str:
    """A value as it may appear in a message: repr'd (so control bytes are visible) and shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "...'"


def _text(what: str, value: t.Any) -> str:
    if not isinstance(value, str):
        raise RunbookError("%s %s is not a string" % (what, shown(value)))
    return value


def no_control(what: str, value: t.Any) -> str:
    """Any text that reaches another program or protocol: no NUL, newline or other control character."""
    text = _text(what, value)
    if _CONTROL.search(text):
        raise RunbookError("%s %s holds a control character (NUL, newline...), which is never part of a valid value"
                           % (what, shown(text)))
    return text


def path_segment(what: str, value: t.Any) -> str:
    """One component of a repository path or object key (a set, a backup id, an object name)."""
    text = no_control(what, value)
    if not text:
        raise RunbookError("%s is empty" % what)
    if "/" in text or "\\" in text:
        raise RunbookError("%s %s holds a path separator; it must be a single name inside the repository"
                           % (what, shown(text)))
    if text.startswith("."):
        raise RunbookError("%s %s starts with a dot; names such as '..' would leave the repository" % (what, shown(text)))
    if len(text.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise RunbookError("%s %s is longer than %d bytes" % (what, shown(text), MAX_SEGMENT_BYTES))
    return text


def backup_id(value: t.Any, what: str = "backup_id") -> str:
    """A backup id as written by the repository (``20261124T031500.042Z-3fa91c``) or a user's own of that shape."""
    text = path_segment(what, value)
    if not _BACKUP_ID.match(text):
        raise RunbookError("%s %s is not a backup id (letters, digits and . _ : + - only, e.g. 20261124T031500.042Z-3fa91c)"
                           % (what, shown(text)))
    return text


def optional(check: t.Callable[..., str]) -> t.Callable[..., t.Optional[str]]:
    """``check`` for an option that may be left empty (None or "")."""
    def wrapped(what: str, value: t.Any) -> t.Optional[str]:
        if value is None or value == "":
            return None
        return check(what, value)
    wrapped.__name__ = "optional_" + check.__name__
    return wrapped


def host_name(what: str, value: t.Any) -> str:
    """One host name or IP address to connect to (``[::1]`` and zone ids allowed): letters, digits and
    ``. - : % [ ]``, no leading ``-``, at most 253 bytes. Anything else (spaces, ``=``, quotes, ``@``,
    ``,``, separators) would reach a resolver, a connection string, a default set name or a URL."""
    text = no_control(what, value)
    if not text:
        raise RunbookError("%s is empty" % what)
    if len(text) > 253 or not _HOST.match(text):
        raise RunbookError("%s %s is not a host name or IP address (one server; letters, digits and . - : only)"
                           % (what, shown(text)))
    return text


def pg_name(what: str, value: t.Any) -> str:
    """A PostgreSQL database or role name, taken literally."""
    text = no_control(what, value)
    if not text:
        raise RunbookError("%s is empty" % what)
    if len(text.encode("utf-8")) > PG_MAX_NAME_BYTES:
        raise RunbookError("%s %s is longer than %d bytes; PostgreSQL would truncate it to another name"
                           % (what, shown(text), PG_MAX_NAME_BYTES))
    return text


def conninfo_value(value: t.Any) -> str:
    """A libpq keyword value, quoted so that nothing in it is read as another keyword or a URI."""
    return "'%s'" % str(value).replace("\\", "\\\\").replace("'", "\\'")


def conninfo(settings: t.Mapping[str, t.Any]) -> str:
    """A libpq connection string from keyword/value pairs (empty values left out), every value quoted."""
    for key, value in settings.items():
        if value not in (None, ""):
            no_control("connection parameter %s" % key, str(value))
    return " ".join("%s=%s" % (key, conninfo_value(value)) for key, value in settings.items() if value not in (None, ""))


def passfile_field(value: t.Any) -> str:
    """One field of a ``.pgpass`` line: ``:`` and ``\\`` escaped, so a field is never read as ``*``."""
    text = str(value)
    if text == "*":
        return "\\*"
    return text.replace("\\", "\\\\").replace(":", "\\:")


def k8s_name(what: str, value: t.Any, label: bool = False) -> str:
    """A Kubernetes object name (DNS subdomain, 253 characters) or, with ``label``, a DNS label
    (namespaces and Services, 63 characters)."""
    text = no_control(what, value)
    limit, pattern = (63, _DNS_LABEL) if label else (253, _DNS_SUBDOMAIN)
    if not text or len(text) > limit or not pattern.match(text):
        raise RunbookError("%s %s is not a valid Kubernetes name (lower-case letters, digits and '-'%s, at most %d characters)"
                           % (what, shown(text), "" if label else " or '.'", limit))
    return text


def k8s_namespace(what: str, value: t.Any) -> str:
    """A namespace name (a DNS label)."""
    return k8s_name(what, value, label=True)


def check_params(params: t.Mapping[str, t.Any], rules: t.Mapping[str, t.Callable[[str, t.Any], t.Any]]) -> None:
    """Apply ``rules`` (option name -> validator) to the options that are set; lists are checked item by item."""
    for option, check in rules.items():
        value = params.get(option)
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                check("%s[%d]" % (option, index), item)
        else:
            check(option, value)


def trusted_manifest(manifest: t.Any, kind: str, set_name: str, found_id: str, where: str) -> t.Dict[str, t.Any]:
    """A manifest read from storage is trusted only when its ``kind``, ``set`` and ``id`` match the
    path it was found under and its object names are plain names (a planted or copied manifest
    cannot steer what is read or deleted)."""
    try:
        if not isinstance(manifest, dict):
            raise RunbookError("it is not a JSON object")
        for field, expected in (("kind", kind), ("set", set_name), ("id", found_id)):
            value = manifest.get(field)
            if value != expected:
                raise RunbookError("it says %s=%s but was found under %s=%s" % (field, shown(value), field, shown(expected)))
        path_segment("set", manifest["set"])
        path_segment("id", manifest["id"])
        objects = manifest.get("objects", [])
        if not isinstance(objects, list) or not all(isinstance(entry, dict) for entry in objects):
            raise RunbookError("its objects are not a list of JSON objects")
        for entry in objects:
            path_segment("object name", entry.get("name"))
    except RunbookError as exc:
        raise RunbookError("manifest %s is not trusted: %s" % (where, exc.msg))
    return manifest


_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
MAX_PATH_BYTES = 4096


def k8s_data_key(what: str, value: t.Any) -> str:
    """A key of a Secret's or ConfigMap's ``data`` (letters, digits, ``-``, ``_``, ``.``; not ``.`` or ``..``)."""
    text = no_control(what, value)
    if not text or len(text) > 253 or not _DATA_KEY.match(text) or text in (".", "..") or text.startswith(".."):
        raise RunbookError("%s %s is not a valid Secret or ConfigMap key (letters, digits, '-', '_' and '.', at most "
                           "253 characters, not '.' or '..')" % (what, shown(text)))
    return text


def label_key(what: str, value: t.Any) -> str:
    """A label key: an optional DNS-subdomain prefix and ``/``, then a name of at most 63 characters."""
    text = no_control(what, value)
    prefix, sep, name = text.rpartition("/")
    if (not name or len(name) > 63 or not _LABEL_NAME.match(name)
            or (sep and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))):
        raise RunbookError("%s %s is not a valid label key (an optional DNS prefix and '/', then at most 63 letters, "
                           "digits, '-', '_' or '.', starting and ending with a letter or digit)" % (what, shown(text)))
    return text


def label_value(what: str, value: t.Any) -> str:
    """A label value: empty, or at most 63 letters, digits, ``-``, ``_``, ``.`` (so never ``,`` or ``=``,
    which would change the meaning of a label selector)."""
    text = no_control(what, value)
    if text and (len(text) > 63 or not _LABEL_NAME.match(text)):
        raise RunbookError("%s %s is not a valid label value (at most 63 letters, digits, '-', '_' or '.', starting "
                           "and ending with a letter or digit)" % (what, shown(text)))
    return text


def labels(what: str, value: t.Any) -> t.Dict[str, str]:
    """A mapping of label keys to label values (a ``matchLabels`` selector)."""
    if not isinstance(value, dict):
        raise RunbookError("%s must be a mapping of label keys to values, not %s" % (what, shown(value)))
    checked: t.Dict[str, str] = {}
    for key, item in value.items():
        checked[label_key("%s key" % what, key)] = label_value("%s[%s]" % (what, key), item)
    return checked


def int_in(what: str, value: t.Any, low: int, high: int, hint: str = "") -> int:
    """An integer option within ``low..high`` (inclusive)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RunbookError("%s %s is not an integer" % (what, shown(value)))
    if not low <= value <= high:
        raise RunbookError("%s=%d is out of range: it must be from %d to %d%s"
                           % (what, value, low, high, "; " + hint if hint else ""))
    return value


def number(what: str, value: t.Any, minimum: t.Optional[float] = None, maximum: t.Optional[float] = None,
           above: bool = False) -> float:
    """A finite number in ``[minimum, maximum]`` (``above``: strictly greater than ``minimum``)."""
    try:
        num = float(value)
    except (TypeError, ValueError):
        raise RunbookError("%s %s is not a number" % (what, shown(value)))
    if not math.isfinite(num):
        raise RunbookError("%s must be a finite number, not %s" % (what, shown(value)))
    low_ok = minimum is None or (num > minimum if above else num >= minimum)
    if not low_ok or (maximum is not None and num > maximum):
        low = "" if minimum is None else ("above %g" % minimum if above else "at least %g" % minimum)
        high = "" if maximum is None else "at most %g" % maximum
        raise RunbookError("%s must be %s, not %s" % (what, " and ".join(p for p in (low, high) if p), shown(value)))
    return num


def duration(what: str, value: t.Any, minimum: float = 0.0, maximum: float = 100 * 365 * 86400.0,
             above: bool = False) -> float:
    """A duration option (``30d``, ``12h``, ``90m`` or seconds) as finite seconds within bounds."""
    from ansible_collections.runbook.ops.plugins.module_utils._common import parse_duration

    if isinstance(value, str):
        no_control(what, value)
    seconds = parse_duration(value, what)
    if seconds is None:
        raise RunbookError("%s is empty; give a duration such as 90s, 5m, 6h or 30d" % what)
    try:
        return number(what, seconds, minimum, maximum, above)
    except RunbookError:
        bounds = ("longer than %s" % human_seconds(minimum) if above else "of at least %s" % human_seconds(minimum))
        raise RunbookError("%s must be a duration %s and at most %s, not %s"
                           % (what, bounds, human_seconds(maximum), shown(value)))


def human_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return "%d%s" % (seconds // size, unit)
    return "%gs" % seconds


def local_path(what: str, value: t.Any) -> str:
    """A path on the managed host: any path, but no NUL or other control character and not absurdly long."""
    text = no_control(what, value)
    if not text:
        raise RunbookError("%s is empty" % what)
    if len(text.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise RunbookError("%s %s is longer than %d bytes" % (what, shown(text), MAX_PATH_BYTES))
    return text


def byte_size(what: str, value: t.Any) -> int:
    """A size option: a number of bytes or ``512kB``, ``16MB``, ``1GiB``, ``5GB`` (1024-based)."""
    if isinstance(value, bool):
        raise RunbookError("%s %s is not a size" % (what, shown(value)))
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _SIZE_RE.match(no_control(what, value))
        if not match:
            raise RunbookError("%s %s is not a size (a number of bytes, or e.g. 512kB, 16MB, 1GB)" % (what, shown(value)))
        number, unit = float(match.group(1)), (match.group(2) or "").lower().replace("i", "").replace("b", "")
    if number < 0 or not math.isfinite(number):
        raise RunbookError("%s must be a size of at least 0 bytes, not %s" % (what, shown(value)))
    return int(number * _SIZE_UNITS[unit])


def human_bytes(size: t.Optional[float]) -> str:
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return ("%d %s" % (value, unit)) if unit == "B" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%d B" % size  # pragma: no cover
