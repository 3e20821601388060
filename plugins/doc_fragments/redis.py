# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """How runbook.ops modules connect to Redis (option names as in community.general's Redis modules)."""

    DOCUMENTATION = r"""
options:
  login_host:
    description: Host name or address of the Redis server.
    type: str
    default: localhost
  login_port:
    description: TCP port of the Redis server.
    type: int
    default: 6379
  login_user:
    description:
      - ACL user name (Redis 6 or later). Empty means the C(default) user, authenticated with
        O(login_password) alone when one is given.
    type: str
  login_password:
    description: Password of O(login_user) (or of the default user). Never shown in output.
    type: str
  tls:
    description: Connect with TLS.
    type: bool
    default: false
  ca_certs:
    description: CA bundle to verify the server certificate with, when O(tls=true); empty means the system's.
    type: str
  client_cert_file:
    description: Client certificate for TLS client authentication.
    type: str
  client_key_file:
    description: Private key of O(client_cert_file).
    type: str
  connect_timeout:
    description: Seconds to wait for the TCP (and TLS) connection and for replies to ordinary commands.
    type: float
    default: 10.0
"""
