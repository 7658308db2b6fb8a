//! `SmartClient`: one OAuth client registered on one auth server, its credentials kept in a Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{EmailAddress, HttpsUrl, RedirectUri, SmartScope};

/// Keys the operator writes to a client's Secret, before any renaming by `spec.secret.keys`.
pub const DEFAULT_SECRET_KEYS: &[&str] = &[
    "client_id",
    "client_secret",
    "registration_access_token",
    "registration_client_uri",
    "token_endpoint",
    "fhir_base_url",
    "scope",
    "private_key",
    "key_id",
    "issuer",
    "authorization_endpoint",
];

/// Registration metadata that the operator manages itself and that `extraMetadata` may not set.
pub const RESERVED_METADATA_FIELDS: &[&str] = &[
    "client_id",
    "client_secret",
    "client_id_issued_at",
    "client_secret_expires_at",
    "registration_access_token",
    "registration_client_uri",
    "client_name",
    "redirect_uris",
    "scope",
    "grant_types",
    "response_types",
    "token_endpoint_auth_method",
    "logo_uri",
    "contacts",
    // Set from spec.signingKey for private_key_jwt clients.
    "jwks",
    "token_endpoint_auth_signing_alg",
];

/// An OAuth client registered with a SMART auth server. The operator registers it, keeps its
/// credentials in a Secret of this namespace, follows spec changes and cleans up on deletion.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "smart.fhir.dev",
    version = "v1alpha1",
    kind = "SmartClient",
    namespaced,
    status = "SmartClientStatus",
    shortname = "smc",
    category = "smart",
    doc = "An OAuth client registered with a SMART on FHIR auth server; credentials are kept in a Secret.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Server",
        type_ = "string",
        json_path = ".spec.authServerRef.name"
    ),
    printcolumn(name = "Client ID", type_ = "string", json_path = ".status.clientId"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.redirectUris) || (has(self.grantTypes) && !self.grantTypes.exists(g, g in ['authorization_code', 'implicit']))")
    .message("redirectUris is required unless grantTypes leaves out authorization_code and implicit")
    .field_path(".redirectUris")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!(has(self.tokenEndpointAuthMethod) && self.tokenEndpointAuthMethod == 'none' && has(self.grantTypes) && 'client_credentials' in self.grantTypes)")
    .message("a public client (tokenEndpointAuthMethod: none) cannot use the client_credentials grant")
    .field_path(".grantTypes")
    .reason(Reason::FieldValueForbidden))]
#[x_kube(validation = Rule::new("!has(self.grantTypes) || !('refresh_token' in self.grantTypes) || self.grantTypes.exists(g, g in ['authorization_code', 'implicit'])")
    .message("the refresh_token grant needs authorization_code (refresh tokens come from authorizations)")
    .field_path(".grantTypes")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("has(self.signingKey) == (has(self.tokenEndpointAuthMethod) && self.tokenEndpointAuthMethod == 'private_key_jwt')")
    .message("signingKey goes with tokenEndpointAuthMethod: private_key_jwt, and private_key_jwt needs a signingKey (e.g. signingKey: {algorithm: ES384})")
    .field_path(".signingKey")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.accessTokens) || size(self.accessTokens) == 0 || (has(self.grantTypes) && 'client_credentials' in self.grantTypes)")
    .message("accessTokens are obtained with the client_credentials grant: add it to grantTypes")
    .field_path(".accessTokens")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.accessTokens) || !has(self.debugTokens) || self.accessTokens.all(a, !self.debugTokens.exists(d, d.name == a.name))")
    .message("an access token and a debug token have the same name: their Secret keys would collide")
    .field_path(".accessTokens")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new(access_token_keys_collision_rule())
    .message("an access token's keys (<name>_access_token, <name>_expires_at) would overwrite another Secret key (client_id, client_secret, ... or their names in secret.keys): rename the token or the key")
    .field_path(".accessTokens")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("(has(self.secret) && has(self.secret.type) ? self.secret.type : 'Opaque') == (has(oldSelf.secret) && has(oldSelf.secret.type) ? oldSelf.secret.type : 'Opaque')")
    .message("secret.type is immutable, as a Secret's type is: create a new SmartClient for another type")
    .field_path(".secret.type")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new(template_keys_collision_rule())
    .message("a template key would overwrite another Secret key (client_id, client_secret, ... or their names in secret.keys, a token's keys, or the previous_/next_ keys of a rotation): name it otherwise")
    .field_path(".secret.template")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new(token_keys_collision_rule())
    .message("a debug token's keys (<name>_access_token, <name>_refresh_token, <name>_expires_at) would overwrite another Secret key (client_id, client_secret, registration_access_token, ... or their names in secret.keys): rename the token or the key")
    .field_path(".debugTokens")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.rotation) || !has(self.tokenEndpointAuthMethod) || self.tokenEndpointAuthMethod in ['client_secret_basic', 'client_secret_post']")
    .message("rotation replaces a client secret: it goes with tokenEndpointAuthMethod client_secret_basic or client_secret_post (a private_key_jwt client rotates its key with signingKey.rotateEvery)")
    .field_path(".rotation")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.rotation) || !has(self.clientId)")
    .message("rotation registers a replacement client under a new id; spec.clientId fixes the id: leave one of them out")
    .field_path(".rotation")
    .reason(Reason::FieldValueInvalid))]
pub struct SmartClientSpec {
    /// The auth server to register with: a SmartAuthServer of this namespace or a
    /// ClusterSmartAuthServer that admits this namespace. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("authServerRef is immutable: create a new SmartClient to register with another auth server"))]
    pub auth_server_ref: AuthServerRef,

    /// Human-readable client name shown on consent screens (`client_name`). Defaults to
    /// `<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub client_name: Option<String>,

    /// Where the auth server may send users back after authorization. https only; http is allowed for
    /// localhost, 127.0.0.1 and [::1]. Required unless `grantTypes` leaves out `authorization_code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub redirect_uris: Option<Vec<RedirectUri>>,

    /// SMART scopes to request, e.g. `launch/patient`, `patient/*.read` (v1) or
    /// `patient/Observation.rs?category=laboratory` (v2), `openid`, `fhirUser`, `offline_access`.
    /// The server may grant fewer; `status.grantedScopes` shows what it granted.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub scopes: Vec<SmartScope>,

    /// OAuth grant types (`grant_types`). Default: `authorization_code` and `refresh_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub grant_types: Option<Vec<GrantType>>,

    /// OAuth response types (`response_types`). Default: `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub response_types: Option<Vec<ResponseType>>,

    /// How the client authenticates at the token endpoint (`token_endpoint_auth_method`). Default:
    /// `client_secret_basic`. `none` registers a public client without a secret. `private_key_jwt`
    /// (RFC7591 servers only) registers the public key of `signingKey` instead of getting a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,

    /// The key pair of a `private_key_jwt` client (SMART's client-confidential-asymmetric profile,
    /// required by SMART Backend Services). The operator generates it, writes the private key
    /// (PKCS#8 PEM) and its key id (RFC 7638 thumbprint) to the Secret as `private_key` and `key_id`
    /// before registering, and registers the public key inline as the client's `jwks`. Required with
    /// `tokenEndpointAuthMethod: private_key_jwt`, refused with any other method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<SigningKeySpec>,

    /// URL of the client's logo (`logo_uri`), https only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_uri: Option<HttpsUrl>,

    /// E-mail addresses of people responsible for the client (`contacts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub contacts: Option<Vec<EmailAddress>>,

    /// Further client metadata sent as-is to RFC7591 servers (e.g. `software_id`, `jwks_uri`,
    /// `policy_uri`). Fields the operator manages itself (`client_id`, `redirect_uris`, `scope`, ...) are
    /// refused with `Ready=False` reason `InvalidSpec`: use the typed fields instead. Ignored by S4S
    /// dialects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "extra_metadata_schema")]
    pub extra_metadata: Option<BTreeMap<String, serde_json::Value>>,

    /// Client id to register with, for `S4SLegacy` servers only (they let the caller choose it; other
    /// dialects assign ids themselves and a ValidatingAdmissionPolicy rejects this field there).
    /// Default: derived from the namespace, name and UID. Changing it registers a new client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._~-]+$"))]
    pub client_id: Option<String>,

    /// The Secret the credentials are written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretSpec>,

    /// Access tokens to mint for test users through the Sync-for-Science debug API (S4S dialects only),
    /// written to the client's Secret as `<name>_access_token`, `<name>_refresh_token` and
    /// `<name>_expires_at`, and re-minted before they expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub debug_tokens: Option<Vec<DebugToken>>,

    /// Access tokens the operator obtains for the client itself with the client_credentials grant
    /// (RFC7591 servers; the client's grantTypes must include client_credentials), authenticating
    /// with a fresh client assertion (private_key_jwt) or its secret, written to the Secret as
    /// `<name>_access_token` and `<name>_expires_at`, and obtained again before they expire. Names
    /// are shared with `debugTokens`: each is unique across both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub access_tokens: Option<Vec<AccessToken>>,

    /// Take over a registration that exists already instead of registering one: the Secret named
    /// here (in this namespace) holds its `client_id` and, as the dialect has them, `client_secret`,
    /// `registration_access_token` and `registration_client_uri`. The operator verifies them with
    /// the server (RFC 7592 read with the token; the existence probe otherwise), writes them to the
    /// client's own Secret (`secret.name`, which must be another Secret) and manages the
    /// registration from then on, bringing its metadata in line with the spec where the dialect can
    /// (RFC 7592 PUT). The named Secret is only read. A refused adoption (unknown client, refused
    /// token) is `Ready=False AdoptionRefused`, and nothing is registered in its place. Used only
    /// while the SmartClient has no registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<AdoptSpec>,

    /// Rotation of the client's credentials: a replacement registration every `every`, on demand
    /// (the annotation `smart.fhir.dev/rotate-credentials-requested-at: <any new value>`), and
    /// `refreshBefore` the secret expires where the server gave it an expiry (the last also without
    /// this field). The new credentials become `client_id`/`client_secret`, the replaced ones stay in
    /// the Secret as `previous_client_id`/`previous_client_secret` for `overlap`, then the replaced
    /// registration is deleted (RFC 7592; S4S dialects cannot delete, and orphan it, recorded).
    /// For clients with a client secret only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSpec>,

    /// What happens to the registration when this SmartClient is deleted: `Delete` (default) removes
    /// it from the auth server (RFC 7592 DELETE); `Orphan` leaves it there. S4S dialects cannot delete
    /// clients and always orphan them, with an Event saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// Free-form JSON object. CEL cannot type-check rules over schemaless values, so the reserved-field rule
/// is enforced by the operator (reported as `Ready=False`, reason `InvalidSpec`) instead of at admission.
fn extra_metadata_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "maxProperties": 32,
    })
}

/// Reference to the auth server a SmartClient registers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthServerRef {
    /// `SmartAuthServer` (default, same namespace) or `ClusterSmartAuthServer`.
    #[serde(default)]
    pub kind: AuthServerKind,
    /// Name of the auth server resource.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// Kind of auth server a SmartClient refers to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AuthServerKind {
    /// A SmartAuthServer in the SmartClient's namespace.
    #[default]
    SmartAuthServer,
    /// A cluster-scoped ClusterSmartAuthServer.
    ClusterSmartAuthServer,
}

/// OAuth 2.0 grant types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
    Implicit,
}

/// OAuth 2.0 response types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseType {
    Code,
    Token,
    IdToken,
}

/// Client authentication at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuthMethod {
    /// HTTP Basic with client id and secret.
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
    /// A public client: no secret.
    None,
    /// A signed JWT assertion (RFC 7523) made with `signingKey`: no shared secret.
    PrivateKeyJwt,
}

/// The key pair a `private_key_jwt` client signs its client assertions with, and its rotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.rotateEvery) || !has(self.overlap) || duration(self.overlap) < duration(self.rotateEvery)")
    .message("overlap must be shorter than rotateEvery")
    .field_path(".overlap")
    .reason(Reason::FieldValueInvalid))]
pub struct SigningKeySpec {
    /// `ES384` (ECDSA on P-384, default) or `RS384` (RSA, 2048 bits). Changing it rotates the key
    /// (as `rotateEvery` does) to one of the new algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<crate::keys::SigningAlgorithm>,
    /// Rotate the key this often (a Go duration, e.g. `720h`); default never. A rotation writes the
    /// new key to the Secret as `next_private_key`, gives the server both public keys (RFC 7592
    /// PUT), then makes the new key `private_key` (the old one becomes `previous_private_key`), and
    /// after `overlap` gives the server the new key alone and drops the old one. The annotation
    /// `smart.fhir.dev/rotate-key-requested-at: <any new value>` rotates now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s')")
        .message("rotateEvery must be at least 10s"))]
    pub rotate_every: Option<kube::core::Duration>,
    /// How long the server keeps trusting a replaced key, so apps that have not read the new one yet
    /// keep working. Default `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')")
        .message("overlap must be at least 1s"))]
    pub overlap: Option<kube::core::Duration>,
}

/// An existing registration to take over.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdoptSpec {
    /// The Secret holding the registration's credentials under the default key names.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// When a client's credentials are replaced by a new registration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.every) || !has(self.overlap) || duration(self.overlap) < duration(self.every)")
    .message("overlap must be shorter than every")
    .field_path(".overlap")
    .reason(Reason::FieldValueInvalid))]
pub struct RotationSpec {
    /// Replace the credentials this often (a Go duration, e.g. `2160h`), counted from when the
    /// current ones were registered; default never (only on request or ahead of expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s')")
        .message("every must be at least 10s"))]
    pub every: Option<kube::core::Duration>,
    /// How long the replaced credentials stay registered and in the Secret (as `previous_*`), so
    /// apps that have not read the new ones yet keep working. Default `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')")
        .message("overlap must be at least 1s"))]
    pub overlap: Option<kube::core::Duration>,
    /// How long before the server's `client_secret_expires_at` to rotate. Default: a fifth of the
    /// secret's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')")
        .message("refreshBefore must be at least 1s"))]
    pub refresh_before: Option<kube::core::Duration>,
}

/// The registration a rotation replaced, while it is kept for the overlap. Never its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousClientStatus {
    /// Its client id, as `previous_client_id` in the Secret.
    pub client_id: String,
    /// When the current credentials replaced it.
    pub replaced_at: Time,
    /// When it is deleted from the server (or orphaned where the dialect cannot delete).
    pub retires_at: Time,
}

/// One key of a `private_key_jwt` client. Never the key itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyStatus {
    /// The key id (RFC 7638 thumbprint), as `key_id` in the Secret and `kid` on the server.
    pub kid: String,
    /// `ES384` or `RS384`.
    pub algorithm: String,
    /// `Current` (apps sign with it), `Next` (published for a rotation, not signed with yet) or
    /// `Previous` (replaced; trusted until the overlap ends).
    pub state: String,
    /// For the current key: since when apps sign with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// What to do with the remote registration when the SmartClient is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the client on the auth server (RFC 7592). S4S dialects cannot, and orphan it instead.
    #[default]
    Delete,
    /// Leave the client registered on the auth server.
    Orphan,
}

/// The Secret a SmartClient's credentials are written to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// Name of the Secret, in the SmartClient's namespace. Default: `<metadata.name>-smart-client`.
    /// The operator owns this Secret (ownerReference) and rewrites it when it is edited or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,

    /// Renames output keys, e.g. `client_secret: OAUTH_CLIENT_SECRET`, to match what an app already
    /// reads. Debug token keys are named after the token (`<name>_access_token`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<SecretKeys>,

    /// Extra labels for the Secret: keys are qualified names (`[prefix/]name`), values at most 63
    /// characters of `[A-Za-z0-9-_.]` starting and ending alphanumeric, as on any object.
    /// `app.kubernetes.io/managed-by` is always `smart-operator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_map_schema")]
    pub labels: Option<BTreeMap<String, String>>,

    /// Extra annotations for the Secret (e.g. for reloaders or external-secrets tooling); keys are
    /// qualified names (`[prefix/]name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "annotation_map_schema")]
    pub annotations: Option<BTreeMap<String, String>>,

    /// Extra keys rendered from templates (minijinja, Jinja2 syntax), e.g.
    /// `app.env: "CLIENT_ID={{ client_id }}"` or a JSON config with `{{ {...} | tojson }}`. The
    /// values are the output keys by their default names: `client_id`, `client_secret`,
    /// `registration_access_token`, `registration_client_uri`, `token_endpoint`, `fhir_base_url`,
    /// `scope`, `issuer`, `authorization_endpoint`, `private_key`, `key_id` (empty where the client
    /// has none). A template that does not parse, or names another value, is `Ready=False
    /// InvalidSpec` before anything is registered. Keys may not be another output key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "template_map_schema")]
    pub template: Option<BTreeMap<String, String>>,

    /// The Secret's `type`, for tools that select Secrets by it. Default `Opaque`. The
    /// `kubernetes.io/` types are refused: the apiserver requires keys of them the operator does
    /// not write. Immutable, as a Secret's type is.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^(Opaque|[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]+)$")
    )]
    #[x_kube(validation = Rule::new("!self.startsWith('kubernetes.io/')")
        .message("kubernetes.io/ Secret types need keys the operator does not write; use Opaque or a type of your own domain"))]
    pub type_: Option<String>,
}

fn template_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 16,
        "propertyNames": {"pattern": "^[-._a-zA-Z0-9]+$", "maxLength": 253},
        "additionalProperties": {"type": "string", "maxLength": 16384},
    })
}

// Checked at admission because a Secret write the apiserver refuses would strand credentials the auth
// server already handed out (review C1).
fn label_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "type": "string", "maxLength": 63 },
        "x-kubernetes-validations": [{
            "rule": "self.all(k, !format.qualifiedName().validate(k).hasValue() && !format.labelValue().validate(self[k]).hasValue())",
            "message": "every label must be valid on a Secret: keys are qualified names ([prefix/]name), values at most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric",
        }],
    })
}

fn annotation_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "type": "string", "maxLength": 4096 },
        "x-kubernetes-validations": [{
            "rule": "self.all(k, !format.qualifiedName().validate(k).hasValue())",
            "message": "every annotation key must be a qualified name ([prefix/]name)",
        }],
    })
}

/// Names of the keys written to a client's Secret. Each defaults to its own field name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new(secret_keys_unique_rule())
    .message("two outputs would be written to the same Secret key")
    .reason(Reason::FieldValueInvalid))]
pub struct SecretKeys {
    /// Key for the client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub client_id: Option<String>,
    /// Key for the client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub client_secret: Option<String>,
    /// Key for the RFC 7592 registration access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub registration_access_token: Option<String>,
    /// Key for the RFC 7592 registration client URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub registration_client_uri: Option<String>,
    /// Key for the token endpoint URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub token_endpoint: Option<String>,
    /// Key for the FHIR base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub fhir_base_url: Option<String>,
    /// Key for the granted scopes (space-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub scope: Option<String>,
    /// Key for the private key of a `private_key_jwt` client (PKCS#8 PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub private_key: Option<String>,
    /// Key for that key's id (`kid`, the RFC 7638 thumbprint of its public key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key_id: Option<String>,
    /// Key for the auth server's issuer identifier (SMART launch), where it publishes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub issuer: Option<String>,
    /// Key for the authorization endpoint URL (SMART launch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub authorization_endpoint: Option<String>,
}

/// Every output key after renaming must be distinct (renaming `client_secret` to `client_id` would
/// overwrite the id).
fn secret_keys_unique_rule() -> String {
    let keys: Vec<String> = DEFAULT_SECRET_KEYS
        .iter()
        .map(|k| format!("has(self.{k}) ? self.{k} : '{k}'"))
        .collect();
    let keys = format!("[{}]", keys.join(", "));
    format!("{keys}.all(k, {keys}.filter(o, o == k).size() == 1)")
}

/// The output keys of `spec.secret.keys`, renamed or not, as a CEL list (self = the spec).
fn secret_keys_cel() -> String {
    let keys: Vec<String> = DEFAULT_SECRET_KEYS
        .iter()
    .map(|k| {
        format!("(has(self.secret) && has(self.secret.keys) && has(self.secret.keys.{k}) ? self.secret.keys.{k} : '{k}')")
    })
    .collect();
    format!("[{}]", keys.join(", "))
}

/// The Secret keys a debug token `t` writes, as a CEL list.
const TOKEN_KEYS_CEL: &str =
    "[t.name + '_access_token', t.name + '_refresh_token', t.name + '_expires_at']";

/// A debug token's keys must not be an output key, or the token would overwrite it (and after a
/// restart be read back as the credential; review C17).
fn token_keys_collision_rule() -> String {
    format!(
        "!has(self.debugTokens) || self.debugTokens.all(t, {TOKEN_KEYS_CEL}.all(k, !(k in {})))",
        secret_keys_cel()
    )
}

/// A template's key must not be an output key or a token's key.
fn template_keys_collision_rule() -> String {
    format!(
        "!has(self.secret) || !has(self.secret.template) || self.secret.template.all(k, !(k in {keys}) \
         && !k.startsWith('previous_') && !k.startsWith('next_') \
         && (!has(self.debugTokens) || !self.debugTokens.exists(t, k in {TOKEN_KEYS_CEL})) \
         && (!has(self.accessTokens) || !self.accessTokens.exists(t, k in {TOKEN_KEYS_CEL})))",
        keys = secret_keys_cel()
    )
}

/// An access token's keys must not be an output key either.
fn access_token_keys_collision_rule() -> String {
    format!(
        "!has(self.accessTokens) || self.accessTokens.all(t, {TOKEN_KEYS_CEL}.all(k, !(k in {})))",
        secret_keys_cel()
    )
}

/// An access token minted for a test user through the Sync-for-Science debug API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.refreshBefore) || !has(self.lifetime) || duration(self.refreshBefore) < duration(self.lifetime)")
    .message("refreshBefore must be shorter than lifetime")
    .field_path(".refreshBefore")
    .reason(Reason::FieldValueInvalid))]
pub struct DebugToken {
    /// Name of the token; prefixes its Secret keys (`<name>_access_token`, ...). Unique per client.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// User the token is issued for (S4S `username`, S4SLegacy `user`), e.g. `daniel-adams`.
    #[schemars(length(min = 1, max = 128))]
    pub user: String,
    /// Patient in context (`patient_id`), e.g. `smart-1288992`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub patient_id: Option<String>,
    /// Scopes of the token. Default: the client's scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub scopes: Option<Vec<SmartScope>>,
    /// How long each minted token lives, as a Go duration (`1h`, `30m`, `10s`). Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('2s') && duration(self) <= duration('8760h')")
        .message("lifetime must be between 2s and 8760h (one year)"))]
    pub lifetime: Option<kube::core::Duration>,
    /// How long before expiry the token is re-minted (with up to 10% jitter earlier). Default: a
    /// fifth of the lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')")
        .message("refreshBefore must be at least 1s"))]
    pub refresh_before: Option<kube::core::Duration>,
}

/// An access token for the client itself (client_credentials grant), kept fresh by the operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessToken {
    /// Name of the token; prefixes its Secret keys (`<name>_access_token`, `<name>_expires_at`).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Scopes to request. Default: the client's scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub scopes: Option<Vec<SmartScope>>,
    /// How long before expiry the token is obtained again (with up to 10% jitter earlier). Default:
    /// a fifth of the lifetime the server gives it (`expires_in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')")
        .message("refreshBefore must be at least 1s"))]
    pub refresh_before: Option<kube::core::Duration>,
}

/// Observed state of a SmartClient. Never holds secret values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
// An object the operator has not written status for yet reads as generation 0 observed, so kstatus
// (Flux `wait: true`, Helm 4 `--wait`, kpt) says InProgress instead of counting it Current.
#[schemars(extend("default" = {"observedGeneration": 0}))]
pub struct SmartClientStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Registered`, `SecretSynced`, `TokensFresh` (and `DeletionBlocked` while deletion is
    /// stuck), each with a machine-readable reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Client id the auth server knows this client by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// RFC 7592 management URL of the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_client_uri: Option<String>,
    /// When the server issued the client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_issued_at: Option<Time>,
    /// When the client secret expires, where the server said so (`client_secret_expires_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<Time>,
    /// Scopes the server granted; may be fewer than requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_scopes: Vec<String>,
    /// Hash of the registration metadata last accepted by the server; a spec change that alters it
    /// causes one update (RFC7591) or a replacement (S4S dialects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_metadata_hash: Option<String>,
    /// Name of the Secret holding the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// State of each debug token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub debug_tokens: Vec<DebugTokenStatus>,
    /// State of each access token of `spec.accessTokens`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub access_tokens: Vec<DebugTokenStatus>,
    /// Clients this SmartClient registered earlier and could not delete (S4S dialects cannot), e.g.
    /// after a replacement. Clean them up on the server by hand if needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphaned_clients: Vec<OrphanedClient>,
    /// Failure backoff, kept in status so that it survives an operator restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryStatus>,
    /// The last value of the annotation `smart.fhir.dev/reconcile-requested-at` the operator acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// A private_key_jwt client's keys (kid, algorithm, state), never the keys themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<SigningKeyStatus>,
    /// The last value of the annotation `smart.fhir.dev/rotate-key-requested-at` the operator acted
    /// on (the rotation it started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_key_rotation_at: Option<String>,
    /// When the credentials are rotated next (`spec.rotation.every`, or ahead of the secret's
    /// expiry); none when nothing schedules it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<Time>,
    /// The last value of the annotation `smart.fhir.dev/rotate-credentials-requested-at` the
    /// operator acted on (the rotation it started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_rotation_at: Option<String>,
    /// The registration the last rotation replaced, while it is kept for the overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_client: Option<PreviousClientStatus>,
}

/// State of one debug token. The token itself is only in the Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DebugTokenStatus {
    /// Name of the debug token in the spec.
    pub name: String,
    /// When the current token expires, as reported by introspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the operator will mint the next token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_at: Option<Time>,
}

/// A client left behind on the auth server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrphanedClient {
    /// Client id on the auth server.
    pub client_id: String,
    /// Why it was left behind, e.g. `Replaced`.
    pub reason: String,
    /// When it was left behind.
    pub since: Time,
}

/// Failure backoff of a SmartClient.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryStatus {
    /// Consecutive failed attempts.
    pub failures: i32,
    /// Earliest time of the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
}
