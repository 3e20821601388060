"""Build a module's :class:`Task` the way a real run does, for unit and integration tests.

Parameters go through the module's own argument spec (``module_args()`` in the module file) with
``ArgumentSpecValidator``, so defaults, choices, ``required_if`` and friends apply exactly as in
``ansible-playbook``; a test never restates a default.
"""

from __future__ import annotations

import importlib
import typing as t

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from tests.harness.collection import ensure_collection_path

ensure_collection_path()

from ansible_collections.runbook.ops.plugins.module_utils._common import Task  # noqa: E402  pylint: disable=wrong-import-position

_RULES = ("mutually_exclusive", "required_together", "required_one_of", "required_if", "required_by")


class InvalidParams(AssertionError):
    """The argument spec refused the parameters (what Ansible would print before the module runs)."""


def module_args(module: str) -> t.Dict[str, t.Any]:
    """``module_args()`` of ``plugins/modules/<module>.py``."""
    loaded = importlib.import_module("ansible_collections.runbook.ops.plugins.modules.%s" % module)
    return t.cast(t.Dict[str, t.Any], loaded.module_args())


def validated(module: str, params: t.Optional[t.Mapping[str, t.Any]] = None) -> t.Dict[str, t.Any]:
    """``params`` as the module would see them after Ansible's validation (defaults filled in)."""
    args = module_args(module)
    validator = ArgumentSpecValidator(args["argument_spec"], **{k: args[k] for k in _RULES if k in args})
    result = validator.validate(dict(params or {}))
    if result.error_messages:
        raise InvalidParams("; ".join(result.error_messages))
    return t.cast(t.Dict[str, t.Any], result.validated_parameters)


O = t.TypeVar("O")


def make_task(module: str, options: t.Callable[[t.Mapping[str, t.Any]], O], params: t.Optional[t.Mapping[str, t.Any]] = None,
              check_mode: bool = False, diff: bool = False, clients: t.Optional[t.Mapping[t.Any, t.Any]] = None) -> Task[O]:
    """A task for ``module`` with validated ``params``; ``clients`` maps an opener to a client the
    test already holds (e.g. ``{K8sClient.from_params: cluster.client()}``)."""
    full = validated(module, params)
    task = Task(options(full), full, check_mode=check_mode, diff=diff)
    for opener, client in (clients or {}).items():
        task.provide(opener, client)
    return task
