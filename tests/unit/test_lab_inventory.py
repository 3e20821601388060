"""The lab inventory describes the three platforms the runbooks name, and the lab builds exactly that."""

from __future__ import annotations

from tests.harness import platforms


def by_name(items):
    return {item["name"]: item for item in items}


def test_one_host_per_platform_with_its_namespace():
    loaded = platforms.load()
    assert sorted(loaded) == ["hungryhippaahneties", "personapass", "rust-security"]
    for name, platform in loaded.items():
        assert platform["platform_name"] == name == platform["platform_namespace"]
        for key in ("platform_workloads", "platform_services", "platform_databases", "platform_redis",
                    "platform_secrets", "platform_certificates", "platform_repository_set", "platform_retention"):
            assert key in platform, (name, key)


def test_rust_security_shape():
    p = platforms.load()["rust-security"]
    workloads = {w["name"]: (w["kind"], w["replicas"], w["app"]) for w in p["platform_workloads"]}
    assert workloads == {"auth-service": ("Deployment", 3, "auth-service"),
                         "policy-service": ("Deployment", 3, "policy-service"),
                         "redis-master": ("StatefulSet", 1, "redis"), "postgres": ("StatefulSet", 1, "postgres")}
    redis = by_name(p["platform_workloads"])["redis-master"]
    assert platforms.claim_names(redis) == ["redis-data-redis-master-0"]
    assert p["platform_redis"][0]["pod"] == "redis-master-0"
    assert set(by_name(p["platform_services"])) == {"auth-service", "policy-service", "redis", "postgres"}
    assert [i["name"] for i in p["platform_ingresses"]] == ["auth-service-ingress"]
    assert [c["name"] for c in p["platform_certificates"]] == ["auth-service-tls"]
    assert [c["name"] for c in p["platform_configmaps"]] == ["policy-service-policies"]
    assert set(by_name(p["platform_secrets"])) == {"auth-service-config", p["platform_jwt_secret"]}
    assert p["platform_databases"][0]["name"] == p["platform_databases"][0]["owner"] == "auth_service"


def test_hipaa_platform_shape():
    p = platforms.load()["hungryhippaahneties"]
    workloads = {w["name"]: (w["kind"], w["replicas"]) for w in p["platform_workloads"]}
    for app in ("api", "backend", "frontend", "nginx-proxy", "modsecurity-waf"):
        assert workloads[app] == ("Deployment", 2)
    assert workloads["postgresql"] == ("StatefulSet", 1) and workloads["redis"] == ("StatefulSet", 1)
    assert platforms.claim_names(by_name(p["platform_workloads"])["postgresql"]) == ["data-postgresql-0"]
    redis = p["platform_redis"][0]
    assert redis["pod"] == "redis-0" and redis["tls"] is True and redis["bgsave_command"] == "HIPAA_BGSAVE_i9j0k1l2"
    assert p["platform_hpas"] == [{"name": "api-hpa", "target": "api", "min": 2, "max": 10}]
    assert [c["name"] for c in p["platform_certificates"]] == ["hungryhippaahneties-tls"]
    assert [s["name"] for s in p["platform_secrets"]] == ["db-credentials"]
    db = p["platform_databases"][0]
    assert (db["name"], db["owner"]) == ("hungryhippaahneties_db", "hipaa_app_user")


def test_personapass_shape():
    p = platforms.load()["personapass"]
    workloads = {w["name"]: (w["kind"], w["replicas"]) for w in p["platform_workloads"]}
    assert workloads == {"personapass-api": ("Deployment", 3), "personapass-web": ("Deployment", 2),
                         "postgres": ("Deployment", 1), "redis": ("Deployment", 1)}
    secrets = by_name(p["platform_secrets"])
    assert secrets["personapass-secrets"]["keys"] == ["JWT_SECRET"] and "postgres-secrets" in secrets
    assert [c["name"] for c in p["platform_certificates"]] == ["personapass-tls"]
    assert p["platform_hpas"] == [{"name": "personapass-api-hpa", "target": "personapass-api", "min": 3, "max": 20}]
    assert len(p["platform_cronjobs"]) == 1
    assert p["platform_databases"][0]["tables"] == ["users", "user_sessions", "audit_logs", "api_keys", "credentials",
                                                    "presentations", "verification_requests"]


def test_workload_bodies_label_every_object_with_its_app():
    for platform in platforms.load().values():
        ns = platform["platform_namespace"]
        for workload in platform["platform_workloads"]:
            plural, body = platforms.workload_body(ns, workload)
            assert plural == workload["kind"].lower() + "s"
            assert body["metadata"]["labels"] == {"app": workload["app"]}
            assert body["spec"]["template"]["metadata"]["labels"] == {"app": workload["app"]}
            assert body["spec"]["replicas"] == workload["replicas"]
        for svc in platform["platform_services"]:
            assert platforms.service_body(ns, svc)["spec"]["selector"] == {"app": svc["app"]}
