#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cert_renew
short_description: Find TLS certificates near expiry and renew them
version_added: 0.1.0
description:
  - Reads certificates from kubernetes.io/tls Secrets, cert-manager Certificates, live TLS endpoints and
    PEM files, reports for each its subject, SANs, issuer, serial, validity and days left, and whether it
    should be renewed (fewer than O(remaining_days) days left, less than O(remaining_percentage) of its
    lifetime left, expired, or O(force)).
  - A cert-manager Certificate is renewed the way C(cmctl renew) does it, by setting its C(Issuing) condition
    (status V(True), reason C(ManuallyTriggered), C(observedGeneration)) through the status subresource with
    the object's resourceVersion; nothing is done when it is already issuing. cert-manager then issues the
    new certificate; O(wait) waits for it.
  - A Secret or a file is renewed by O(issuer), a CA or self-signed. The new certificate keeps the subject,
    the SANs and the extended key usages of the old one, gets a new serial and key (unless O(reuse_key)), and
    is checked before it is written (its key matches, its signature verifies with the CA, its dates are valid
    now). The Secret gets C(tls.crt), C(tls.key) and C(ca.crt) and is written with the resourceVersion it was
    read with, so a concurrent change makes the task fail instead of being overwritten.
  - The issuer is checked (its key matches its certificate, it is a CA, it is valid now) before any source is
    read; a bad issuer fails the task before anything is written.
  - An endpoint is only reported; renew its certificate where it is issued.
  - Each certificate also gives a finding (C(severity), C(check), C(object), C(message), C(details)) in the
    schema every runbook.ops health module shares, so a daily check can run this module in check mode.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.k8s_auth
attributes:
  check_mode:
    support: full
    description: Reports which certificates would be renewed (RV(certificates[].renewed)) and changes nothing.
  diff_mode:
    support: full
    description: Shows the serial, issuer and expiry of each renewed certificate before and after; never key material.
options:
  sources:
    description:
      - Where to find certificates. Each entry has a O(sources[].type) and the options of that type.
    type: list
    elements: dict
    required: true
    suboptions:
      type:
        description:
          - V(tls_secret) is a kubernetes.io/tls Secret (O(sources[].namespace) with O(sources[].name) or
            O(sources[].label_selector)).
          - V(certificate) is a cert-manager Certificate (O(sources[].name), or O(sources[].all) for every
            Certificate in O(sources[].namespace), or in all namespaces when no namespace is given).
          - V(endpoint) is a live TLS endpoint (O(sources[].host), O(sources[].port),
            O(sources[].server_name)); report only.
          - V(file) is a PEM file on the managed host (O(sources[].path)); renewing it needs
            O(sources[].key_path).
        type: str
        required: true
        choices: [tls_secret, certificate, endpoint, file]
      namespace:
        description:
          - Namespace of the Secret or Certificate; required with O(sources[].name) or O(sources[].label_selector).
        type: str
      name:
        description:
          - Name of the Secret or Certificate. Not together with O(sources[].label_selector) or O(sources[].all).
        type: str
      label_selector:
        description: For V(tls_secret), every kubernetes.io/tls Secret of the namespace with these labels.
        type: str
      all:
        description: For V(certificate), every Certificate of the namespace (or of the cluster).
        type: bool
      host:
        description: For V(endpoint), the host name or address to connect to.
        type: str
      port:
        description: For V(endpoint), the TCP port, from 1 to 65535.
        type: int
        default: 443
      server_name:
        description: For V(endpoint), the TLS server name (SNI) to ask for; O(sources[].host) when not set. Needs O(sources[].host).
        type: str
      path:
        description:
          - For V(file), the PEM file; its first certificate is the one judged. When renewed it holds the new
            certificate followed by the CA, unless O(sources[].ca_path) is set.
          - It must be a regular file of at most 1 MiB (never a device or a FIFO).
        type: path
      key_path:
        description:
          - For V(file), the private key file written (mode 0600) when the certificate is renewed, and read
            when O(reuse_key) is set. Needs O(sources[].path).
          - The new key, certificate and CA file are each written in full next to their destination before
            any of them replaces the old one, so a read-only or full file system leaves all of them as they
            were (the task fails naming the file). A destination whose directory is read-only or missing is
            reported before anything is issued, also in check mode.
        type: path
      ca_path:
        description:
          - For V(file), write the CA certificate to this file instead of appending it to O(sources[].path). Needs O(sources[].path).
        type: path
  remaining_days:
    description: Renew a certificate with fewer than this many days left (0 to 36500).
    type: float
    default: 30
  remaining_percentage:
    description:
      - Also renew a certificate with less than this fraction of its lifetime left, between 0 and 1
        (V(0.33) renews a 90-day certificate 30 days before it expires).
    type: float
  force:
    description: Renew every certificate found (that has a way to be renewed), whatever its expiry.
    type: bool
    default: false
  now:
    description:
      - The time to judge expiry against, as ISO 8601 (V(2026-03-01T06:00:00Z)); the current time when not
        set. New certificates are always issued from the current time.
    type: str
  issuer:
    description:
      - How V(tls_secret) and V(file) sources are renewed. Without it they are only reported.
    type: dict
    suboptions:
      type:
        description: V(ca) signs with O(issuer.ca_cert) and O(issuer.ca_key); V(selfsigned) signs each certificate with its own key.
        type: str
        required: true
        choices: [ca, selfsigned]
      ca_cert:
        description:
          - The CA certificate (PEM text, or the path of a PEM file on the managed host). Written as C(ca.crt).
          - A value without a C(-----BEGIN) line is read as a path.
        type: str
      ca_key:
        description:
          - The CA private key (PEM text, or the path of a PEM file on the managed host), RSA, ECDSA or Ed25519.
          - A value without a C(-----BEGIN) line is read as a path; no message ever shows a part of it.
        type: str
      ca_key_passphrase:
        description: The passphrase of an encrypted O(issuer.ca_key).
        type: str
  validity_days:
    description: Validity of a new certificate in days, from 1 to 36500 (cut to the CA's expiry when that comes first).
    type: int
    default: 90
  key_type:
    description: Key type of a new certificate's key.
    type: str
    choices: [ecdsa-p256, rsa-2048, rsa-3072, ed25519]
    default: ecdsa-p256
  reuse_key:
    description: Keep the existing private key (it must match the old certificate) instead of generating a new one.
    type: bool
    default: false
  wait:
    description:
      - After setting C(Issuing) on a Certificate, wait until it is Ready with a later C(notAfter); the task
        fails (after returning every result) when O(wait_timeout) passes first.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait with O(wait), above 0 and at most 86400.
    type: int
    default: 300
  restart_consumers:
    description:
      - Restart (as C(kubectl rollout restart) does) the Deployments and StatefulSets in the Secret's namespace
        whose pod template mounts or references a renewed Secret (volumes, projected volumes, C(env),
        C(envFrom)). For a Certificate this is its C(secretName), and only once O(wait) saw it re-issued.
      - When V(false), the consumers are still listed in RV(consumers) with C(restarted=false).
    type: bool
    default: false
  connect_timeout:
    description:
      - Seconds to wait for a TLS endpoint to connect and complete the handshake, above 0 and at most 3600.
      - A port that answers in plain text (an HTTP or Redis port) is reported as not speaking TLS.
    type: float
    default: 10
requirements:
  - cryptography >= 42
notes:
  - "Severity of each finding: V(critical) when expired, not yet valid, or (for a Certificate) not Ready;
    V(warning) when it should be renewed; V(info) when it was renewed (or C(Issuing) was set) by this task;
    V(critical) when a source cannot be read (not found, not a certificate, endpoint unreachable),
    V(unknown) when the credentials may not read it."
  - The Kubernetes options are only used when a V(tls_secret) or V(certificate) source is given.
seealso:
  - module: runbook.ops.k8s_health
  - module: community.crypto.x509_certificate_info
"""

EXAMPLES = r"""
- name: Daily check (changes nothing) of every Certificate and a public endpoint
  runbook.ops.cert_renew:
    sources:
      - type: certificate
        all: true
      - type: endpoint
        host: auth.example.com
    remaining_days: 21
  check_mode: true
  register: certs

- name: Show the certificates that need renewing
  ansible.builtin.debug:
    msg: "{{ certs.certificates | selectattr('should_renew') | map(attribute='object') | list }}"

- name: Renew a cert-manager Certificate near expiry and wait for the new one
  runbook.ops.cert_renew:
    sources:
      - type: certificate
        namespace: auth
        name: token-issuer-tls
    wait: true
    wait_timeout: 600
    restart_consumers: true

- name: Renew the internal TLS Secrets of a namespace with the internal CA, restart what uses them
  runbook.ops.cert_renew:
    sources:
      - type: tls_secret
        namespace: auth
        label_selector: tls=internal
    issuer:
      type: ca
      ca_cert: /etc/pki/internal/ca.crt
      ca_key: "{{ internal_ca_key }}"
    remaining_percentage: 0.33
    key_type: ecdsa-p256
    restart_consumers: true

- name: Renew a PEM file on the host with a self-signed certificate
  runbook.ops.cert_renew:
    sources:
      - type: file
        path: /etc/nginx/tls/site.crt
        key_path: /etc/nginx/tls/site.key
    issuer:
      type: selfsigned
    validity_days: 365
"""

RETURN = r"""
changed:
  description: Whether a certificate was renewed, an C(Issuing) condition set or a consumer restarted.
  returned: always
  type: bool
  sample: true
msg:
  description: What was checked and done, for people; on failure, every renewal that failed.
  returned: always
  type: str
  sample: "3 certificates checked, 1 due for renewal, 1 renewed; status info"
certificates:
  description: Every certificate found, in the order of O(sources).
  returned: always
  type: list
  elements: dict
  contains:
    source:
      description: The source type, V(tls_secret), V(certificate), V(endpoint) or V(file).
      type: str
      sample: tls_secret
    object:
      description: The object, like C(Secret/auth/auth-tls), C(Certificate/auth/token-issuer-tls), C(Endpoint/host:port) or C(File/path).
      type: str
      sample: Secret/auth/auth-tls
    subject:
      description: >-
        Subject as RFC 4514 text. For a Certificate, read from its Secret when that can be read, else
        C(CN=) of C(spec.commonName) (empty without one).
      type: str
      sample: CN=auth.auth.svc
    sans:
      description: Subject alternative names, as C(DNS:name), C(IP:address), C(URI:uri), C(email:address).
      type: list
      elements: str
      sample: ["DNS:auth.auth.svc", "IP:10.0.0.7"]
    issuer:
      description: Issuer as RFC 4514 text; for a Certificate whose Secret cannot be read, C(Kind/name) of its issuerRef.
      type: str
      sample: CN=Internal CA
    serial:
      description: Serial number in hexadecimal; null when unknown (a Certificate whose Secret cannot be read).
      type: str
      sample: 5f3a0c1d9e
    not_before:
      description: Start of validity, UTC ISO 8601.
      type: str
      sample: "2026-01-01T00:00:00Z"
    not_after:
      description: End of validity, UTC ISO 8601.
      type: str
      sample: "2026-03-31T00:00:00Z"
    days_left:
      description: Days until RV(certificates[].not_after) from O(now), negative once expired; null when the certificate could not be read.
      type: float
      sample: 12.4
    should_renew:
      description: Whether it is due for renewal (or O(force) is set).
      type: bool
      sample: true
    renewed:
      description: >-
        Whether this task renewed it (a new certificate written, or C(Issuing) set on a Certificate); in check
        mode, whether it would.
      type: bool
      sample: true
    msg:
      description: What was found and done, for people.
      type: str
      sample: "expires in 12 days, below 30; renewed by the ca issuer: new certificate valid until 2026-06-29T06:00:00Z"
    new:
      description: >-
        The new certificate's C(serial), C(issuer), C(not_before) and C(not_after) when one was written (or
        when O(wait) saw cert-manager issue it); null otherwise and in check mode.
      type: dict
      sample: {serial: 7a11c0de, issuer: CN=Internal CA, not_before: "2026-03-01T05:55:00Z", not_after: "2026-05-30T06:00:00Z"}
renewed:
  description: How many certificates were renewed (in check mode, would be).
  returned: always
  type: int
  sample: 1
consumers:
  description: Deployments and StatefulSets whose pod template mounts or references a renewed Secret.
  returned: always
  type: list
  elements: dict
  sample: [{kind: Deployment, namespace: auth, name: auth-service, secrets: [auth-tls], restarted: true}]
  contains:
    kind:
      description: V(Deployment) or V(StatefulSet).
      type: str
    namespace:
      description: Its namespace.
      type: str
    name:
      description: Its name.
      type: str
    secrets:
      description: The renewed Secrets it uses.
      type: list
      elements: str
    restarted:
      description: Whether it was restarted (in check mode, would be).
      type: bool
findings:
  description: One finding per certificate (and per source that could not be read), worst first.
  returned: always
  type: list
  elements: dict
  contains:
    severity:
      description: V(ok), V(info), V(warning), V(unknown) or V(critical).
      type: str
      sample: warning
    check:
      description: V(certificates), or V(consumers) when workloads could not be listed.
      type: str
      sample: certificates
    object:
      description: The object, as in RV(certificates[].object).
      type: str
      sample: Certificate/auth/token-issuer-tls
    message:
      description: The object and RV(certificates[].msg).
      type: str
      sample: "Certificate/auth/token-issuer-tls: expires in 4 days, below 30"
    details:
      description: >-
        C(days_left), C(not_after), C(should_renew), C(renewed), C(lifetime_left) (fraction), and C(namespace),
        C(secret), C(issuing) for a Certificate, C(status) (HTTP) for a refused read.
      type: dict
      sample: {days_left: 4.9, not_after: "2026-03-06T06:00:00Z", should_renew: true, renewed: false}
status:
  description: The worst severity among the findings.
  returned: always
  type: str
  sample: warning
summary:
  description: The number of findings per severity.
  returned: always
  type: dict
  sample: {ok: 2, info: 1, warning: 0, unknown: 0, critical: 0}
checked_at:
  description: The time expiry was judged against (O(now) or the current time), UTC.
  returned: always
  type: str
  sample: "2026-03-01T06:00:00Z"
api_requests:
  description: HTTP requests sent to the Kubernetes API server, retries included; V(0) when no source needed it.
  returned: always
  type: int
  sample: 4
duration_s:
  description: Seconds the task took.
  returned: always
  type: float
  sample: 0.3
"""

import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._cert_issuer import ISSUER_TYPES, KEY_TYPES
from ansible_collections.runbook.ops.plugins.module_utils._cert_renew import CertRenewOptions, run_cert_renew
from ansible_collections.runbook.ops.plugins.module_utils._cert_sources import SOURCE_TYPES
from ansible_collections.runbook.ops.plugins.module_utils._common import run_task
from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec, k8s_module


def module_args() -> t.Dict[str, t.Any]:
    """The argument spec and its rules; tests validate parameters through it."""
    source_options = dict(
        type=dict(type="str", required=True, choices=list(SOURCE_TYPES)),
        namespace=dict(type="str"),
        name=dict(type="str"),
        label_selector=dict(type="str"),
        all=dict(type="bool"),
        host=dict(type="str"),
        port=dict(type="int", default=443),
        server_name=dict(type="str"),
        path=dict(type="path"),
        key_path=dict(type="path", no_log=False),
        ca_path=dict(type="path"),
    )
    return dict(
        argument_spec=dict(
            **k8s_auth_argspec(),
            sources=dict(
                type="list", elements="dict", required=True, options=source_options,
                required_if=[
                    ("type", "tls_secret", ("name", "label_selector"), True),
                    ("type", "certificate", ("name", "all"), True),
                    ("type", "endpoint", ("host",)),
                    ("type", "file", ("path",)),
                ],
                mutually_exclusive=[("name", "label_selector"), ("name", "all")],
                # A Secret or Certificate is found by name or selector within a namespace; only
                # certificate with all: true may look in every namespace.
                required_by={"name": ("namespace",), "label_selector": ("namespace",), "server_name": ("host",),
                             "key_path": ("path",), "ca_path": ("path",)},
            ),
            remaining_days=dict(type="float", default=30),
            remaining_percentage=dict(type="float"),
            force=dict(type="bool", default=False),
            now=dict(type="str"),
            issuer=dict(type="dict", options=dict(
                type=dict(type="str", required=True, choices=list(ISSUER_TYPES)),
                ca_cert=dict(type="str"),
                ca_key=dict(type="str", no_log=True),
                ca_key_passphrase=dict(type="str", no_log=True),
            ), required_if=[("type", "ca", ("ca_cert", "ca_key"))]),
            validity_days=dict(type="int", default=90),
            key_type=dict(type="str", choices=list(KEY_TYPES), default="ecdsa-p256"),
            reuse_key=dict(type="bool", default=False, no_log=False),
            wait=dict(type="bool", default=False),
            wait_timeout=dict(type="int", default=300),
            restart_consumers=dict(type="bool", default=False),
            connect_timeout=dict(type="float", default=10),
        ),
        supports_check_mode=True,
    )


def main() -> None:
    module = k8s_module(**module_args())
    run_task(module, CertRenewOptions.from_params, run_cert_renew)


if __name__ == "__main__":
    main()
