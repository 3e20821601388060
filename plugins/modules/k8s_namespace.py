#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: k8s_namespace
short_description: Namespaces a job owns for a while, such as a restore drill's scratch copies
version_added: 0.1.0
description:
  - V(present) creates each namespace of O(names) with the label C(runbook.ops/owner=<owner>).
  - V(absent) deletes each of them that carries that label with the same O(owner) value.
  - A namespace that exists without that owner is refused untouched by both states, so a mistaken name
    (a production namespace) can never be taken over or deleted.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
attributes:
  check_mode:
    support: full
    description: Creates and deletes are sent as server-side dry runs.
  diff_mode:
    support: full
    description: The namespaces before and after.
options:
  names:
    description: The namespaces.
    type: list
    elements: str
    required: true
  owner:
    description:
      - Who owns them, as a label value (for example a drill's run id). Required and not empty.
    type: str
    required: true
  state:
    description: V(present) or V(absent).
    type: str
    default: present
    choices: [present, absent]
  labels:
    description: Further labels of a namespace V(present) creates.
    type: dict
    default: {}
  wait:
    description: With V(absent), wait until the namespaces are gone (their content deleted).
    type: bool
    default: true
  wait_timeout:
    description: How long V(absent) waits, as a duration.
    type: str
    default: 5m
"""

EXAMPLES = r"""
- name: Scratch namespace for a restore drill
  runbook.ops.k8s_namespace:
    names: [shop-drill-20261206]
    owner: drill-20261206t0200
    labels: {purpose: restore-drill}

- name: Remove it again (refused if someone else's namespace has that name)
  runbook.ops.k8s_namespace:
    names: [shop-drill-20261206]
    owner: drill-20261206t0200
    state: absent
"""

RETURN = r"""
created:
  description: Namespaces created (in check mode, that would be).
  returned: always
  type: list
  elements: str
deleted:
  description: Namespaces deleted (in check mode, that would be).
  returned: always
  type: list
  elements: str
api_requests:
  description: HTTP requests sent to the API server; also when the task fails.
  returned: always
  type: int
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
msg:
  description: What was done, in words.
  returned: always
  type: str
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module
from ansible_collections.runbook.ops.plugins.module_utils._k8s_namespace import STATES, NamespaceOptions, run_namespace


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    return dict(
        argument_spec=dict(
            **k8s_auth_argspec(),
            names=dict(type="list", elements="str", required=True),
            owner=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=list(STATES)),
            labels=dict(type="dict", default={}),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="str", default="5m"),
        ),
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, NamespaceOptions.from_params, run_namespace)


if __name__ == "__main__":
    main()
