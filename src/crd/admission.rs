//! Admission policies, built into the apiserver (no webhook to run).
//!
//! Validating: whether a SmartClient's fields suit the dialect of the auth server it refers to. CRD
//! schemas cannot look at other objects, so these are ValidatingAdmissionPolicies (since 1.30).
//!
//! Mutating: a new SmartClient gets the operator's cleanup finalizer at creation
//! (MutatingAdmissionPolicy, GA in 1.36), which spares the operator one write and one round trip per
//! client. The operator still adds the finalizer itself where the policy is absent (older clusters).
//!
//! Each policy takes the auth servers as parameters: a binding with an empty `paramRef.selector` makes
//! the apiserver evaluate the rules once per auth server (of the SmartClient's namespace for the
//! namespaced kind), and only the server the SmartClient names can fail them.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use serde_json::json;

use super::{ClusterSmartAuthServer, GROUP, SmartAuthServer, VERSION};
use kube::Resource;

/// A policy and the binding that activates it.
pub struct PolicyWithBinding {
    pub policy: ValidatingAdmissionPolicy,
    pub binding: ValidatingAdmissionPolicyBinding,
}

/// Every ValidatingAdmissionPolicy of this operator with its binding.
pub fn all_policies() -> Vec<PolicyWithBinding> {
    vec![
        dialect_policy(
            &SmartAuthServer::kind(&()),
            "smartclient-dialect.smart.fhir.dev",
        ),
        dialect_policy(
            &ClusterSmartAuthServer::kind(&()),
            "smartclient-cluster-dialect.smart.fhir.dev",
        ),
    ]
}

/// A mutating policy and the binding that activates it.
pub struct MutatingPolicyWithBinding {
    pub policy: MutatingAdmissionPolicy,
    pub binding: MutatingAdmissionPolicyBinding,
}

/// The finalizer the SmartClient controller relies on for cleanup (`controller::reconcile::FINALIZER`).
pub const CLEANUP_FINALIZER: &str = "smart.fhir.dev/cleanup";

/// Adds the cleanup finalizer to SmartClients as they are created. `Ignore` on failure: the operator
/// adds a missing finalizer before it registers anything, so the policy only saves work.
pub fn finalizer_policy() -> MutatingPolicyWithBinding {
    let name = "smartclient-finalizer.smart.fhir.dev";
    let labels = json!({ "app.kubernetes.io/part-of": "smart-operator" });
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": [GROUP],
                    "apiVersions": [VERSION],
                    "operations": ["CREATE"],
                    "resources": ["smartclients"],
                }],
            },
            "mutations": [{
                "patchType": "JSONPatch",
                "jsonPatch": {
                    "expression": format!(
                        "!has(object.metadata.finalizers) ? [JSONPatch{{op: 'add', path: '/metadata/finalizers', value: ['{CLEANUP_FINALIZER}']}}] : object.metadata.finalizers.exists(f, f == '{CLEANUP_FINALIZER}') ? [] : [JSONPatch{{op: 'add', path: '/metadata/finalizers/-', value: '{CLEANUP_FINALIZER}'}}]"
                    ),
                },
            }],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": { "name": name, "labels": labels },
        "spec": { "policyName": name },
    });
    MutatingPolicyWithBinding {
        policy: serde_json::from_value(policy).expect("policy literal matches the API type"),
        binding: serde_json::from_value(binding).expect("binding literal matches the API type"),
    }
}

fn dialect_policy(server_kind: &str, name: &str) -> PolicyWithBinding {
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": { "name": name, "labels": { "app.kubernetes.io/part-of": "smart-operator" } },
        "spec": {
            // Fail open: for about half a minute after an apiserver starts, a policy whose paramKind
            // is a CRD cannot be configured, and `Fail` would refuse every SmartClient write then,
            // finalizer removals included (measured: 29 s). The operator checks the same rules
            // itself and reports a violation as `Ready=False InvalidSpec`, so nothing wrong is
            // registered while the policy cannot judge.
            "failurePolicy": "Ignore",
            "paramKind": { "apiVersion": format!("{GROUP}/{VERSION}"), "kind": server_kind },
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": [GROUP],
                    "apiVersions": [VERSION],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["smartclients"],
                }],
            },
            // Only a changed spec is judged again: an object that became inconsistent because an auth
            // server was recreated must still let the operator remove its finalizer.
            "matchConditions": [{
                "name": "spec-changed",
                "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec",
            }],
            "variables": [{
                "name": "refersToThisServer",
                "expression": format!(
                    "object.spec.authServerRef.name == params.metadata.name && (has(object.spec.authServerRef.kind) ? object.spec.authServerRef.kind : 'SmartAuthServer') == '{server_kind}'"
                ),
            }],
            "validations": [
                {
                    "expression": "!variables.refersToThisServer || params.spec.dialect == 'S4SLegacy' || !has(object.spec.clientId)",
                    "messageExpression": format!("'spec.clientId: Forbidden: only S4SLegacy servers let the client choose its id; {server_kind} ' + params.metadata.name + ' speaks ' + params.spec.dialect"),
                    "reason": "Invalid",
                },
                {
                    "expression": "!variables.refersToThisServer || params.spec.dialect != 'RFC7591' || !has(object.spec.debugTokens) || size(object.spec.debugTokens) == 0",
                    "messageExpression": format!("'spec.debugTokens: Forbidden: debug tokens need the Sync-for-Science debug API (S4S or S4SLegacy); {server_kind} ' + params.metadata.name + ' speaks ' + params.spec.dialect"),
                    "reason": "Invalid",
                },
                {
                    "expression": "!variables.refersToThisServer || params.spec.dialect == 'RFC7591' || !has(object.spec.accessTokens) || size(object.spec.accessTokens) == 0",
                    "messageExpression": format!("'spec.accessTokens: Forbidden: client_credentials tokens come from RFC7591 servers (S4S dialects have debugTokens); {server_kind} ' + params.metadata.name + ' speaks ' + params.spec.dialect"),
                    "reason": "Invalid",
                },
                {
                    "expression": "!variables.refersToThisServer || params.spec.dialect == 'RFC7591' || !has(object.spec.signingKey)",
                    "messageExpression": format!("'spec.tokenEndpointAuthMethod: Forbidden: private_key_jwt registers a public key, which only RFC7591 servers take; {server_kind} ' + params.metadata.name + ' speaks ' + params.spec.dialect"),
                    "reason": "Invalid",
                },
            ],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": name, "labels": { "app.kubernetes.io/part-of": "smart-operator" } },
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            // No namespace: namespaced parameters are looked up in the SmartClient's own namespace.
            "paramRef": { "selector": {}, "parameterNotFoundAction": "Allow" },
        },
    });
    PolicyWithBinding {
        policy: serde_json::from_value(policy).expect("policy literal matches the API type"),
        binding: serde_json::from_value(binding).expect("binding literal matches the API type"),
    }
}
