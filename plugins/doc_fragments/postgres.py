# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """PostgreSQL connection options, named as in community.postgresql: the documentation of
    ``postgres_connection_argspec()`` (``plugins/module_utils/_pg_connection.py``), which every
    PostgreSQL module's argument spec includes."""

    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host name or IP address of the PostgreSQL server (one server; a list of hosts, spaces, quotes or C(=)
        are refused).
      - Empty means a local Unix socket (see O(login_unix_socket)).
      - The environment variable E(PGHOST) is used when this is not set.
    type: str
    default: ''
    aliases: [host]
  login_port:
    description:
      - TCP port of the server (also the number in the Unix socket's name), from 1 to 65535.
      - The environment variable E(PGPORT) is used when this is not set.
    type: int
    default: 5432
    aliases: [port]
  login_user:
    description:
      - The role to connect as; taken literally, at most 63 bytes, no control characters.
      - The environment variable E(PGUSER) is used when this is not set.
    type: str
    default: postgres
    aliases: [login]
  login_password:
    description:
      - The role's password. It reaches C(pg_dump) and C(pg_restore) only through a libpq password file,
        never their command line or environment, and is never shown in output. A password holding a NUL,
        carriage return or newline is refused (a password file cannot carry it).
      - The password file has one line per connection, naming the real host (for a Unix socket, the socket
        directory and C(localhost)), port, database and user - never C(*) - so a client program cannot hand
        the password to any other server, database or role.
      - On Linux the file is an anonymous memory file (C(memfd_create)) that the client programs open as
        C(/proc/<module pid>/fd/<n>); it is on no filesystem, only the module's own user (and root) can open
        it, and it disappears with the module process, so nothing is left even after SIGKILL.
      - Where memfd is not available, it is a 0600 file in a 0700 directory
        C(<tmp>/runbook-pg-pass-<uid>/<pid>-<random>/), removed when the task ends; after a kill it remains
        there until the next run of a PostgreSQL task of the same user on that host removes it (or the
        temporary directory is cleaned).
      - The environment variable E(PGPASSWORD) is used when this is not set; the client programs never get
        that variable, only the password file.
    type: str
    default: ''
  login_unix_socket:
    description:
      - Directory of the server's Unix socket (an absolute path); when set, it is used instead of O(login_host).
    type: str
    default: ''
    aliases: [unix_socket]
  ssl_mode:
    description:
      - libpq's C(sslmode) for every connection (the module's and the client tools').
      - The environment variable E(PGSSLMODE) is used when this is not set.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - CA certificate file to verify the server with (libpq's C(sslrootcert)); always a file name.
      - The environment variable E(PGSSLROOTCERT) is used when this is not set.
    type: str
    aliases: [ssl_rootcert]
  ssl_cert:
    description:
      - Client certificate file (PEM) for TLS client authentication (libpq's C(sslcert)), for the module's
        connections and the client programs'.
      - The environment variable E(PGSSLCERT) is used when this is not set.
    type: str
  ssl_key:
    description:
      - Private key file of O(ssl_cert) (libpq's C(sslkey)). libpq refuses a key file that group or others may
        read; such a file (AWX writes the files of its credentials that way) is handed to libpq as a private
        copy (an anonymous memory file on Linux) that lives as long as the task.
      - The environment variable E(PGSSLKEY) is used when this is not set.
    type: str
  connect_timeout:
    description: Seconds to wait for a connection, from 1 to 86400.
    type: int
    default: 10
notes:
  - An option whose description names an environment variable takes its value from there when the task
    does not set it; an empty variable counts as unset. The collection's AWX credential types
    (C(extensions/controller/credential_types.yml)) inject exactly these variables.
"""
