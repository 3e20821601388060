# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options that fall back to environment variables, the way AWX credentials hand them over.

``dict(type="str", fallback=env_default("PGHOST"))`` takes the option from ``$PGHOST`` when the task
does not set it. Several names are tried in order (``AWS_REGION`` before ``AWS_DEFAULT_REGION``).

An empty variable counts as unset: an AWX credential type sets every variable its ``env`` injector
names, rendering an optional field the user left blank as an empty string, and an empty
``PGPORT`` must not become a port number nor an empty ``REDIS_HOST`` replace ``localhost``.

Only connection settings and secrets take an environment default; what a task acts on (a
database, a backup set, a restore target) never does (see the README's "Credentials from the
environment").
"""

from __future__ import annotations

import os
import typing as t

from ansible.module_utils.common.parameters import env_fallback
from ansible.module_utils.errors import AnsibleFallbackNotFound

Fallback = t.Tuple[t.Callable[..., str], t.List[str]]
"""The ``fallback`` entry of an argument spec option."""


def first_set(*names: str) -> str:
    """The value of the first of ``names`` that is set and not empty."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    raise AnsibleFallbackNotFound


def env_default(*names: str) -> Fallback:
    """The ``fallback`` of an option read from the first non-empty of ``names``."""
    if not names:
        raise ValueError("env_default needs at least one variable name")
    return (first_set, list(names))


def fallback_variables(option: t.Mapping[str, t.Any]) -> t.List[str]:
    """The environment variables an argument spec option falls back to (empty when none): those of
    :func:`env_default` and of Ansible's own ``env_fallback``."""
    fallback = option.get("fallback")
    if not fallback or fallback[0] not in (first_set, env_fallback):
        return []
    names: t.List[str] = []
    for item in fallback[1:]:
        if isinstance(item, (list, tuple)):
            names.extend(str(name) for name in item)
    return names
