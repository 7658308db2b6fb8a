//! The API of smart-operator: the `smart.fhir.dev/v1alpha1` custom resources.
//!
//! Types only. Validation that the apiserver can do on its own (patterns, bounds, CEL rules) lives in the
//! schemas generated from these types; validation that needs a second object (the auth server's dialect)
//! lives in the ValidatingAdmissionPolicies of [`admission`].

// kube's `printcolumn(...)` attributes repeat `type_ = "string"`, which this lint mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod admission;
mod auth_server;
pub mod schema;
mod smart_client;

pub use auth_server::{
    AllowedHost, AuthServerCredentials, AuthServerSpec, AuthServerStatus, ClusterSmartAuthServer,
    ClusterSmartAuthServerSpec, Dialect, DiscoveredEndpoints, EndpointOverrides, SmartAuthServer,
    TlsConfig,
};
pub use smart_client::{
    AccessToken, AdoptSpec, AuthServerKind, AuthServerRef, DEFAULT_SECRET_KEYS, DebugToken,
    DebugTokenStatus, DeletionPolicy, GrantType, OrphanedClient, PreviousClientStatus,
    RESERVED_METADATA_FIELDS, RetryStatus, RotationSpec, SecretKeys, SecretSpec, SigningKeySpec,
    SigningKeyStatus, SmartClient, SmartClientSpec, SmartClientStatus, TokenEndpointAuthMethod,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every resource of this operator.
pub const GROUP: &str = "smart.fhir.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Condition types this operator publishes (metav1 conditions, `status.conditions[].type`).
pub mod condition {
    pub const READY: &str = "Ready";
    pub const REGISTERED: &str = "Registered";
    pub const SECRET_SYNCED: &str = "SecretSynced";
    pub const TOKENS_FRESH: &str = "TokensFresh";
    /// False (reason `ScopesNarrowed`) when the server granted fewer scopes than requested.
    pub const SCOPES_GRANTED: &str = "ScopesGranted";
    /// Present where the server gives the client secret an expiry: False (reason
    /// `ClientSecretExpired`) once it is past.
    pub const CLIENT_SECRET_VALID: &str = "ClientSecretValid";
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
    /// True while the annotation `smart.fhir.dev/paused` is "true"; absent otherwise.
    pub const PAUSED: &str = "Paused";
    /// kstatus (Flux, Helm 4 `--wait`, kpt, Argo CD): True while work is under way.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: True when only a person can fix what is wrong.
    pub const STALLED: &str = "Stalled";
}

/// Every CustomResourceDefinition of this operator, in the order they should be applied.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        SmartAuthServer::crd(),
        ClusterSmartAuthServer::crd(),
        SmartClient::crd(),
    ]
}

/// A key of a Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret. For a SmartAuthServer it is read from the server's own namespace; for a
    /// ClusterSmartAuthServer from the namespace the operator runs in (never from an app's namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's `data`.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}
