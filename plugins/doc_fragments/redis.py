# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """How runbook.ops modules connect to Redis (option names as in community.general's Redis modules)."""

    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host name or address of the Redis server.
      - Whitespace, control characters and path separators are refused (the default backup set is
        C(<login_host>-<login_port>)).
      - The environment variable E(REDIS_HOST) is used when this is not set.
    type: str
    default: localhost
  login_port:
    description:
      - TCP port of the Redis server, 1 to 65535.
      - The environment variable E(REDIS_PORT) is used when this is not set.
    type: int
    default: 6379
  login_user:
    description:
      - ACL user name (Redis 6 or later). Empty means the C(default) user, authenticated with
        O(login_password) alone when one is given.
      - Control characters are refused.
      - The environment variable E(REDIS_USERNAME) is used when this is not set.
    type: str
  login_password:
    description:
      - Password of O(login_user) (or of the default user). Never shown in output.
      - Sent as one length-prefixed argument of C(AUTH), so any bytes (even CR/LF) are taken literally and
        can never be read as another command.
      - The environment variable E(REDIS_PASSWORD) is used when this is not set.
    type: str
  tls:
    description:
      - Connect with TLS.
      - A server that does not answer the handshake within O(connect_timeout), or answers in plain text, is
        reported as not speaking TLS on that port.
      - The environment variable E(REDIS_TLS) (V(true) or V(false)) is used when this is not set.
    type: bool
    default: false
  validate_certs:
    description:
      - Verify the certificate of the Redis server (against O(ca_certs)) and its name (O(login_host)) when O(tls=true).
      - Turn it off only for a test server; the password is still sent.
      - No environment variable can turn it off.
    type: bool
    default: true
  ca_certs:
    description:
      - CA bundle (PEM) to verify the server certificate with, when O(tls=true); empty means the system's.
      - The environment variable E(REDIS_TLS_CA_CERT) is used when this is not set.
    type: str
  client_cert_file:
    description:
      - Client certificate (PEM) for TLS client authentication.
      - The environment variable E(REDIS_TLS_CERT) is used when this is not set.
    type: str
  client_key_file:
    description:
      - Private key (PEM, not encrypted) of O(client_cert_file); empty means it is in O(client_cert_file).
      - The environment variable E(REDIS_TLS_KEY) is used when this is not set.
    type: str
  connect_timeout:
    description:
      - Seconds to wait for the TCP connection, for the TLS handshake and for replies to ordinary commands.
      - Must be above 0 (at most a day).
    type: float
    default: 10.0
  command_names:
    description:
      - Commands renamed on the server with C(rename-command), as a mapping of the command to its name on the server,
        for example C(BGSAVE) to C(HIPAA_BGSAVE_i9j0k1l2). Keys are case-insensitive.
      - A command the server does not know (disabled or renamed and not listed here) fails with a message naming it
        and this option; the health checks that need it report V(unknown).
    type: dict
    default: {}
notes:
  - An option whose description names an environment variable takes its value from there when the task
    does not set it; an empty variable counts as unset. The collection's AWX credential types
    (C(extensions/controller/credential_types.yml)) inject exactly these variables.
"""
