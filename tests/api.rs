//! The API on a real kube-apiserver: CRDs install and are served, `kubectl explain` shows the docs, the
//! examples are accepted, and bad manifests are rejected at admission with a message naming the field.

mod common;

use common::*;
use serde_json::{Value, json};

const API_VERSION: &str = "smart.fhir.dev/v1alpha1";

#[tokio::test]
async fn crds_install_and_become_established() {
    let client = client().await;
    install_crds(&client).await;
    // Served under the short names and category users type.
    let (ok, out, err) = run_tool(
        "kubectl",
        &["api-resources", "--api-group=smart.fhir.dev", "-o", "wide"],
    );
    assert!(ok, "kubectl api-resources failed: {err}");
    for expected in [
        "smartclients",
        "smc",
        "smartauthservers",
        "smartauth",
        "clustersmartauthservers",
        "csmartauth",
        "smart",
    ] {
        assert!(
            out.contains(expected),
            "api-resources lacks {expected}:\n{out}"
        );
    }
}

#[tokio::test]
async fn kubectl_explain_shows_field_docs() {
    let client = client().await;
    install_crds(&client).await;
    // The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    let out = kubectl_eventually(&["explain", "smartclient.spec.scopes"]).await;
    assert!(
        out.contains("SMART scopes to request"),
        "explain output lacks the doc comment:\n{out}"
    );
    let out =
        kubectl_eventually(&["explain", "clustersmartauthserver.spec.allowedNamespaces"]).await;
    assert!(
        out.contains("AuthServerNotAllowed"),
        "explain output lacks the doc comment:\n{out}"
    );
}

/// Runs kubectl until it succeeds (30 s at most) and returns its stdout.
async fn kubectl_eventually(args: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (ok, out, err) = run_tool("kubectl", args);
        if ok {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl {args:?} kept failing: {err}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn every_example_is_accepted() {
    let client = client().await;
    install_crds(&client).await;
    let namespace = fresh_namespace(&client, "examples").await;
    let mut examples: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 4,
        "expected the examples/ manifests, found {examples:?}"
    );
    for path in examples {
        // Through kubectl, as a user would: strict field validation catches unknown or misspelled fields.
        let (ok, out, err) = run_tool(
            "kubectl",
            &[
                "apply",
                "--server-side",
                "--field-manager=examples",
                "-n",
                &namespace,
                "-f",
                path.to_str().unwrap(),
            ],
        );
        assert!(ok, "{} was rejected: {err}{out}", path.display());
    }
}

fn server(name: &str, dialect: &str) -> Value {
    let mut spec = json!({ "dialect": dialect, "fhirBaseUrl": "https://fhir.example.org/r4" });
    if dialect == "RFC7591" {
        spec["credentials"] =
            json!({ "initialAccessTokenSecretRef": { "name": "iat", "key": "token" } });
    }
    json!({ "apiVersion": API_VERSION, "kind": "SmartAuthServer", "metadata": { "name": name }, "spec": spec })
}

/// A valid SmartClient on the S4SLegacy server `legacy`, changed by `mutate`.
fn smart_client(name: &str, mutate: impl FnOnce(&mut Value)) -> Value {
    let mut client = json!({
        "apiVersion": API_VERSION,
        "kind": "SmartClient",
        "metadata": { "name": name },
        "spec": {
            "authServerRef": { "name": "legacy" },
            "clientName": "Test client",
            "redirectUris": ["https://app.example.org/callback"],
            "scopes": ["launch/patient", "patient/*.read", "offline_access"],
        },
    });
    mutate(&mut client["spec"]);
    client
}

/// A valid auth server spec changed by `mutate`.
fn auth_server(name: &str, mutate: impl FnOnce(&mut Value)) -> Value {
    let mut server = server(name, "S4S");
    mutate(&mut server["spec"]);
    server
}

/// A ClusterSmartAuthServer admitting the namespaces `selector` selects.
fn cluster_server(name: &str, selector: Value) -> Value {
    let mut server = server(name, "S4S");
    server["kind"] = json!("ClusterSmartAuthServer");
    server["spec"]["allowedNamespaces"] = selector;
    server
}

/// Distinct resource types, to build scope lists longer than the limit without duplicates.
const SCOPE_RESOURCES: &[&str] = &[
    "Patient",
    "Observation",
    "Encounter",
    "Condition",
    "Procedure",
    "MedicationRequest",
    "Immunization",
    "AllergyIntolerance",
    "DiagnosticReport",
    "DocumentReference",
    "CarePlan",
    "CareTeam",
    "Goal",
    "Device",
    "Location",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Provenance",
    "Coverage",
    "ServiceRequest",
    "Specimen",
    "QuestionnaireResponse",
    "RelatedPerson",
];

struct BadManifest {
    what: &'static str,
    object: Value,
    /// Substrings the apiserver's message must contain: the field path first.
    expect: &'static [&'static str],
}

fn bad_manifests() -> Vec<BadManifest> {
    let long = "x".repeat(300);
    let bad = |what, object, expect| BadManifest {
        what,
        object,
        expect,
    };
    vec![
        bad(
            "v1 scope with a misspelt permission",
            smart_client("b1", |s| s["scopes"] = json!(["patient/*.reed"])),
            &["spec.scopes[0]", "must be a SMART scope"],
        ),
        bad(
            "v2 permissions out of order",
            smart_client("b2", |s| {
                s["scopes"] = json!(["launch", "patient/Observation.rc"])
            }),
            &["spec.scopes[1]", "in that order"],
        ),
        bad(
            "v2 permission repeated",
            smart_client("b3", |s| s["scopes"] = json!(["patient/Observation.rrs"])),
            &["spec.scopes[0]", "in that order"],
        ),
        bad(
            "lower-case resource type",
            smart_client("b4", |s| s["scopes"] = json!(["patient/observation.read"])),
            &["spec.scopes[0]"],
        ),
        bad(
            "unknown scope context",
            smart_client("b5", |s| s["scopes"] = json!(["practitioner/*.read"])),
            &["spec.scopes[0]"],
        ),
        bad(
            "two scopes in one item",
            smart_client("b6", |s| s["scopes"] = json!(["patient/*.read launch"])),
            &["spec.scopes[0]"],
        ),
        bad(
            "unknown launch context",
            smart_client("b7", |s| s["scopes"] = json!(["launch/practitioner"])),
            &["spec.scopes[0]"],
        ),
        bad(
            "empty scope list",
            smart_client("b8", |s| s["scopes"] = json!([])),
            &["spec.scopes"],
        ),
        bad(
            "too many scopes",
            smart_client("b9", |s| {
                s["scopes"] = json!(
                    SCOPE_RESOURCES
                        .iter()
                        .cycle()
                        .take(65)
                        .enumerate()
                        .map(|(i, r)| format!(
                            "{}/{r}.read",
                            ["patient", "user", "system"][i / SCOPE_RESOURCES.len()]
                        ))
                        .collect::<Vec<_>>()
                )
            }),
            &["spec.scopes", "Too many"],
        ),
        bad(
            "scopes missing",
            smart_client("b10", |s| {
                s.as_object_mut().unwrap().remove("scopes");
            }),
            &["spec.scopes", "Required"],
        ),
        bad(
            "authServerRef missing",
            smart_client("b11", |s| {
                s.as_object_mut().unwrap().remove("authServerRef");
            }),
            &["spec.authServerRef", "Required"],
        ),
        bad(
            "unknown authServerRef kind",
            smart_client("b12", |s| s["authServerRef"]["kind"] = json!("Issuer")),
            &["spec.authServerRef.kind", "Unsupported value"],
        ),
        bad(
            "http redirect to a remote host",
            smart_client("b13", |s| {
                s["redirectUris"] = json!(["http://app.example.org/callback"])
            }),
            &["spec.redirectUris[0]", "https://"],
        ),
        bad(
            "relative redirect URI",
            smart_client("b14", |s| s["redirectUris"] = json!(["/callback"])),
            &["spec.redirectUris[0]"],
        ),
        bad(
            "redirect URI with a fragment",
            smart_client("b15", |s| {
                s["redirectUris"] = json!(["https://app.example.org/cb#x"])
            }),
            &["spec.redirectUris[0]", "fragment"],
        ),
        bad(
            "redirect URIs missing for authorization_code",
            smart_client("b16", |s| {
                s.as_object_mut().unwrap().remove("redirectUris");
            }),
            &["spec.redirectUris", "required"],
        ),
        bad(
            "too many redirect URIs",
            smart_client("b17", |s| {
                s["redirectUris"] = json!(
                    (0..33)
                        .map(|i| format!("https://app.example.org/{i}"))
                        .collect::<Vec<_>>()
                )
            }),
            &["spec.redirectUris", "Too many"],
        ),
        bad(
            "oversized client name",
            smart_client("b18", |s| s["clientName"] = json!(long)),
            &["spec.clientName", "Too long"],
        ),
        bad(
            "unknown grant type",
            smart_client("b19", |s| s["grantTypes"] = json!(["password"])),
            &["spec.grantTypes[0]", "Unsupported value"],
        ),
        bad(
            "public client with client_credentials",
            smart_client("b20", |s| {
                s["grantTypes"] = json!(["client_credentials"]);
                s["tokenEndpointAuthMethod"] = json!("none");
            }),
            &["spec.grantTypes", "public client"],
        ),
        bad(
            "unknown deletion policy",
            smart_client("b21", |s| s["deletionPolicy"] = json!("Destroy")),
            &["spec.deletionPolicy", "Unsupported value"],
        ),
        bad(
            "http logo",
            smart_client("b22", |s| {
                s["logoUri"] = json!("http://app.example.org/logo.png")
            }),
            &["spec.logoUri", "https://"],
        ),
        bad(
            "contact that is not an e-mail address",
            smart_client("b23", |s| s["contacts"] = json!(["platform team"])),
            &["spec.contacts[0]"],
        ),
        bad(
            "output key renamed onto another default key",
            smart_client("b24", |s| {
                s["secret"] = json!({"keys": {"client_secret": "client_id"}})
            }),
            &["spec.secret.keys", "same Secret key"],
        ),
        bad(
            "clientId with forbidden characters",
            smart_client("b25", |s| s["clientId"] = json!("my client")),
            &["spec.clientId"],
        ),
        bad(
            "unknown output key",
            smart_client("b26", |s| {
                s["secret"] = json!({"keys": {"password": "PASSWORD"}})
            }),
            &["spec.secret.keys.password", "unknown field"],
        ),
        bad(
            "two output keys renamed to one",
            smart_client("b27", |s| {
                s["secret"] = json!({"keys": {"client_id": "ID", "client_secret": "ID"}})
            }),
            &["spec.secret.keys", "same Secret key"],
        ),
        bad(
            "a namespace selector with an operator Kubernetes does not have",
            cluster_server(
                "api-bad-op",
                json!({"matchExpressions": [{"key": "team", "operator": "Like", "values": ["a"]}]}),
            ),
            &[
                "spec.allowedNamespaces.matchExpressions[0].operator",
                "Unsupported value",
            ],
        ),
        bad(
            "a namespace selector In without values",
            cluster_server(
                "api-bad-in",
                json!({"matchExpressions": [{"key": "team", "operator": "In"}]}),
            ),
            &["spec.allowedNamespaces.matchExpressions[0]", "need values"],
        ),
        bad(
            "a namespace selector Exists with values",
            cluster_server(
                "api-bad-exists",
                json!({"matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]}),
            ),
            &["spec.allowedNamespaces.matchExpressions[0]", "take none"],
        ),
        bad(
            "a namespace selector with an invalid label value",
            cluster_server(
                "api-bad-label",
                json!({"matchLabels": {"team": "not a label value"}}),
            ),
            &["spec.allowedNamespaces.matchLabels"],
        ),
        bad(
            "a renamed key that a debug token's keys would overwrite",
            smart_client("b27t", |s| {
                s["secret"] = json!({"keys": {"client_secret": "t_access_token"}});
                s["debugTokens"] = json!([{"name": "t", "user": "daniel-adams"}]);
            }),
            &["spec.debugTokens", "would overwrite another Secret key"],
        ),
        bad(
            "a debug token whose keys overwrite a default key",
            smart_client("b27r", |s| {
                s["debugTokens"] = json!([{"name": "registration", "user": "daniel-adams"}]);
            }),
            &["spec.debugTokens", "would overwrite another Secret key"],
        ),
        bad(
            "invalid Secret name",
            smart_client("b28", |s| s["secret"] = json!({"name": "My_Secret"})),
            &["spec.secret.name"],
        ),
        bad(
            "debug token refreshBefore not shorter than lifetime",
            smart_client(
                "b29",
                |s| {
                    s["debugTokens"] = json!([{"name": "t", "user": "u", "lifetime": "10m", "refreshBefore": "10m"}])
                },
            ),
            &["spec.debugTokens[0].refreshBefore"],
        ),
        bad(
            "debug token lifetime too short",
            smart_client("b30", |s| {
                s["debugTokens"] = json!([{"name": "t", "user": "u", "lifetime": "1s"}])
            }),
            &["spec.debugTokens[0].lifetime"],
        ),
        bad(
            "duplicate debug token names",
            smart_client("b31", |s| {
                s["debugTokens"] = json!([{"name": "t", "user": "u"}, {"name": "t", "user": "v"}])
            }),
            &["spec.debugTokens[1]", "Duplicate value"],
        ),
        bad(
            "too many debug tokens",
            smart_client("b32", |s| {
                s["debugTokens"] = json!(
                    (0..17)
                        .map(|i| json!({"name": format!("t{i}"), "user": "u"}))
                        .collect::<Vec<_>>()
                )
            }),
            &["spec.debugTokens", "Too many"],
        ),
        bad(
            "clientId with an RFC7591 server",
            smart_client("b33", |s| {
                s["authServerRef"] = json!({"name": "dcr"});
                s["clientId"] = json!("chosen");
            }),
            &["spec.clientId", "S4SLegacy"],
        ),
        bad(
            "debug tokens with an RFC7591 server",
            smart_client("b34", |s| {
                s["authServerRef"] = json!({"name": "dcr"});
                s["debugTokens"] = json!([{"name": "t", "user": "u"}]);
            }),
            &["spec.debugTokens", "debug API"],
        ),
        bad(
            "private_key_jwt with an S4SLegacy server",
            smart_client("b60", |s| {
                s["tokenEndpointAuthMethod"] = json!("private_key_jwt");
                s["signingKey"] = json!({"algorithm": "ES384"});
            }),
            &["spec.tokenEndpointAuthMethod", "only RFC7591"],
        ),
        bad(
            "private_key_jwt without a signingKey",
            smart_client("b61", |s| {
                s["authServerRef"] = json!({"name": "dcr"});
                s["tokenEndpointAuthMethod"] = json!("private_key_jwt");
            }),
            &["spec.signingKey", "private_key_jwt needs a signingKey"],
        ),
        bad(
            "a signingKey with a client secret",
            smart_client("b62", |s| {
                s["authServerRef"] = json!({"name": "dcr"});
                s["signingKey"] = json!({"algorithm": "RS384"});
            }),
            &[
                "spec.signingKey",
                "goes with tokenEndpointAuthMethod: private_key_jwt",
            ],
        ),
        bad(
            "a signing algorithm SMART does not name",
            smart_client("b63", |s| {
                s["authServerRef"] = json!({"name": "dcr"});
                s["tokenEndpointAuthMethod"] = json!("private_key_jwt");
                s["signingKey"] = json!({"algorithm": "HS256"});
            }),
            &["spec.signingKey.algorithm", "Unsupported value"],
        ),
        bad(
            "the private key renamed onto the client id",
            smart_client("b64", |s| {
                s["secret"] = json!({"keys": {"private_key": "client_id"}});
            }),
            &["spec.secret.keys", "same Secret key"],
        ),
        bad(
            "access tokens with an S4SLegacy server",
            smart_client("b65", |s| {
                s.as_object_mut().unwrap().remove("redirectUris");
                s["grantTypes"] = json!(["client_credentials"]);
                s["accessTokens"] = json!([{"name": "bulk"}]);
            }),
            &["spec.accessTokens", "RFC7591"],
        ),
        bad(
            "access tokens without the client_credentials grant",
            smart_client("b66", |s| {
                s["authServerRef"] = json!({"name": "dcr"});
                s["accessTokens"] = json!([{"name": "bulk"}]);
            }),
            &["spec.accessTokens", "add it to grantTypes"],
        ),
        bad(
            "an access token named like a debug token",
            smart_client("b67", |s| {
                s["grantTypes"] = json!(["authorization_code", "client_credentials"]);
                s["debugTokens"] = json!([{"name": "t", "user": "u"}]);
                s["accessTokens"] = json!([{"name": "t"}]);
            }),
            &["spec.accessTokens", "same name"],
        ),
        bad(
            "an access token whose keys overwrite a credential",
            smart_client("b68", |s| {
                s["authServerRef"] = json!({"name": "dcr"});
                s["grantTypes"] = json!(["authorization_code", "client_credentials"]);
                s["secret"] = json!({"keys": {"client_secret": "bulk_access_token"}});
                s["accessTokens"] = json!([{"name": "bulk"}]);
            }),
            &["spec.accessTokens", "would overwrite another Secret key"],
        ),
        bad(
            "a template key that is the client secret's",
            smart_client("b69", |s| {
                s["secret"] = json!({"template": {"client_secret": "{{ client_id }}"}});
            }),
            &["spec.secret.template", "would overwrite another Secret key"],
        ),
        bad(
            "a template key that is a debug token's",
            smart_client("b70", |s| {
                s["debugTokens"] = json!([{"name": "t", "user": "u"}]);
                s["secret"] = json!({"template": {"t_access_token": "x"}});
            }),
            &["spec.secret.template", "would overwrite another Secret key"],
        ),
        bad(
            "a template key that is a rotation's previous_ key",
            smart_client("b90", |s| {
                s["secret"] = json!({"template": {"previous_client_secret": "x"}});
            }),
            &["spec.secret.template", "previous_/next_ keys of a rotation"],
        ),
        bad(
            "rotation of a public client",
            smart_client("b91", |s| {
                s["tokenEndpointAuthMethod"] = json!("none");
                s["rotation"] = json!({"every": "720h"});
            }),
            &["spec.rotation", "rotation replaces a client secret"],
        ),
        bad(
            "rotation with a fixed S4SLegacy client id",
            smart_client("b93", |s| {
                s["clientId"] = json!("fixed-id");
                s["rotation"] = json!({});
            }),
            &["spec.rotation", "spec.clientId fixes the id"],
        ),
        bad(
            "a rotation overlap as long as its period",
            smart_client("b92", |s| {
                s["rotation"] = json!({"every": "1h", "overlap": "1h"});
            }),
            &[
                "spec.rotation.overlap",
                "overlap must be shorter than every",
            ],
        ),
        bad(
            "a kubernetes.io Secret type",
            smart_client("b71", |s| {
                s["secret"] = json!({"type": "kubernetes.io/basic-auth"});
            }),
            &["spec.secret.type", "kubernetes.io/ Secret types"],
        ),
        bad(
            "clientId with an RFC7591 cluster server",
            smart_client("b35", |s| {
                s["authServerRef"] =
                    json!({"kind": "ClusterSmartAuthServer", "name": "api-test-dcr"});
                s["clientId"] = json!("chosen");
            }),
            &["spec.clientId", "ClusterSmartAuthServer"],
        ),
        bad(
            "unknown dialect",
            auth_server("s1", |s| s["dialect"] = json!("OIDC")),
            &["spec.dialect", "Unsupported value"],
        ),
        bad(
            "http FHIR base URL of a remote host",
            auth_server("s2", |s| {
                s["fhirBaseUrl"] = json!("http://fhir.example.org/r4")
            }),
            &["spec.fhirBaseUrl", "https://"],
        ),
        bad(
            "initial access token for an S4S server",
            auth_server(
                "s3",
                |s| {
                    s["credentials"] =
                        json!({"initialAccessTokenSecretRef": {"name": "iat", "key": "token"}})
                },
            ),
            &["spec.credentials", "RFC7591"],
        ),
        bad(
            "neither discovery URL nor registration endpoint",
            auth_server("s4", |s| {
                s.as_object_mut().unwrap().remove("fhirBaseUrl");
            }),
            &["spec.fhirBaseUrl", "endpoints.registration"],
        ),
        bad(
            "two CA bundles",
            auth_server(
                "s5",
                |s| s["tls"] = json!({"caBundle": "pem", "caBundleSecretRef": {"name": "ca", "key": "ca.crt"}}),
            ),
            &["spec.tls", "at most one"],
        ),
        bad(
            "invalid endpoint override",
            auth_server("s6", |s| {
                s["endpoints"] = json!({"registration": "ftp://fhir.example.org/register"})
            }),
            &["spec.endpoints.registration"],
        ),
        bad(
            "dialect missing",
            auth_server("s7", |s| {
                s.as_object_mut().unwrap().remove("dialect");
            }),
            &["spec.dialect", "Required"],
        ),
    ]
}

struct BadUpdate {
    what: &'static str,
    object: Value,
    patch: Value,
    expect: &'static [&'static str],
}

fn bad_updates() -> Vec<BadUpdate> {
    vec![
        BadUpdate {
            what: "changed authServerRef",
            object: smart_client("u1", |_| {}),
            patch: json!({"spec": {"authServerRef": {"name": "other"}}}),
            expect: &["spec.authServerRef", "immutable"],
        },
        BadUpdate {
            what: "changed dialect",
            object: server("u2", "S4S"),
            patch: json!({"spec": {"dialect": "S4SLegacy"}}),
            expect: &["spec.dialect", "immutable"],
        },
        BadUpdate {
            what: "clientId added while on an RFC7591 server",
            object: smart_client("u3", |s| s["authServerRef"] = json!({"name": "dcr"})),
            patch: json!({"spec": {"clientId": "chosen"}}),
            expect: &["spec.clientId", "S4SLegacy"],
        },
        BadUpdate {
            what: "a Secret type set after the Secret exists",
            object: smart_client("u4", |_| {}),
            patch: json!({"spec": {"secret": {"type": "example.org/smart"}}}),
            expect: &["spec.secret.type", "immutable"],
        },
    ]
}

fn rejection_message(
    result: Result<kube::api::DynamicObject, kube::Error>,
) -> Result<String, String> {
    match result {
        Err(kube::Error::Api(status))
            if status.code == 422 || status.code == 403 || status.code == 400 =>
        {
            Ok(status.message)
        }
        Err(other) => Err(format!("failed for another reason: {other}")),
        Ok(_) => Err("was accepted".to_owned()),
    }
}

fn check_message(what: &str, message: &str, expect: &[&str], failures: &mut Vec<String>) {
    for needle in expect {
        if !message.contains(needle) {
            failures.push(format!("{what}: message lacks {needle:?}: {message}"));
        }
    }
}

#[tokio::test]
async fn bad_manifests_are_rejected_with_a_message_naming_the_field() {
    let client = client().await;
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "bad-manifests").await;
    let ns = Some(ns.as_str());
    apply(&client, ns, server("legacy", "S4SLegacy"))
        .await
        .unwrap();
    apply(&client, ns, server("dcr", "RFC7591")).await.unwrap();
    let mut cluster_dcr = server("api-test-dcr", "RFC7591");
    cluster_dcr["kind"] = json!("ClusterSmartAuthServer");
    apply(&client, None, cluster_dcr).await.unwrap();
    wait_for_dialect_policies(&client, ns).await;

    let cases = bad_manifests();
    assert!(
        cases.len() >= 25,
        "the table must cover at least 25 bad manifests"
    );
    let mut failures = Vec::new();
    for case in cases {
        match rejection_message(create(&client, ns, case.object.clone()).await) {
            Ok(message) => check_message(case.what, &message, case.expect, &mut failures),
            Err(problem) => failures.push(format!("{}: {problem}", case.what)),
        }
    }
    for case in bad_updates() {
        apply(&client, ns, case.object.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("{}: the valid starting object was rejected: {e}", case.what)
            });
        match rejection_message(merge_patch(&client, ns, &case.object, case.patch).await) {
            Ok(message) => check_message(case.what, &message, case.expect, &mut failures),
            Err(problem) => failures.push(format!("{}: {problem}", case.what)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad manifests were not rejected as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// ValidatingAdmissionPolicies take effect a moment after they are created; wait until the dialect rule
/// rejects a known-bad probe so the table below measures the rules, not the start-up race.
async fn wait_for_dialect_policies(client: &kube::Client, ns: Option<&str>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for attempt in 0.. {
        // A new name each time: a probe that got through carries the cleanup finalizer (no operator
        // runs here to remove it), so it stays.
        let name = format!("policy-probe-{attempt}");
        let probe = smart_client(&name, |s| {
            s["authServerRef"] = json!({"name": "dcr"});
            s["clientId"] = json!("probe");
        });
        match create(client, ns, probe.clone()).await {
            Err(kube::Error::Api(status)) if status.message.contains("spec.clientId") => return,
            Err(other) => panic!("probe failed for another reason: {other}"),
            Ok(_) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dialect admission policy never took effect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn new_smart_clients_get_the_cleanup_finalizer_at_admission() {
    let client = client().await;
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "finalizer-policy").await;
    let ns = Some(ns.as_str());
    let finalizers = |object: &kube::api::DynamicObject| -> Vec<String> {
        object.metadata.finalizers.clone().unwrap_or_default()
    };
    // The policy takes effect a moment after it is created.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for attempt in 0.. {
        let created = create(
            &client,
            ns,
            smart_client(&format!("probe-{attempt}"), |_| {}),
        )
        .await
        .unwrap();
        if finalizers(&created) == ["smart.fhir.dev/cleanup"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the finalizer policy never took effect: {:?}",
            finalizers(&created)
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // Someone else's finalizer stays, and the policy's comes after it, once.
    let mut other = smart_client("with-other", |_| {});
    other["metadata"]["finalizers"] = json!(["example.com/keep"]);
    let created = create(&client, ns, other).await.unwrap();
    assert_eq!(
        finalizers(&created),
        ["example.com/keep", "smart.fhir.dev/cleanup"]
    );
    let mut both = smart_client("with-both", |_| {});
    both["metadata"]["finalizers"] = json!(["smart.fhir.dev/cleanup"]);
    let created = create(&client, ns, both).await.unwrap();
    assert_eq!(finalizers(&created), ["smart.fhir.dev/cleanup"]);
    // Only creation is mutated: a finalizer removed later is the operator's business.
    let api = api_for(
        &client,
        &kube::core::GroupVersionKind::gvk("smart.fhir.dev", "v1alpha1", "SmartClient"),
        ns,
    )
    .await;
    let patched = api
        .patch(
            "with-both",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert!(patched.metadata.finalizers.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn valid_edge_cases_are_accepted() {
    let client = client().await;
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "good-manifests").await;
    let ns = Some(ns.as_str());
    apply(&client, ns, server("legacy", "S4SLegacy"))
        .await
        .unwrap();
    let good = [
        smart_client("g1", |s| {
            s["scopes"] = json!([
                "patient/Observation.cruds",
                "user/*.rs",
                "system/Patient.r",
                "patient/*.*",
                "user/Encounter.write"
            ])
        }),
        smart_client("g2", |s| {
            s["scopes"] = json!([
                "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
            ])
        }),
        smart_client("g3", |s| {
            s["redirectUris"] = json!([
                "http://localhost:8080/cb",
                "http://127.0.0.1/cb",
                "http://[::1]:9000/cb"
            ])
        }),
        smart_client("g4", |s| {
            s.as_object_mut().unwrap().remove("redirectUris");
            s["grantTypes"] = json!(["client_credentials"]);
        }),
        smart_client("g5", |s| s["clientId"] = json!("chosen-by-me_1.0~x")),
        smart_client(
            "g6",
            |s| {
                s["debugTokens"] =
                    json!([{"name": "short", "user": "u", "lifetime": "3s", "refreshBefore": "1s"}])
            },
        ),
        smart_client(
            "g7",
            |s| s["secret"] = json!({"keys": {"client_id": "client_secret", "client_secret": "OAUTH_CLIENT_SECRET"}}),
        ),
    ];
    for object in good {
        let name = object["metadata"]["name"].clone();
        create(&client, ns, object)
            .await
            .unwrap_or_else(|e| panic!("{name} was rejected: {e}"));
    }
}
