# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The Secret, policy and consumer options of the credential rotation modules
    (``credential_argspec()`` in ``plugins/module_utils/_credentials.py``)."""

    DOCUMENTATION = r"""
options:
  secret:
    description: The Kubernetes Secret that holds the credential the applications use; it must exist.
    type: dict
    required: true
    suboptions:
      namespace:
        description: Namespace of the Secret; its consumers are looked for there.
        type: str
        required: true
      name:
        description: Name of the Secret.
        type: str
        required: true
      user_key:
        description:
          - Key holding the user name, written on every rotation (with PostgreSQL C(strategy=alternating) it changes).
          - When not set, the user is the module's role or ACL user; alternating PostgreSQL roles need it.
        type: str
      password_key:
        description: Key holding the password.
        type: str
        default: password
      url_key:
        description:
          - Key holding a connection URL such as C(DATABASE_URL); its user and password are replaced, the
            rest (host, port, path, query) is kept. Left alone when the Secret has no such key.
        type: str
  rotate_after:
    description:
      - Rotate when the last rotation recorded on the Secret (annotation C(runbook.ops/rotated-at)) is older
        than this duration (V(30d), V(12h)); a Secret without that annotation is rotated.
      - A Secret whose password does not log in is always rotated (the database gets a new password).
    type: str
    default: 30d
  force:
    description: Rotate now, whatever the age of the last rotation. Not idempotent.
    type: bool
    default: false
  password_length:
    description: Length of a new password, from 16 to 1024 characters.
    type: int
    default: 32
  password_alphabet:
    description:
      - Characters a new password is drawn from (the operating system's random generator); printable ASCII,
        at least 16 different characters.
      - The default (letters and digits) needs no quoting in URLs, shells or env files.
    type: str
    default: abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789
  consumers:
    description:
      - Workloads of the Secret's namespace to restart after the Secret changed, in this order, before the
        discovered ones. They are checked to exist before anything changes.
    type: list
    elements: dict
    default: []
    suboptions:
      kind:
        description: Kind of the workload.
        type: str
        choices: [Deployment, StatefulSet, DaemonSet]
        default: Deployment
      name:
        description: Name of the workload.
        type: str
        required: true
  discover_consumers:
    description:
      - Also restart every Deployment, StatefulSet and DaemonSet of the namespace whose pod template references
        the Secret (C(env), C(envFrom), C(volumes), projected volumes), by kind and name after O(consumers).
        CronJobs that reference it are reported in RV(consumers.cronjobs), not restarted.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for each restarted consumer to become Ready, from 1 to 86400.
    type: int
    default: 300
  grace_period:
    description:
      - How long the previous credential stays valid after every consumer is Ready. V(0) revokes it at the end
        of the run; otherwise a run after the grace period revokes it (the Secret's rotation record keeps it).
        Runs before the end report the date and change nothing; the run after it revokes and reports
        RV(changed=true), RV(revoked=true). Schedule the task often enough (or run it again after the grace
        period) for the revocation to happen. O(force) revokes at once.
      - Only where the previous credential can stay valid - PostgreSQL C(strategy=alternating) and Redis; with
        PostgreSQL C(strategy=single) the previous password is gone when the new one is set.
    type: str
    default: '0'
"""
