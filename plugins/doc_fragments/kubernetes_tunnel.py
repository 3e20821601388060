# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Reaching a database that runs in Kubernetes through a port-forward of the API server."""

    DOCUMENTATION = r"""
options:
  kubernetes_tunnel:
    description:
      - Reach the server through the Kubernetes API server instead of a direct TCP route, as
        C(kubectl port-forward) does; for a controller or an AWX job outside the cluster.
      - For the duration of the task, a port on C(127.0.0.1) is forwarded to a Pod's port (the WebSocket
        channel protocol C(v4.channel.k8s.io) on C(pods/portforward)); the module connects there, and so do
        the client programs it runs. Every connection gets its own WebSocket; nothing stays open after the task.
      - The Kubernetes connection options below mean what they mean in every Kubernetes module of this
        collection and fall back to the same C(K8S_AUTH_*) environment variables, then C($KUBECONFIG),
        C(~/.kube/config) and the in-cluster service account.
      - >-
        They are nested here because C(module_defaults) for C(group/runbook.ops.k8s) would hand the
        Kubernetes C(host) and C(ca_cert) to the database module's own options of those names. To share one
        set of values, keep them in a variable and use it for both, for example
        C(group/runbook.ops.k8s: "{{ k8s_auth }}") and
        C(kubernetes_tunnel: "{{ k8s_auth | combine({'namespace': 'db', 'target': 'service/postgres'}) }}"),
        the latter under C(module_defaults) for C(group/runbook.ops.postgresql) or C(group/runbook.ops.redis) too.
      - The credentials need C(get) on the target object (and C(list) on Pods and EndpointSlices for a
        Service or workload) and C(create) on C(pods/portforward) in O(kubernetes_tunnel.namespace). A missing
        permission, a target with no running or Ready Pod, a port the Pod does not expose, or a connection
        that breaks mid-stream (the API server stops) fails the task with a message naming the tunnel, and a
        backup is not committed.
    type: dict
    suboptions:
      namespace:
        description: Namespace of the target.
        type: str
        required: true
      target:
        description:
          - What to forward to, as C(KIND/NAME).
          - V(pod/NAME) (the Pod must be running).
          - V(service/NAME) - a Ready endpoint Pod behind the Service (its EndpointSlices, or its selector);
            O(kubernetes_tunnel.port) is a port of the Service and the connection goes to its C(targetPort),
            named target ports included.
          - V(statefulset/NAME) (the Ready Pod with the lowest ordinal) or V(deployment/NAME) (its oldest
            Ready Pod).
          - kubectl's short kind words (V(svc), V(sts), V(deploy), V(po)) are accepted too.
        type: str
        required: true
      port:
        description:
          - The port, as a number or a port name. For a Service, one of its ports; otherwise a container
            port of the Pod. A number must be one the Pod declares, when it declares any.
          - When not set, the only TCP port of the Service or Pod is used.
        type: raw
      kubeconfig:
        description:
          - Path to a kubeconfig file, or the kubeconfig itself as a dictionary (its credentials are masked
            in every output).
          - The environment variable E(K8S_AUTH_KUBECONFIG) is used when this is not set.
        type: raw
      context:
        description:
          - The kubeconfig context to use instead of its C(current-context).
          - The environment variable E(K8S_AUTH_CONTEXT) is used when this is not set.
        type: str
      host:
        description:
          - URL of the Kubernetes API server; overrides the kubeconfig's server.
          - The environment variable E(K8S_AUTH_HOST) is used when this is not set.
        type: str
      api_key:
        description:
          - A bearer token; overrides the kubeconfig's credentials.
          - The environment variable E(K8S_AUTH_API_KEY) is used when this is not set.
        type: str
      validate_certs:
        description:
          - Whether to verify the API server's TLS certificate; when not set, the kubeconfig decides.
          - The environment variable E(K8S_AUTH_VERIFY_SSL) is used when this is not set.
        type: bool
        aliases: [verify_ssl]
      ca_cert:
        description:
          - CA certificate(s) of the API server.
          - The environment variable E(K8S_AUTH_SSL_CA_CERT) is used when this is not set.
        type: path
        aliases: [ssl_ca_cert]
      client_cert:
        description:
          - Client certificate for TLS client authentication to the API server.
          - The environment variable E(K8S_AUTH_CERT_FILE) is used when this is not set.
        type: path
        aliases: [cert_file]
      client_key:
        description:
          - Private key of O(kubernetes_tunnel.client_cert).
          - The environment variable E(K8S_AUTH_KEY_FILE) is used when this is not set.
        type: path
        aliases: [key_file]
      request_timeout:
        description:
          - Seconds to wait for each API request and for each WebSocket handshake, above 0.
          - The environment variable E(K8S_AUTH_REQUEST_TIMEOUT) is used when this is not set.
        type: float
        default: 30
"""
