# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """How a module reaches the Kubernetes API; the option names are those of kubernetes.core."""

    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Path to a kubeconfig file, or the kubeconfig itself as a dictionary.
      - When neither this nor O(host) is set, C($KUBECONFIG) (several paths are merged as kubectl does)
        and then C(~/.kube/config) are read; without any of them, the in-cluster service account of the
        Pod the task runs in is used.
      - Tokens, client certificates, C(tokenFile) and exec credential plugins (EKS, GKE, OIDC helpers) of
        the selected user are supported.
      - Given as a dictionary, the credentials of its C(users) (tokens, keys, passwords, exec environment
        values) are masked in every output, including the module arguments shown at C(-vvv), like a
        C(no_log) option; a path is shown as it is.
      - The environment variable E(K8S_AUTH_KUBECONFIG) is used when this is not set.
    type: raw
  context:
    description:
      - The kubeconfig context to use instead of its C(current-context).
      - The environment variable E(K8S_AUTH_CONTEXT) is used when this is not set.
    type: str
  host:
    description:
      - URL of the API server, for example V(https://k8s.example.com:6443). Overrides the kubeconfig's server.
      - The environment variable E(K8S_AUTH_HOST) is used when this is not set.
    type: str
  api_key:
    description:
      - A bearer token (a service account token, for example). Overrides the kubeconfig's credentials.
      - The environment variable E(K8S_AUTH_API_KEY) is used when this is not set.
    type: str
  validate_certs:
    description:
      - Whether to verify the API server's TLS certificate. When not set, the kubeconfig decides
        (C(insecure-skip-tls-verify)); otherwise certificates are verified.
      - The environment variable E(K8S_AUTH_VERIFY_SSL) is used when this is not set.
    type: bool
    aliases: [verify_ssl]
  ca_cert:
    description:
      - Path to the CA certificate(s) that signed the API server's certificate.
      - The environment variable E(K8S_AUTH_SSL_CA_CERT) is used when this is not set.
    type: path
    aliases: [ssl_ca_cert]
  client_cert:
    description:
      - Path to a client certificate for TLS client authentication.
      - The environment variable E(K8S_AUTH_CERT_FILE) is used when this is not set.
    type: path
    aliases: [cert_file]
  client_key:
    description:
      - Path to the private key of O(client_cert).
      - The environment variable E(K8S_AUTH_KEY_FILE) is used when this is not set.
    type: path
    aliases: [key_file]
  request_timeout:
    description:
      - Seconds to wait for each API request, above 0. Requests that fail with 429, a 5xx status or a
        connection error are retried up to three times with a growing delay, where repeating them is safe.
      - The environment variable E(K8S_AUTH_REQUEST_TIMEOUT) is used when this is not set.
    type: float
    default: 30
notes:
  - The same C(module_defaults) group (C(group/runbook.ops.k8s)) can carry these options for every
    Kubernetes module of this collection; the names match those of kubernetes.core.
  - Objects are read as raw JSON and lists are paged (C(limit)/C(continue)); the C(kubernetes) Python
    package is not needed.
"""
