//! `SmartAuthServer` (namespaced) and `ClusterSmartAuthServer` (cluster-scoped): where SmartClients are
//! registered. Only whoever may create these decides where the operator sends credentials; an app team
//! writing a SmartClient can only pick one by name (the cert-manager Issuer/ClusterIssuer model).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;
use super::schema::ServerUrl;

/// The protocol an auth server speaks for client registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Dialect {
    /// OAuth 2.0 Dynamic Client Registration (RFC 7591) with management (RFC 7592): Kodjin, Keycloak
    /// and most modern servers. The server assigns the client id and secret.
    #[serde(rename = "RFC7591")]
    Rfc7591,
    /// The Sync-for-Science auth proxy as it runs today: JSON registration, server-assigned ids, no
    /// update or delete.
    #[serde(rename = "S4S")]
    S4s,
    /// The Sync-for-Science "SMART Example Server": form-encoded registration with a caller-chosen
    /// client id and secret, no update or delete.
    #[serde(rename = "S4SLegacy")]
    S4sLegacy,
}

impl Dialect {
    /// Whether clients can be changed in place (RFC 7592 PUT) and deleted (RFC 7592 DELETE).
    pub fn manages_clients(self) -> bool {
        matches!(self, Dialect::Rfc7591)
    }

    /// Whether the server picks the client id (and secret) of a registration; S4SLegacy takes the
    /// caller's.
    pub fn server_chooses_client_id(self) -> bool {
        !matches!(self, Dialect::S4sLegacy)
    }

    /// Whether the server has the Sync-for-Science debug-token API.
    pub fn mints_debug_tokens(self) -> bool {
        matches!(self, Dialect::S4s | Dialect::S4sLegacy)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Rfc7591 => "RFC7591",
            Dialect::S4s => "S4S",
            Dialect::S4sLegacy => "S4SLegacy",
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an auth server lives and how the operator authenticates to it. Shared by SmartAuthServer and
/// ClusterSmartAuthServer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.dialect == 'RFC7591' || !has(self.credentials)")
    .message("credentials (an initial access token) are only used by the RFC7591 dialect")
    .field_path(".credentials")
    .reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("has(self.fhirBaseUrl) || (has(self.endpoints) && has(self.endpoints.registration))")
    .message("set fhirBaseUrl (for discovery) or endpoints.registration")
    .field_path(".fhirBaseUrl")
    .reason(Reason::FieldValueRequired))]
pub struct AuthServerSpec {
    /// Registration protocol of the server: `RFC7591` (Kodjin, Keycloak, any OAuth dynamic client
    /// registration server), `S4S` (the Sync-for-Science auth proxy) or `S4SLegacy` (the Sync-for-Science
    /// "SMART Example Server" with caller-chosen client ids). Immutable: clients registered under one
    /// dialect cannot be managed under another.
    #[x_kube(validation = Rule::new("self == oldSelf").message("dialect is immutable: create a new auth server resource instead"))]
    pub dialect: Dialect,

    /// Base URL of the FHIR server, the root of discovery. For RFC7591 the operator reads
    /// `{fhirBaseUrl}/.well-known/smart-configuration` and the issuer's
    /// `/.well-known/openid-configuration`; for S4S dialects the CapabilityStatement at
    /// `{fhirBaseUrl}/metadata` (extension `oauth-uris`). Optional when `endpoints.registration` is set.
    /// Must be https (http only for localhost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_base_url: Option<ServerUrl>,

    /// Overrides of discovered endpoints, for servers whose discovery documents are missing or wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointOverrides>,

    /// How the operator authenticates registrations. RFC7591 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<AuthServerCredentials>,

    /// TLS settings for talking to the server. Certificate verification is always on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// Endpoint URLs that replace what discovery found. Each must be https (http only for localhost).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointOverrides {
    /// Client registration endpoint (RFC 7591 `registration_endpoint`, S4S `/oauth/register`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<ServerUrl>,
    /// OAuth token endpoint; written to the client's Secret as `token_endpoint` and used by the S4S
    /// "does this client still exist" probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<ServerUrl>,
    /// Sync-for-Science debug token endpoint (`/oauth/debug/token`). S4S dialects only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_token: Option<ServerUrl>,
    /// Sync-for-Science debug introspection endpoint (`/oauth/debug/introspect`). S4S dialects only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_introspect: Option<ServerUrl>,
    /// Hosts that discovered endpoints may be on besides the host of `fhirBaseUrl`, for servers whose
    /// authorization server runs elsewhere (e.g. `auth.example.org`, or `*.example.org` for any
    /// subdomain). A discovered endpoint on any other host, or over http to anything but localhost,
    /// is refused: the discovery document must not decide where the initial access token and client
    /// secrets are sent. Endpoints set here in `endpoints` are the admin's choice and exempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub allowed_hosts: Option<Vec<AllowedHost>>,
}

/// A host name, or `*.` and a domain for every host below it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct AllowedHost(
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        )
    )]
    pub String,
);

/// Credentials the operator presents to the auth server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthServerCredentials {
    /// Secret key holding the RFC 7591 initial access token, sent as `Authorization: Bearer` on
    /// registration. When it expires or is used up, registrations fail with reason
    /// `InitialAccessTokenRejected` until the Secret is updated.
    pub initial_access_token_secret_ref: SecretKeyRef,
}

/// Trust settings for the auth server's certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.caBundle) && has(self.caBundleSecretRef))")
    .message("set at most one of caBundle and caBundleSecretRef")
    .reason(Reason::FieldValueForbidden))]
pub struct TlsConfig {
    /// PEM bundle of CA certificates to trust instead of the system roots, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub ca_bundle: Option<String>,
    /// Secret key holding a PEM bundle of CA certificates to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeyRef>,
}

/// An auth server that SmartClients in the same namespace can use.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "smart.fhir.dev",
    version = "v1alpha1",
    kind = "SmartAuthServer",
    namespaced,
    status = "AuthServerStatus",
    shortname = "smartauth",
    category = "smart",
    doc = "An OAuth authorization server that SmartClients of this namespace can be registered with.",
    printcolumn(name = "Dialect", type_ = "string", json_path = ".spec.dialect"),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.fhirBaseUrl"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SmartAuthServerSpec {
    #[serde(flatten)]
    pub server: AuthServerSpec,
}

/// An auth server that SmartClients of the namespaces admitted by `allowedNamespaces` can use.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "smart.fhir.dev",
    version = "v1alpha1",
    kind = "ClusterSmartAuthServer",
    status = "AuthServerStatus",
    shortname = "csmartauth",
    category = "smart",
    doc = "A cluster-wide OAuth authorization server that SmartClients of the namespaces it admits can be registered with.",
    printcolumn(name = "Dialect", type_ = "string", json_path = ".spec.dialect"),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.fhirBaseUrl"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSmartAuthServerSpec {
    #[serde(flatten)]
    pub server: AuthServerSpec,

    /// Label selector over namespaces whose SmartClients may use this server. Absent: no namespace may
    /// (the safe default); `{}`: every namespace. A SmartClient in a namespace it does not admit gets
    /// `Ready=False` with reason `AuthServerNotAllowed` and no request is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "namespace_selector_schema")]
    pub allowed_namespaces: Option<LabelSelector>,
}

/// A label selector as Kubernetes evaluates it, checked at admission: an operator or value the
/// apiserver would accept in a plain LabelSelector field but no namespace could ever match (`Like`,
/// `In` without values) admitted nothing, silently, and every client reported `AuthServerNotAllowed`.
fn namespace_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "Label selector over namespaces whose SmartClients may use this server. Absent: no namespace may (the safe default); `{}`: every namespace. A SmartClient in a namespace it does not admit gets `Ready=False` with reason `AuthServerNotAllowed` and no request is sent.",
        "properties": {
            "matchLabels": {
                "type": "object",
                "maxProperties": 32,
                "additionalProperties": { "type": "string", "maxLength": 63 },
                "x-kubernetes-validations": [{
                    "rule": "self.all(k, !format.qualifiedName().validate(k).hasValue() && !format.labelValue().validate(self[k]).hasValue())",
                    "message": "keys are label keys ([prefix/]name) and values label values (at most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric)",
                }],
            },
            "matchExpressions": {
                "type": "array",
                "maxItems": 16,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": { "type": "string", "maxLength": 317 },
                        "operator": { "type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"] },
                        "values": {
                            "type": "array",
                            "maxItems": 64,
                            "items": { "type": "string", "maxLength": 63 },
                        },
                    },
                    "x-kubernetes-validations": [{
                        "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",
                        "message": "In and NotIn need values; Exists and DoesNotExist take none",
                    }],
                },
            },
        },
    })
}

/// Observed state of an auth server. Never holds secret values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
// An object the operator has not written status for yet reads as generation 0 observed, so kstatus
// (Flux `wait: true`, Helm 4 `--wait`, kpt) says InProgress instead of counting it Current.
#[schemars(extend("default" = {"observedGeneration": 0}))]
pub struct AuthServerStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` tells whether discovery succeeded and SmartClients can be registered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Endpoints in use, after discovery and overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovered: Option<DiscoveredEndpoints>,
    /// What the operator can do with this server: `register`, `read`, `update`, `delete`, `debugToken`,
    /// `introspect`, `existenceProbe`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Scopes the server advertises (`scopes_supported` of its discovery document).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    /// SMART capabilities the server advertises (`capabilities` of its smart-configuration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub smart_capabilities: Vec<String>,
    /// Client authentication its token endpoint takes (`token_endpoint_auth_methods_supported`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// Algorithms of client assertions it takes (`token_endpoint_auth_signing_alg_values_supported`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// Grant types it supports (`grant_types_supported`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_types_supported: Vec<String>,
}

/// Endpoints in use for an auth server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredEndpoints {
    /// OAuth issuer identifier, when the server publishes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Client registration endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    /// Token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Authorization endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
    /// Debug token endpoint (S4S dialects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_token: Option<String>,
    /// Debug introspection endpoint (S4S dialects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_introspect: Option<String>,
}
