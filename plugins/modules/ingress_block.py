#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ingress_block
short_description: Rank brute-force source addresses from container logs and block them reversibly on ingress-nginx Ingresses
version_added: 0.1.0
description:
  - Reads the logs of the containers named in O(log_sources) through the Kubernetes API (the auth service's,
    the ingress controller's), counts the lines that match O(pattern) per source address and ranks the addresses.
  - Every matching line counts once, for the first text in it that O(address_pattern) finds and that is an IPv4
    or IPv6 address; IPv4-mapped IPv6 addresses (C(::ffff:192.0.2.7)) count as their IPv4 address. A log that
    several sources select is read once.
  - Loopback and unspecified addresses and those in O(exclude) are never blocked.
  - With O(state=blocked) and O(method=denylist), the ranked addresses (at most O(top), each with at least
    O(min_failures) failures) are added as C(/32) or C(/128) to the annotation
    C(nginx.ingress.kubernetes.io/denylist-source-range) of the Ingresses; existing entries and their order stay.
    With O(method=rate_limit), C(nginx.ingress.kubernetes.io/limit-rps) (and C(limit-connections)) are set instead.
  - Each changed Ingress carries the record annotation C(runbook.ops/block-<incident_id>) (JSON) listing the
    denylist entries the incident added and the annotation values from before. A later O(state=blocked) run adds
    only new offenders and updates the record. O(state=released) removes exactly the recorded entries (entries
    someone else added meanwhile stay), puts the previous rate-limit values back and removes the record.
  - Every update is conditional on the object's resourceVersion and recomputed after a conflict.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
attributes:
  check_mode:
    support: full
    description: Reads the logs and reports every annotation change it would make, changing nothing.
  diff_mode:
    support: full
    description: Shows the denylist, rate-limit and record annotations of each changed Ingress before and after.
options:
  namespace:
    description: The namespace of the Ingresses, and of the log sources that name no namespace.
    type: str
    required: true
  incident_id:
    description:
      - The incident, part of the record annotation's name; 1 to 57 lowercase letters, digits and dashes, starting
        and ending with a letter or digit.
    type: str
    required: true
  state:
    description:
      - V(ranked) reads the logs and ranks the addresses; it changes nothing.
      - V(blocked) ranks and applies O(method) to the Ingresses (idempotent; new offenders are added on later runs).
      - V(released) undoes exactly what the incident's records on the Ingresses list; the logs are not read.
    type: str
    choices: [ranked, blocked, released]
    default: blocked
  log_sources:
    description:
      - Where the failed attempts are logged. Required for O(state=ranked) and for O(state=blocked) with
        O(method=denylist).
      - The task fails, changing nothing, when no log of any source can be read (a mistyped selector must not read
        as "no attack").
    type: list
    elements: dict
    default: []
    suboptions:
      namespace:
        description: The namespace of the Pods; default is O(namespace).
        type: str
      label_selector:
        description:
          - The Pods' labels, as a mapping or as C(key=value) terms separated by commas (all must match).
          - Set-based and negated terms are refused.
        type: raw
      pod:
        description: One Pod by name, instead of O(log_sources[].label_selector).
        type: str
      container:
        description: The container whose log is read; default is every container of the Pod.
        type: str
  since:
    description: Read only log lines younger than this duration (V(90s), V(30m), V(1h), V(2d)); at most 366 days.
    type: str
    default: 1h
  tail_lines:
    description: Read at most the last N lines of each log; default is every line within O(since).
    type: int
  log_limit_bytes:
    description:
      - At most this many bytes of each log are read (the API server stops there). A log that reaches it is
        reported as a V(warning) finding, because later lines were not counted.
    type: int
    default: 16777216
  pattern:
    description:
      - A Python regular expression that marks a failed attempt; a line counts when it matches anywhere.
      - At most 1024 characters; an invalid expression fails the task before anything is read.
    type: str
    default: authentication_failed
  address_pattern:
    description:
      - A Python regular expression with a group named C(address) that finds the source address in a matching
        line, for example "client_ip":"(?P<address>[^"]+)" for JSON logs. The first text found that is an IP
        address counts.
      - When not set, IPv4 and IPv6 literals are found anywhere in the line (not inside a longer word or number).
      - At most 1024 characters.
    type: str
  top:
    description: Block at most this many addresses, the ones with the most failures (ties by address).
    type: int
    default: 10
  min_failures:
    description: An address needs at least this many failed attempts to be blocked.
    type: int
    default: 10
  exclude:
    description:
      - Addresses and CIDR ranges that are never blocked (your offices, monitoring, the cluster's Pod and node
        ranges). Loopback and unspecified addresses are never blocked anyway.
    type: list
    elements: str
    default: []
  ingresses:
    description: Names of the Ingresses to change; default is every Ingress in O(namespace).
    type: list
    elements: str
  method:
    description:
      - V(denylist) adds the ranked addresses to C(nginx.ingress.kubernetes.io/denylist-source-range).
      - V(rate_limit) sets C(nginx.ingress.kubernetes.io/limit-rps) to O(rate_limit_rps) (and
        C(limit-connections) to O(rate_limit_connections) when given), limits ingress-nginx applies per client address.
    type: str
    choices: [denylist, rate_limit]
    default: denylist
  rate_limit_rps:
    description: Requests per second per client address with O(method=rate_limit).
    type: int
    default: 5
  rate_limit_connections:
    description: Concurrent connections per client address with O(method=rate_limit); default leaves it unset.
    type: int
notes:
  - The annotations take effect only with the ingress-nginx controller; an Ingress whose C(ingressClassName)
    does not look like it is reported as a V(warning) finding.
  - A rate-limit value someone changed after the block is left as it is on release, with a warning.
  - "Permissions needed: get/list on pods and namespaces, get on pods/log, get/list/update on ingresses."
seealso:
  - module: runbook.ops.ns_isolate
"""

EXAMPLES = r"""
- name: See who fails to log in to the auth service (changes nothing)
  runbook.ops.ingress_block:
    namespace: auth
    incident_id: inc-2026-0142
    state: ranked
    log_sources:
      - label_selector: app=auth-service
  register: offenders

- name: Block the top 20 addresses of the auth service's and the ingress controller's logs
  runbook.ops.ingress_block:
    namespace: auth
    incident_id: inc-2026-0142
    log_sources:
      - label_selector: {app: auth-service}
      - namespace: ingress-nginx
        label_selector: app.kubernetes.io/name=ingress-nginx
        container: controller
    pattern: 'authentication_failed|POST /login HTTP/[0-9.]+" 401'
    since: 2h
    top: 20
    min_failures: 25
    exclude: [10.0.0.0/8, 203.0.113.0/24]
    ingresses: [auth-service-ingress]

- name: Rate-limit every Ingress of the namespace instead
  runbook.ops.ingress_block:
    namespace: auth
    incident_id: inc-2026-0142
    method: rate_limit
    rate_limit_rps: 2
    rate_limit_connections: 5

- name: Lift the block after the all-clear
  runbook.ops.ingress_block:
    namespace: auth
    incident_id: inc-2026-0142
    state: released
"""

RETURN = r"""
changed:
  description: Whether an Ingress was (in check mode, would be) changed.
  returned: always
  type: bool
msg:
  description: What the task did (or would do) in one sentence, or why it failed.
  returned: always
  type: str
  sample: blocked 3 address(es) on 1 Ingress(es) in namespace auth for incident inc-2026-0142 (3 new denylist entr(ies))
ranked:
  description: The offenders, most failures first, after O(exclude), O(min_failures) and O(top); empty when releasing.
  returned: always
  type: list
  elements: dict
  contains:
    address:
      description: The source address (IPv4-mapped IPv6 as IPv4).
      type: str
      sample: 203.0.113.7
    failures:
      description: The number of matching log lines from this address.
      type: int
      sample: 42
blocked:
  description:
    - With O(state=blocked) and O(method=denylist), every ranked address as C(/32) or C(/128), denied on the
      Ingresses after the task (added now, earlier, or already covered by another entry). Empty otherwise.
  returned: always
  type: list
  elements: str
  sample: [203.0.113.7/32, 2001:db8::66/128]
ingresses:
  description: One entry per Ingress the task handled (with O(state=released), those that carried the record).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The Ingress.
      type: str
    changed:
      description: Whether this Ingress was (or would be) changed.
      type: bool
    added:
      description: Denylist entries added by this task.
      type: list
      elements: str
    already_denied:
      description: Ranked addresses an existing entry already denied, so nothing was added for them.
      type: list
      elements: str
    removed:
      description: Denylist entries removed by this task (release).
      type: list
      elements: str
    set:
      description: Annotations this task set, with their new values.
      type: dict
    restored:
      description: Annotations this task put back (release), with the restored value; null means removed.
      type: dict
    record:
      description: Whether the Ingress carries the incident's record annotation after the task.
      type: bool
logs:
  description: One entry per container log read (none when releasing).
  returned: always
  type: list
  elements: dict
  contains:
    namespace:
      description: The Pod's namespace.
      type: str
    pod:
      description: The Pod.
      type: str
    container:
      description: The container.
      type: str
    bytes:
      description: Bytes read.
      type: int
    lines:
      description: Lines read.
      type: int
    matched:
      description: Lines that matched O(pattern).
      type: int
    unattributed:
      description: Matching lines in which O(address_pattern) found no address.
      type: int
    truncated:
      description: Whether the log reached O(log_limit_bytes).
      type: bool
    error:
      description: Why the log could not be read; null when it was.
      type: str
status:
  description: The worst severity among the findings (V(ok), V(info), V(warning), V(unknown), V(critical)).
  returned: always
  type: str
  sample: info
summary:
  description: The number of findings per severity.
  returned: always
  type: dict
  sample: {ok: 0, info: 3, warning: 1, unknown: 0, critical: 0}
findings:
  description: What was found, worst first.
  returned: always
  type: list
  elements: dict
  contains:
    severity:
      description:
        - V(warning) for an offender not blocked (O(state=ranked), O(method=rate_limit), beyond O(top)), a log cut
          at O(log_limit_bytes), matching lines without an address, a source without Pods, an Ingress that is not
          ingress-nginx's; V(info) for a blocked or excluded offender; V(unknown) for a log that could not be read.
      type: str
    check:
      description: V(offenders), V(logs), V(log_sources) or V(ingresses).
      type: str
    object:
      description: C(address/<address>), C(Pod/<namespace>/<name>), C(Ingress/<namespace>/<name>), or V(*).
      type: str
    message:
      description: What was found.
      type: str
    details:
      description: Facts behind the finding (address and failures, container).
      type: dict
api_requests:
  description: Number of Kubernetes API requests the task sent, retries included; also when the task fails.
  returned: always
  type: int
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 0.84
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._evidence import DEFAULT_LOG_LIMIT
from ansible_collections.runbook.ops.plugins.module_utils._ingress_block import BlockOptions, run_ingress_block
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    source = dict(
        namespace=dict(type="str"),
        label_selector=dict(type="raw"),
        pod=dict(type="str"),
        container=dict(type="str"),
    )
    return dict(
        argument_spec=dict(
            **k8s_auth_argspec(),
            namespace=dict(type="str", required=True),
            incident_id=dict(type="str", required=True),
            state=dict(type="str", choices=["ranked", "blocked", "released"], default="blocked"),
            log_sources=dict(type="list", elements="dict", default=[], options=source,
                             mutually_exclusive=[("label_selector", "pod")],
                             required_one_of=[("label_selector", "pod")]),
            since=dict(type="str", default="1h"),
            tail_lines=dict(type="int"),
            log_limit_bytes=dict(type="int", default=DEFAULT_LOG_LIMIT),
            pattern=dict(type="str", default="authentication_failed"),
            address_pattern=dict(type="str"),
            top=dict(type="int", default=10),
            min_failures=dict(type="int", default=10),
            exclude=dict(type="list", elements="str", default=[]),
            ingresses=dict(type="list", elements="str"),
            method=dict(type="str", choices=["denylist", "rate_limit"], default="denylist"),
            rate_limit_rps=dict(type="int", default=5),
            rate_limit_connections=dict(type="int"),
        ),
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, BlockOptions.from_params, run_ingress_block)


if __name__ == "__main__":
    main()
