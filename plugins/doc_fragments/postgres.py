# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """PostgreSQL connection options, named as in community.postgresql."""

    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host name or IP address of the PostgreSQL server.
      - Empty means a local Unix socket (see O(login_unix_socket)).
    type: str
    default: ''
    aliases: [host]
  login_port:
    description: TCP port of the server (also the number in the Unix socket's name).
    type: int
    default: 5432
    aliases: [port]
  login_user:
    description: The role to connect as.
    type: str
    default: postgres
    aliases: [login]
  login_password:
    description:
      - The role's password. It reaches C(pg_dump) and C(pg_restore) only through a private 0600
        password file, never their command line or environment, and is never shown in output.
    type: str
    default: ''
  login_unix_socket:
    description: Directory of the server's Unix socket; when set, it is used instead of O(login_host).
    type: str
    default: ''
    aliases: [unix_socket]
  ssl_mode:
    description: libpq's C(sslmode) for every connection (the module's and the client tools').
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description: CA certificate file to verify the server with (libpq's C(sslrootcert)).
    type: str
    aliases: [ssl_rootcert]
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
"""
