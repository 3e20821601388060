"""Pure parts of the Kubernetes tunnel: WebSocket framing (_websocket), the port-forward channel layer, targets,
port mapping, Pod choice, and the option's argument spec against its doc fragment."""

from __future__ import annotations

import os

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.runbook.ops.plugins.doc_fragments.kubernetes_tunnel import ModuleDocFragment
from ansible_collections.runbook.ops.plugins.module_utils import _k8s_tunnel as tunnel
from ansible_collections.runbook.ops.plugins.module_utils import _websocket as ws
from ansible_collections.runbook.ops.plugins.module_utils._k8s_tunnel import TunnelError
from ansible_collections.runbook.ops.plugins.module_utils._websocket import ProtocolError


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    frame = ws.encode_frame(opcode, payload)
    return frame if fin else bytes([frame[0] & 0x7F]) + frame[1:]


def unmask_client_frame(frame: bytes):
    """Decode one masked client frame the way a server does (independent of the encoder)."""
    assert frame[1] & 0x80, "client frames must be masked"
    size, offset = frame[1] & 0x7F, 2
    if size == 126:
        size, offset = int.from_bytes(frame[2:4], "big"), 4
    elif size == 127:
        size, offset = int.from_bytes(frame[2:10], "big"), 10
    mask = frame[offset:offset + 4]
    body = frame[offset + 4:]
    assert len(body) == size
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(body))


# ----------------------------------------------------------------------------------------------
# Framing


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_client_frames_are_masked_and_sized_per_rfc6455(size):
    payload = os.urandom(size)
    frame = ws.client_frame(0x2, payload)
    assert frame[0] == 0x82
    opcode, body = unmask_client_frame(frame)
    assert (opcode, body) == (0x2, payload)


def test_mask_matches_a_byte_by_byte_xor():
    data, mask = os.urandom(1001), b"\x01\x80\xff\x10"
    assert ws.apply_mask(data, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert ws.apply_mask(b"", mask) == b""


def test_decoder_handles_any_split_of_the_byte_stream():
    stream = server_frame(0x2, b"\x00" + b"a" * 300) + server_frame(0x9, b"hi") + server_frame(0x2, b"\x01err")
    for cut in range(1, len(stream)):
        decoder = ws.FrameDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == [(0x2, b"\x00" + b"a" * 300), (0x9, b"hi"), (0x2, b"\x01err")]


def test_decoder_joins_fragments_and_passes_control_frames_between_them():
    stream = (server_frame(0x2, b"\x00ab", fin=False) + server_frame(0x9, b"p")
              + server_frame(0x0, b"cd", fin=False) + server_frame(0x0, b"ef"))
    assert ws.FrameDecoder().feed(stream) == [(0x9, b"p"), (0x2, b"\x00abcdef")]


@pytest.mark.parametrize("raw, why", [
    (bytes([0x82, 0x81, 1, 2, 3, 4, 5]), "masked"),
    (bytes([0xC2, 0x00]), "reserved bits"),
    (bytes([0x80, 0x01, 0x41]), "continuation frame without"),
    (bytes([0x09, 0x00]), "fragmented or oversized control"),
])
def test_decoder_refuses_what_a_server_must_not_send(raw, why):
    with pytest.raises(ProtocolError, match=why):
        ws.FrameDecoder().feed(raw)


def test_decoder_refuses_oversized_messages():
    with pytest.raises(ProtocolError, match="frame of"):
        ws.FrameDecoder(max_message=10).feed(server_frame(0x2, b"x" * 11))


# ----------------------------------------------------------------------------------------------
# Port-forward channels


def test_port_prefix_is_checked_and_dropped_per_channel():
    channels = tunnel.PortChannels(5432)
    prefix = (5432).to_bytes(2, "little")
    assert channels.message(b"\x00" + prefix) == b""
    assert channels.message(b"\x01" + prefix) == b""
    assert channels.message(b"\x00hello") == b"hello"
    assert channels.message(b"\x01boom") == b"" and bytes(channels.error) == b"boom"


def test_port_prefix_split_over_messages_and_data_in_the_same_message():
    channels = tunnel.PortChannels(6379)
    prefix = (6379).to_bytes(2, "little")
    assert channels.message(b"\x00" + prefix[:1]) == b""
    assert channels.message(b"\x00" + prefix[1:] + b"+PONG\r\n") == b"+PONG\r\n"


def test_wrong_port_or_channel_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="announced port 80"):
        tunnel.PortChannels(5432).message(b"\x00" + (80).to_bytes(2, "little"))
    with pytest.raises(ProtocolError, match="channel 2"):
        tunnel.PortChannels(5432).message(b"\x02xx")


def test_data_frames_go_on_channel_zero():
    opcode, body = unmask_client_frame(tunnel.PortChannels(1).data_frame(b"SELECT 1"))
    assert (opcode, body) == (0x2, b"\x00SELECT 1")


def test_handshake_accept_value_from_rfc6455_example():
    assert ws.accept_value("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_request_and_response_head():
    request = ws.handshake_request("/api/v1/namespaces/db/pods/pg-0/portforward?ports=5432", "k8s:6443", "KEY",
                                   "tok", "ua", "v4.channel.k8s.io").decode()
    assert request.startswith("GET /api/v1/namespaces/db/pods/pg-0/portforward?ports=5432 HTTP/1.1\r\n")
    assert "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n" in request and "Authorization: Bearer tok\r\n" in request
    assert request.endswith("\r\n\r\n")
    status, headers = ws.parse_response_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                             b"Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n")
    assert status == 101 and headers["sec-websocket-protocol"] == "v4.channel.k8s.io"
    with pytest.raises(ProtocolError):
        ws.parse_response_head(b"SSH-2.0-OpenSSH\r\n\r\n")


# ----------------------------------------------------------------------------------------------
# Targets and ports


@pytest.mark.parametrize("text, expected", [
    ("pod/redis-master-0", ("pod", "redis-master-0")), ("svc/postgres", ("service", "postgres")),
    ("service/postgres", ("service", "postgres")), ("sts/redis", ("statefulset", "redis")),
    ("deploy/api", ("deployment", "api")), ("Deployment/api", ("deployment", "api")),
])
def test_targets(text, expected):
    assert tuple(tunnel.parse_target(text)) == expected


@pytest.mark.parametrize("text", ["postgres", "job/x", "pod/", "pod/a/b", "pod/Bad_Name", "", None])
def test_bad_targets_say_the_form(text):
    with pytest.raises(TunnelError, match="KIND/NAME|not a valid Kubernetes object name"):
        tunnel.parse_target(text)


def test_ports():
    assert tunnel.parse_port(5432) == 5432 and tunnel.parse_port("6379") == 6379 and tunnel.parse_port("postgres") == "postgres"
    assert tunnel.parse_port(None) is None
    for bad in (0, 70000, "not a port", True, "-x"):
        with pytest.raises(TunnelError, match="kubernetes_tunnel.port"):
            tunnel.parse_port(bad)


def pod(name="pg-0", ports=((5432, "postgres", "TCP"),), phase="Running", ready=True, created="2026-01-01T00:00:00Z",
        deleting=False):
    meta = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    return {"metadata": meta,
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": n, "name": nm, "protocol": p}
                                                            for n, nm, p in ports]}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_pod_port_by_number_name_or_the_only_port():
    assert tunnel.pod_port(pod(), 5432, "Pod/db/pg-0") == 5432
    assert tunnel.pod_port(pod(), "postgres", "Pod/db/pg-0") == 5432
    assert tunnel.pod_port(pod(), None, "Pod/db/pg-0") == 5432
    assert tunnel.pod_port(pod(ports=()), 8080, "Pod/db/pg-0") == 8080  # nothing declared: taken at its word


def test_pod_port_not_exposed_names_the_port_and_the_ports_it_has():
    two = pod(ports=((6379, "redis", "TCP"), (9121, "metrics", "TCP"), (53, "dns", "UDP")))
    with pytest.raises(TunnelError) as err:
        tunnel.pod_port(two, 6380, "Pod/cache/redis-0")
    assert err.value.msg == ("Pod/cache/redis-0 does not expose TCP port 6380 "
                             "(its ports: 6379/TCP (redis), 9121/TCP (metrics), 53/UDP (dns))")
    with pytest.raises(TunnelError, match="no TCP container port named 'dns'"):
        tunnel.pod_port(two, "dns", "Pod/cache/redis-0")
    with pytest.raises(TunnelError, match="set kubernetes_tunnel.port"):
        tunnel.pod_port(two, None, "Pod/cache/redis-0")


def service(ports):
    return {"spec": {"ports": ports, "selector": {"app": "pg"}}}


def test_service_port_maps_to_target_port_numbers_and_names():
    svc = service([{"name": "sql", "port": 5432, "targetPort": "postgres"}, {"name": "metrics", "port": 9187, "targetPort": 9187}])
    assert tunnel.service_port(svc, 5432, "Service/db/pg")[1] == "postgres"
    assert tunnel.service_port(svc, "metrics", "Service/db/pg")[1] == 9187
    assert tunnel.service_port(service([{"port": 80}]), None, "Service/db/web")[1] == 80  # no targetPort: same port
    assert tunnel.service_port(service([{"port": 80, "targetPort": "8080"}]), 80, "s")[1] == 8080
    with pytest.raises(TunnelError, match=r"Service/db/pg has no TCP port number 5433 \(its ports: 5432 \(sql\), 9187 \(metrics\)\)"):
        tunnel.service_port(svc, 5433, "Service/db/pg")
    with pytest.raises(TunnelError, match="set kubernetes_tunnel.port"):
        tunnel.service_port(svc, None, "Service/db/pg")
    # A named targetPort is then resolved on the Pod.
    assert tunnel.pod_port(pod(), tunnel.service_port(svc, 5432, "s")[1], "Pod/db/pg-0") == 5432


def test_ready_endpoint_pods_skip_unready_and_terminating():
    slices = [{"endpoints": [
        {"conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": "a"}},
        {"conditions": {"ready": False}, "targetRef": {"kind": "Pod", "name": "b"}},
        {"conditions": {"ready": True, "terminating": True}, "targetRef": {"kind": "Pod", "name": "c"}},
        {"conditions": {}, "targetRef": {"kind": "Pod", "name": "d"}},
        {"conditions": {"ready": True}},
    ]}, {"endpoints": [{"conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": "a"}}]}]
    assert tunnel.ready_endpoint_pods(slices) == ["a", "d"]


def test_choose_pod_prefers_ready_lowest_ordinal_or_oldest():
    pods = [pod("redis-10"), pod("redis-2"), pod("redis-0", ready=False), pod("redis-1", deleting=True)]
    assert tunnel.choose_pod(pods, "statefulset")["metadata"]["name"] == "redis-2"
    pods = [pod("api-b", created="2026-01-03T00:00:00Z"), pod("api-a", created="2026-01-02T00:00:00Z"),
            pod("api-c", phase="Pending", ready=False, created="2026-01-01T00:00:00Z")]
    assert tunnel.choose_pod(pods, "deployment")["metadata"]["name"] == "api-a"
    assert tunnel.choose_pod([pod(ready=False)], "deployment") is None
    assert tunnel.pod_state(pod("x", ready=False)) == "x (Running, not Ready)"
    assert tunnel.pod_state(pod("y", phase="Pending")) == "y (Pending)"


def test_label_selector():
    assert tunnel.label_selector({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["db", "cache"]}, {"key": "canary", "operator": "DoesNotExist"},
        {"key": "x", "operator": "NotIn", "values": ["y"]}, {"key": "z", "operator": "Exists"}]}) == \
        "a=1,b=2,tier in (db,cache),!canary,x notin (y),z"


# ----------------------------------------------------------------------------------------------
# The option


def test_argspec_matches_the_doc_fragment():
    doc = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]["kubernetes_tunnel"]
    spec = tunnel.kubernetes_tunnel_argspec()["kubernetes_tunnel"]
    assert doc["type"] == spec["type"]
    assert set(doc["suboptions"]) == set(spec["options"])
    for name, entry in spec["options"].items():
        documented = doc["suboptions"][name]
        assert documented["type"] == entry["type"], name
        assert documented.get("required", False) == entry.get("required", False), name
        assert documented.get("default") == entry.get("default"), name
        assert documented.get("aliases", []) == entry.get("aliases", []), name


def test_auth_options_fall_back_to_the_k8s_auth_environment(monkeypatch):
    monkeypatch.setenv("K8S_AUTH_HOST", "https://k8s.example:6443")
    monkeypatch.setenv("K8S_AUTH_API_KEY", "from-awx-credential")
    result = ArgumentSpecValidator(tunnel.kubernetes_tunnel_argspec()).validate(
        {"kubernetes_tunnel": {"namespace": "db", "target": "service/postgres", "port": 5432}})
    assert result.error_messages == []
    options = result.validated_parameters["kubernetes_tunnel"]
    assert options["host"] == "https://k8s.example:6443" and options["api_key"] == "from-awx-credential"
    assert "from-awx-credential" in result._no_log_values  # pylint: disable=protected-access
    assert tunnel.kubernetes_tunnel({"kubernetes_tunnel": None}) is None


def test_inline_kubeconfig_secrets_inside_the_option_are_masked():
    params = {"kubernetes_tunnel": {"kubeconfig": {"users": [{"name": "u", "user": {"token": "sekrit-token"}}]}}}
    assert tunnel.tunnel_kubeconfig_secrets(params) == ["sekrit-token"]
    assert tunnel.tunnel_kubeconfig_secrets({}) == []
