#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: k8s_node
short_description: Node maintenance - cordon, drain through the Eviction API, uncordon
version_added: 0.1.0
description:
  - Makes one Node (O(name)) or every Node matching O(label_selector) V(cordoned), V(drained) or V(uncordoned).
  - A drain cordons the Node and evicts its Pods through the Eviction API, so PodDisruptionBudgets
    hold. An eviction a budget refuses (HTTP 429) is retried with backoff until O(timeout); then the
    task fails naming the budget, with the Pods evicted so far.
  - DaemonSet Pods and mirror (static) Pods are skipped. A Pod with C(emptyDir) volumes is evicted
    only with O(delete_emptydir_data); a Pod no controller recreates is never evicted (the drain
    fails naming it before any eviction).
  - Waiting for evicted Pods to go is a bounded poll of the Node's Pod list.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
attributes:
  check_mode:
    support: full
    description: The cordon and every eviction are sent as server-side dry runs; RV(nodes) lists the Pods that would be evicted.
  diff_mode:
    support: none
    description: RV(nodes) shows C(unschedulable) before and after and the Pods evicted.
options:
  name:
    description: The Node.
    type: str
  label_selector:
    description: Every Node matching this label selector, one after the other.
    type: str
  state:
    description: V(cordoned) (unschedulable), V(drained) (cordoned and emptied), V(uncordoned) (schedulable again).
    type: str
    required: true
    choices: [cordoned, drained, uncordoned]
  delete_emptydir_data:
    description: Evict Pods with C(emptyDir) volumes too (their data is lost).
    type: bool
    default: false
  timeout:
    description: How long a drain of one Node may take, evictions and Pods going away included, as a duration.
    type: str
    default: 5m
seealso:
  - module: runbook.ops.k8s_rollout
"""

EXAMPLES = r"""
- name: Node maintenance, the runbook's way
  block:
    - name: Drain the node
      runbook.ops.k8s_node:
        name: worker-3
        state: drained
        delete_emptydir_data: true
        timeout: 10m
    - name: Patch and reboot it
      ansible.builtin.debug:
        msg: maintenance happens here
  always:
    - name: Make it schedulable again
      runbook.ops.k8s_node:
        name: worker-3
        state: uncordoned

- name: What would a drain of the pool evict?
  runbook.ops.k8s_node:
    label_selector: pool=batch
    state: drained
  check_mode: true
  register: would_evict
"""

RETURN = r"""
changed:
  description: Whether a Node was cordoned or uncordoned or a Pod evicted (or would be, in check mode).
  returned: always
  type: bool
  sample: true
msg:
  description: What was done; on failure why, naming the PodDisruptionBudget that blocked a drain.
  returned: always
  type: str
  sample: "drained 1 Node(s), 4 Pod(s) evicted"
nodes:
  description: One entry per Node.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The Node's name.
      type: str
    unschedulable:
      description: C(before) and C(after).
      type: dict
      sample: {before: false, after: true}
    evicted:
      description: Pods evicted (in check mode, that would be evicted), as C(Pod/namespace/name).
      type: list
      elements: str
    skipped:
      description: Pods left on the Node, C(pod) and C(reason) (DaemonSet or mirror Pod).
      type: list
      elements: dict
api_requests:
  description: HTTP requests sent to the API server; also when the task fails.
  returned: always
  type: int
  sample: 9
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 3.1
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module
from ansible_collections.runbook.ops.plugins.module_utils._k8s_node import STATES, NodeOptions, run_node


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    return dict(
        argument_spec=dict(
            **k8s_auth_argspec(),
            name=dict(type="str"),
            label_selector=dict(type="str"),
            state=dict(type="str", required=True, choices=list(STATES)),
            delete_emptydir_data=dict(type="bool", default=False),
            timeout=dict(type="str", default="5m"),
        ),
        mutually_exclusive=[("name", "label_selector")],
        required_one_of=[("name", "label_selector")],
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, NodeOptions.from_params, run_node)


if __name__ == "__main__":
    main()
