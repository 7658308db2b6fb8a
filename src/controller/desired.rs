//! What a SmartClient asks for, computed from its spec alone (pure).

use std::collections::BTreeMap;

use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::authserver::ClientMetadata;
use crate::crd::{
    Dialect, GrantType, RESERVED_METADATA_FIELDS, SmartClient, TokenEndpointAuthMethod,
};
use crate::keys::{SigningAlgorithm, SigningKey, jwk_set};

/// A spec the apiserver accepted but the operator cannot act on.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error(
        "spec.extraMetadata sets {0}, which the operator manages; use the typed spec fields instead"
    )]
    ReservedMetadataField(String),
}

/// The registration metadata a SmartClient asks for, with defaults filled in.
pub fn desired_metadata(client: &SmartClient) -> Result<ClientMetadata, SpecError> {
    let spec = &client.spec;
    let extra: BTreeMap<String, serde_json::Value> =
        spec.extra_metadata.clone().unwrap_or_default();
    if let Some(reserved) = extra
        .keys()
        .find(|k| RESERVED_METADATA_FIELDS.contains(&k.as_str()))
    {
        return Err(SpecError::ReservedMetadataField(reserved.clone()));
    }
    let grant_types = spec
        .grant_types
        .clone()
        .unwrap_or_else(|| vec![GrantType::AuthorizationCode, GrantType::RefreshToken]);
    let interactive = grant_types
        .iter()
        .any(|g| matches!(g, GrantType::AuthorizationCode | GrantType::Implicit));
    let response_types = match &spec.response_types {
        Some(types) => types.iter().map(enum_name).collect(),
        None if interactive => vec!["code".to_owned()],
        None => Vec::new(),
    };
    Ok(ClientMetadata {
        client_name: spec.client_name.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                client.namespace().unwrap_or_default(),
                client.name_any()
            )
        }),
        redirect_uris: spec
            .redirect_uris
            .iter()
            .flatten()
            .map(|u| u.0.clone())
            .collect(),
        scopes: spec.scopes.iter().map(|s| s.0.clone()).collect(),
        grant_types: grant_types.iter().map(enum_name).collect(),
        response_types,
        token_endpoint_auth_method: enum_name(
            &spec
                .token_endpoint_auth_method
                .unwrap_or(TokenEndpointAuthMethod::ClientSecretBasic),
        ),
        logo_uri: spec.logo_uri.as_ref().map(|u| u.0.clone()),
        contacts: spec
            .contacts
            .iter()
            .flatten()
            .map(|c| c.0.clone())
            .collect(),
        // Filled in from the key the operator holds (see `with_signing_key`).
        jwks: None,
        extra,
    })
}

/// The wire name of a serde enum value (`client_secret_basic`, ...).
fn enum_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The prefix of every hash this release records. A hash without it was recorded before dialects
/// were told apart (every field, whatever the dialect); see [`is_applied`].
const HASH_VERSION: &str = "v2-";

/// A stable hash of what `dialect` is sent of the metadata: an RFC7591 client is updated (or an S4S
/// client replaced) exactly when this changes. S4S and S4SLegacy receive only a name, redirect URIs and
/// scopes, so an edit of anything else changes nothing there (review C12).
pub fn metadata_hash(metadata: &ClientMetadata, dialect: Dialect) -> String {
    let sent = match dialect {
        Dialect::Rfc7591 => return format!("{HASH_VERSION}{}", every_field_hash(metadata)),
        Dialect::S4s | Dialect::S4sLegacy => serde_json::json!({
            "client_name": metadata.client_name,
            "redirect_uris": metadata.redirect_uris,
            "scope": metadata.scopes,
        }),
    };
    format!("{HASH_VERSION}{}", digest(&sent))
}

/// Whether the metadata recorded as `applied` is `desired`: the same hash, or a hash recorded before
/// [`HASH_VERSION`] of the same metadata, so an operator upgrade updates or replaces nothing.
pub fn is_applied(applied: &str, desired: &ClientMetadata, dialect: Dialect) -> bool {
    applied == metadata_hash(desired, dialect)
        || (!applied.starts_with(HASH_VERSION) && applied == every_field_hash(desired))
}

/// The hash of every field, as recorded before [`HASH_VERSION`] (and still the RFC7591 one).
fn every_field_hash(metadata: &ClientMetadata) -> String {
    let mut fields = serde_json::json!({
        "client_name": metadata.client_name,
        "redirect_uris": metadata.redirect_uris,
        "scope": metadata.scopes,
        "grant_types": metadata.grant_types,
        "response_types": metadata.response_types,
        "token_endpoint_auth_method": metadata.token_endpoint_auth_method,
        "logo_uri": metadata.logo_uri,
        "contacts": metadata.contacts,
        "extra": metadata.extra,
    });
    // Only where set, so the hash of every client registered before keys existed stays the same:
    // a new public key changes it, and the server is given the new key set (RFC 7592 PUT).
    if let Some(jwks) = &metadata.jwks {
        fields["jwks"] = jwks.clone();
    }
    digest(&fields)
}

/// The algorithm of the key a private_key_jwt client needs; None for clients without one.
pub fn wanted_signing_algorithm(client: &SmartClient) -> Option<SigningAlgorithm> {
    client
        .spec
        .signing_key
        .as_ref()
        .map(|k| k.algorithm.unwrap_or(SigningAlgorithm::ES384))
}

/// The metadata with the public parts of `trusted` as the client's `jwks`. No
/// `token_endpoint_auth_signing_alg` is sent: each JWK names its `alg`, and a pinned algorithm would
/// refuse the other key while a rotation changes algorithms (Keycloak keeps an omitted field on a
/// PUT, so a pin could not be lifted again).
pub fn with_signing_keys(mut metadata: ClientMetadata, trusted: &[&SigningKey]) -> ClientMetadata {
    metadata.jwks = serde_json::to_value(jwk_set(trusted.iter().copied())).ok();
    metadata
}

fn digest(canonical: &serde_json::Value) -> String {
    // serde_json's map is ordered, so equal metadata always serializes to equal bytes.
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The client id an S4SLegacy client registers with: the spec's, or one derived from namespace, name
/// and UID (unique in the cluster and stable across operator restarts).
pub fn s4s_legacy_client_id(client: &SmartClient) -> String {
    if let Some(id) = &client.spec.client_id {
        return id.clone();
    }
    let uid = client.uid().unwrap_or_default();
    let short_uid: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    let raw = format!(
        "{}.{}.{short_uid}",
        client.namespace().unwrap_or_default(),
        client.name_any()
    );
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._~-".contains(*c))
        .take(128)
        .collect()
}

/// A strong random client secret for dialects where the caller chooses it: 48 alphanumeric characters
/// (about 285 bits).
pub fn generate_client_secret() -> secrecy::SecretString {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let secret: String = (0..48)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    secret.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SmartClientSpec;
    use secrecy::ExposeSecret;

    fn client(spec: serde_json::Value) -> SmartClient {
        let spec: SmartClientSpec = serde_json::from_value(spec).unwrap();
        let mut client = SmartClient::new("app", spec);
        client.metadata.namespace = Some("team".into());
        client.metadata.uid = Some("0f1e2d3c-aaaa-bbbb-cccc-000000000000".into());
        client
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "authServerRef": {"name": "s"},
            "redirectUris": ["https://app.example.org/cb"],
            "scopes": ["launch/patient", "patient/*.read"],
        })
    }

    #[test]
    fn defaults_are_an_authorization_code_client_with_a_basic_secret() {
        let metadata = desired_metadata(&client(minimal())).unwrap();
        assert_eq!(metadata.client_name, "team/app");
        assert_eq!(
            metadata.grant_types,
            ["authorization_code", "refresh_token"]
        );
        assert_eq!(metadata.response_types, ["code"]);
        assert_eq!(metadata.token_endpoint_auth_method, "client_secret_basic");
    }

    #[test]
    fn reserved_extra_metadata_is_refused() {
        let mut spec = minimal();
        spec["extraMetadata"] = serde_json::json!({"redirect_uris": ["https://x"]});
        assert_eq!(
            desired_metadata(&client(spec)),
            Err(SpecError::ReservedMetadataField("redirect_uris".into()))
        );
    }

    #[test]
    fn hash_changes_with_metadata_and_only_then() {
        let a = desired_metadata(&client(minimal())).unwrap();
        let mut b = a.clone();
        assert_eq!(
            metadata_hash(&a, Dialect::Rfc7591),
            metadata_hash(&b, Dialect::Rfc7591)
        );
        b.scopes.push("openid".into());
        assert_ne!(
            metadata_hash(&a, Dialect::Rfc7591),
            metadata_hash(&b, Dialect::Rfc7591)
        );
    }

    #[test]
    fn s4s_hashes_cover_only_what_s4s_is_sent() {
        let a = desired_metadata(&client(minimal())).unwrap();
        let mut b = a.clone();
        b.contacts.push("mailto:team@example.org".into());
        b.logo_uri = Some("https://app.example.org/logo.png".into());
        for dialect in [Dialect::S4s, Dialect::S4sLegacy] {
            assert_eq!(metadata_hash(&a, dialect), metadata_hash(&b, dialect));
        }
        assert_ne!(
            metadata_hash(&a, Dialect::Rfc7591),
            metadata_hash(&b, Dialect::Rfc7591)
        );
        b.redirect_uris.push("https://app.example.org/other".into());
        assert_ne!(
            metadata_hash(&a, Dialect::S4s),
            metadata_hash(&b, Dialect::S4s)
        );
    }

    #[test]
    fn hashes_recorded_by_earlier_releases_still_count_as_applied() {
        let a = desired_metadata(&client(minimal())).unwrap();
        let recorded_before = every_field_hash(&a);
        for dialect in [Dialect::Rfc7591, Dialect::S4s, Dialect::S4sLegacy] {
            assert!(is_applied(&recorded_before, &a, dialect));
            assert!(is_applied(&metadata_hash(&a, dialect), &a, dialect));
        }
        let mut b = a.clone();
        b.scopes.push("openid".into());
        assert!(!is_applied(&recorded_before, &b, Dialect::S4s));
    }

    #[test]
    fn derived_legacy_client_ids_are_stable_and_valid() {
        let c = client(minimal());
        assert_eq!(s4s_legacy_client_id(&c), "team.app.0f1e2d3c");
        let mut spec = minimal();
        spec["clientId"] = serde_json::json!("chosen");
        assert_eq!(s4s_legacy_client_id(&client(spec)), "chosen");
    }

    #[test]
    fn generated_secrets_are_long_alphanumeric_and_distinct() {
        let a = generate_client_secret();
        let b = generate_client_secret();
        assert_eq!(a.expose_secret().len(), 48);
        assert!(a.expose_secret().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
