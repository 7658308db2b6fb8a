//! The Secret a SmartClient's credentials live in: rendering it from what the operator knows, and
//! reading it back (pure).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::credential_rotation::PreviousRegistration;
use super::key_rotation::HeldKeys;
use super::secret_template::render_templates;
use crate::crd::{SecretKeys, SmartClient};
use crate::keys::SigningKey;
use k8s_openapi::jiff::Timestamp;

/// Label on every Secret the operator manages; the operator watches only Secrets carrying it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "smart-operator";
/// Label naming the SmartClient a Secret belongs to.
pub const CLIENT_LABEL: &str = "smart.fhir.dev/client";
/// Annotation recording which metadata (its hash) the credentials in the Secret were registered with,
/// so the Secret alone tells a restarted operator what is on the server even when status lags.
pub const APPLIED_METADATA_HASH_ANNOTATION: &str = "smart.fhir.dev/applied-metadata-hash";
/// Annotation marking credentials the operator chose and wrote before posting them (S4SLegacy) and the
/// server has not confirmed yet: they are posted again, never taken as registered.
pub const REGISTRATION_PENDING_ANNOTATION: &str = "smart.fhir.dev/registration-pending";
/// Annotation holding a SHA-256 digest of the credentials the operator wrote (client id, secret,
/// registration access token). After a restart the Secret is the operator's only record; a Secret whose
/// credentials no longer match it was edited by someone else, and is not taken as the truth (the next
/// existence check would take an edited secret for a client the server forgot, and register again).
/// A digest of high-entropy secrets discloses nothing of them.
pub const CREDENTIALS_DIGEST_ANNOTATION: &str = "smart.fhir.dev/credentials-sha256";
/// Annotation naming the debug tokens whose keys the Secret holds: a token removed from the spec
/// changes it, so the Secret is written again and its keys go (server-side apply removes what the
/// operator no longer sets; review C17).
pub const DEBUG_TOKENS_ANNOTATION: &str = "smart.fhir.dev/debug-tokens";
/// Annotation written before a registration whose id the server chooses is sent (RFC7591, S4S), with
/// the time it was sent, and emptied once the answer is in the Secret. Found set by an operator that
/// did not write it, it says that an operator died (or lost its lease) with the answer in flight: the
/// server may hold a client nobody knows the id of, and it is recorded as an orphan.
pub const REGISTRATION_SENT_ANNOTATION: &str = "smart.fhir.dev/registration-sent-at";

/// Every credential the operator holds for one registration.
#[derive(Clone, Debug, Default)]
pub struct StoredCredentials {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub registration_access_token: Option<SecretString>,
    pub registration_client_uri: Option<String>,
    pub tokens: BTreeMap<String, StoredToken>,
    /// The hash of the metadata this registration was made (or last updated) with. With the
    /// credentials it is the write-ahead record: kept in memory and in the Secret, so neither a failed
    /// status write nor a restart makes the operator update or replace a client that is up to date.
    pub applied_metadata_hash: Option<String>,
    /// Chosen by the operator and written before they were posted; not confirmed by the server yet.
    pub registration_pending: bool,
    /// When this registration was made (the start of its rotation schedule).
    pub registered_at: Option<Timestamp>,
    /// The server's `client_secret_expires_at` for the secret held.
    pub secret_expires_at: Option<Timestamp>,
    /// The registration a rotation replaced, kept for the overlap (`credential_rotation.rs`).
    pub previous: Option<PreviousRegistration>,
    /// The value of `smart.fhir.dev/rotate-credentials-requested-at` whose rotation made these
    /// credentials: kept with them, so a crash before status says so starts no second rotation.
    pub handled_rotation_request: Option<String>,
}

/// Annotation with the facts a rotation is reckoned from (JSON: `registeredAt`,
/// `secretExpiresAt`, `previousReplacedAt`, `handledRotationRequest`), written with the
/// credentials they describe.
pub const LIFECYCLE_ANNOTATION: &str = "smart.fhir.dev/credentials-lifecycle";

#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Lifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registered_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_replaced_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handled_rotation_request: Option<String>,
}

fn lifecycle_annotation(record: &StoredCredentials) -> Option<String> {
    let lifecycle = Lifecycle {
        registered_at: record.registered_at,
        secret_expires_at: record.secret_expires_at,
        previous_replaced_at: record.previous.as_ref().map(|p| p.replaced_at),
        handled_rotation_request: record.handled_rotation_request.clone(),
    };
    let text = serde_json::to_string(&lifecycle).ok()?;
    (text != "{}").then_some(text)
}

/// The name of a previous registration's key: `previous_` and the current key's (renamed) name.
fn previous_key(name: &str) -> String {
    format!("previous_{name}")
}

/// One debug token as kept in the Secret.
#[derive(Clone, Debug)]
pub struct StoredToken {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// RFC 3339, as written to `<name>_expires_at`.
    pub expires_at: Option<String>,
}

/// Non-secret values that also go into the Secret, so an app needs nothing else.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PublicValues {
    pub token_endpoint: Option<String>,
    pub fhir_base_url: Option<String>,
    pub scope: String,
    /// The server's issuer identifier and authorization endpoint: what a SMART launch needs.
    pub issuer: Option<String>,
    pub authorization_endpoint: Option<String>,
}

/// When the registration recorded in flight in this Secret was sent, if one is.
pub fn registration_sent_at(observed: &Secret) -> Option<&str> {
    observed
        .metadata
        .annotations
        .as_ref()?
        .get(REGISTRATION_SENT_ANNOTATION)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Records in `secret` a registration in flight since `sent_at`, or none. An annotation `observed`
/// carries is emptied rather than left out: the Secret's first write (a create, not an apply) leaves
/// its fields to another field manager, so leaving it out would not remove it.
pub fn mark_registration_sent(
    secret: &mut Secret,
    sent_at: Option<&str>,
    observed: Option<&Secret>,
) {
    let was_marked =
        observed.is_some_and(|o| o.annotations().contains_key(REGISTRATION_SENT_ANNOTATION));
    let value = match sent_at {
        Some(sent_at) => sent_at.to_owned(),
        None if was_marked => String::new(),
        None => return,
    };
    secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(REGISTRATION_SENT_ANNOTATION.into(), value);
}

/// Name of the client's Secret.
pub fn secret_name(client: &SmartClient) -> String {
    client
        .spec
        .secret
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| format!("{}-smart-client", client.name_any()))
}

/// Output key names after the spec's renames.
struct KeyNames {
    client_id: String,
    client_secret: String,
    registration_access_token: String,
    registration_client_uri: String,
    token_endpoint: String,
    fhir_base_url: String,
    scope: String,
    private_key: String,
    key_id: String,
    issuer: String,
    authorization_endpoint: String,
}

fn key_names(client: &SmartClient) -> KeyNames {
    let renames = client
        .spec
        .secret
        .as_ref()
        .and_then(|s| s.keys.clone())
        .unwrap_or_default();
    let SecretKeys {
        client_id,
        client_secret,
        registration_access_token,
        registration_client_uri,
        token_endpoint,
        fhir_base_url,
        scope,
        private_key,
        key_id,
        issuer,
        authorization_endpoint,
    } = renames;
    KeyNames {
        client_id: client_id.unwrap_or_else(|| "client_id".into()),
        client_secret: client_secret.unwrap_or_else(|| "client_secret".into()),
        registration_access_token: registration_access_token
            .unwrap_or_else(|| "registration_access_token".into()),
        registration_client_uri: registration_client_uri
            .unwrap_or_else(|| "registration_client_uri".into()),
        token_endpoint: token_endpoint.unwrap_or_else(|| "token_endpoint".into()),
        fhir_base_url: fhir_base_url.unwrap_or_else(|| "fhir_base_url".into()),
        scope: scope.unwrap_or_else(|| "scope".into()),
        private_key: private_key.unwrap_or_else(|| "private_key".into()),
        key_id: key_id.unwrap_or_else(|| "key_id".into()),
        issuer: issuer.unwrap_or_else(|| "issuer".into()),
        authorization_endpoint: authorization_endpoint
            .unwrap_or_else(|| "authorization_endpoint".into()),
    }
}

/// The data the Secret must hold.
pub fn render_data(
    client: &SmartClient,
    credentials: &StoredCredentials,
    signing_keys: Option<&HeldKeys>,
    public: &PublicValues,
) -> BTreeMap<String, ByteString> {
    let keys = key_names(client);
    let mut data = BTreeMap::new();
    let mut put = |key: &str, value: &str| {
        data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    };
    put(&keys.client_id, &credentials.client_id);
    if let Some(secret) = &credentials.client_secret {
        put(&keys.client_secret, secret.expose_secret());
    }
    if let Some(token) = &credentials.registration_access_token {
        put(&keys.registration_access_token, token.expose_secret());
    }
    if let Some(uri) = &credentials.registration_client_uri {
        put(&keys.registration_client_uri, uri);
    }
    if let Some(previous) = &credentials.previous {
        put(&previous_key(&keys.client_id), &previous.client_id);
        if let Some(secret) = &previous.client_secret {
            put(&previous_key(&keys.client_secret), secret.expose_secret());
        }
        if let Some(token) = &previous.registration_access_token {
            put(
                &previous_key(&keys.registration_access_token),
                token.expose_secret(),
            );
        }
        if let Some(uri) = &previous.registration_client_uri {
            put(&previous_key(&keys.registration_client_uri), uri);
        }
    }
    if let Some(endpoint) = &public.token_endpoint {
        put(&keys.token_endpoint, endpoint);
    }
    if let Some(base) = &public.fhir_base_url {
        put(&keys.fhir_base_url, base);
    }
    put(&keys.scope, &public.scope);
    if let Some(issuer) = &public.issuer {
        put(&keys.issuer, issuer);
    }
    if let Some(endpoint) = &public.authorization_endpoint {
        put(&keys.authorization_endpoint, endpoint);
    }
    for (name, token) in &credentials.tokens {
        put(
            &format!("{name}_access_token"),
            token.access_token.expose_secret(),
        );
        if let Some(refresh) = &token.refresh_token {
            put(&format!("{name}_refresh_token"), refresh.expose_secret());
        }
        if let Some(expires_at) = &token.expires_at {
            put(&format!("{name}_expires_at"), expires_at);
        }
    }
    render_signing_keys(client, signing_keys, &mut data);
    let current = signing_keys.map(|k| &k.current);
    let secret = |s: Option<&SecretString>| s.map(|s| s.expose_secret().to_owned());
    let values: BTreeMap<&'static str, String> = [
        ("client_id", Some(credentials.client_id.clone())),
        ("client_secret", secret(credentials.client_secret.as_ref())),
        (
            "registration_access_token",
            secret(credentials.registration_access_token.as_ref()),
        ),
        (
            "registration_client_uri",
            credentials.registration_client_uri.clone(),
        ),
        ("token_endpoint", public.token_endpoint.clone()),
        ("fhir_base_url", public.fhir_base_url.clone()),
        ("scope", Some(public.scope.clone())),
        ("issuer", public.issuer.clone()),
        (
            "authorization_endpoint",
            public.authorization_endpoint.clone(),
        ),
        (
            "private_key",
            current.map(|k| k.private_key_pem().expose_secret().to_owned()),
        ),
        ("key_id", current.map(|k| k.kid().to_owned())),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.unwrap_or_default()))
    .collect();
    for (key, text) in render_templates(client, &values) {
        data.insert(key, ByteString(text.into_bytes()));
    }
    data
}

/// Annotation with the time the Secret's `private_key` became the key apps sign with (the start of
/// the rotation schedule and of a replaced key's overlap).
pub const SIGNING_KEY_SINCE_ANNOTATION: &str = "smart.fhir.dev/signing-key-since";
/// Annotation with the key rotation request the Secret's keys were made for (see `HeldKeys`).
pub const KEY_ROTATION_HANDLED_ANNOTATION: &str = "smart.fhir.dev/rotate-key-request-handled";

/// A private_key_jwt client's keys in the Secret's data: the current key as `private_key` with its
/// kid as `key_id`, a rotation's next key and a replaced key under `next_`/`previous_` names.
pub fn render_signing_keys(
    client: &SmartClient,
    held: Option<&HeldKeys>,
    data: &mut BTreeMap<String, ByteString>,
) {
    let Some(held) = held else {
        return;
    };
    let keys = key_names(client);
    let pem =
        |key: &SigningKey| ByteString(key.private_key_pem().expose_secret().as_bytes().to_vec());
    data.insert(keys.private_key.clone(), pem(&held.current));
    data.insert(
        keys.key_id,
        ByteString(held.current.kid().as_bytes().to_vec()),
    );
    if let Some(next) = &held.next {
        data.insert(format!("next_{}", keys.private_key), pem(next));
    }
    if let Some(previous) = &held.previous {
        data.insert(format!("previous_{}", keys.private_key), pem(previous));
    }
}

/// Marks the Secret with when its current key became current.
pub fn annotate_signing_keys(secret: &mut Secret, held: Option<&HeldKeys>) {
    if let Some(held) = held {
        secret.annotations_mut().insert(
            SIGNING_KEY_SINCE_ANNOTATION.into(),
            held.current_since.to_string(),
        );
        if let Some(handled) = &held.handled_request {
            secret
                .annotations_mut()
                .insert(KEY_ROTATION_HANDLED_ANNOTATION.into(), handled.clone());
        }
    }
}

/// The keys in a Secret the operator owns; none without a readable current key (the caller makes a
/// new one, which is registered in its place).
pub fn read_signing_keys(observed: &Secret, client: &SmartClient) -> Option<HeldKeys> {
    if !controlled_by(observed, client) {
        return None;
    }
    let data = observed.data.as_ref()?;
    let private_key = key_names(client).private_key;
    let key = |name: &str| {
        let pem = String::from_utf8(data.get(name)?.0.clone()).ok()?;
        SigningKey::from_pem_any(SecretString::from(pem)).ok()
    };
    let current_since = observed
        .annotations()
        .get(SIGNING_KEY_SINCE_ANNOTATION)
        .and_then(|t| t.parse().ok())
        .or_else(|| observed.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or_else(Timestamp::now);
    Some(HeldKeys {
        current: key(&private_key)?,
        current_since,
        next: key(&format!("next_{private_key}")),
        previous: key(&format!("previous_{private_key}")),
        handled_request: observed
            .annotations()
            .get(KEY_ROTATION_HANDLED_ANNOTATION)
            .cloned(),
    })
}

/// Whether the Secret holds exactly `held`'s keys (and no key a finished rotation dropped).
pub fn signing_keys_in_secret(observed: &Secret, client: &SmartClient, held: &HeldKeys) -> bool {
    let mut wanted = BTreeMap::new();
    render_signing_keys(client, Some(held), &mut wanted);
    let private_key = key_names(client).private_key;
    let data = observed.data.clone().unwrap_or_default();
    let ours = |k: &String| {
        *k == private_key
            || *k == format!("next_{private_key}")
            || *k == format!("previous_{private_key}")
    };
    wanted.iter().all(|(k, v)| data.get(k) == Some(v))
        && data
            .keys()
            .filter(|k| ours(k))
            .all(|k| wanted.contains_key(k))
        && observed.annotations().get(SIGNING_KEY_SINCE_ANNOTATION)
            == Some(&held.current_since.to_string())
        && observed.annotations().get(KEY_ROTATION_HANDLED_ANNOTATION)
            == held.handled_request.as_ref()
}

/// The whole Secret object for server-side apply: owned by the SmartClient (so it is garbage-collected
/// with it) and labelled so the operator's watch sees it.
pub fn render_secret(
    client: &SmartClient,
    data: BTreeMap<String, ByteString>,
    record: Option<&StoredCredentials>,
) -> Secret {
    let spec = client.spec.secret.clone().unwrap_or_default();
    let mut labels = spec.labels.unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(CLIENT_LABEL.into(), client_label_value(&client.name_any()));
    let mut secret = Secret {
        data: Some(data),
        type_: Some(spec.type_.clone().unwrap_or_else(|| "Opaque".into())),
        ..Default::default()
    };
    secret.metadata.name = Some(secret_name(client));
    secret.metadata.namespace = client.namespace();
    secret.metadata.labels = Some(labels);
    let mut annotations = spec.annotations.unwrap_or_default();
    annotations.extend(record_annotations(record));
    secret.metadata.annotations = Some(annotations).filter(|a| !a.is_empty());
    secret.metadata.owner_references = client.controller_owner_ref(&()).map(|owner| vec![owner]);
    secret
}

/// The SmartClient's name as a label value. Names may have 253 characters, label values 63: a longer
/// name is cut and a hash of the whole name appended, so the label stays unique and the write valid
/// (review C1: an invalid label made every Secret write fail).
pub fn client_label_value(name: &str) -> String {
    const MAX: usize = 63;
    if name.len() <= MAX {
        return name.to_owned();
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    // Names are lowercase alphanumerics, '-' and '.', so any cut is ASCII and valid in the middle.
    format!("{}-{hash}", &name[..MAX - 1 - hash.len()])
}

/// Whether the Secret names this SmartClient as its controller: the one proof that the operator created
/// it for this client (labels can be copied; an ownerReference uid cannot be guessed).
fn controlled_by(observed: &Secret, client: &SmartClient) -> bool {
    observed
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == client.meta().uid.as_ref())
}

/// Who controls the Secret a SmartClient names, as far as the operator may act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretOwnership {
    /// No such Secret: the operator creates it.
    Absent,
    /// Created by the operator for this SmartClient.
    Ours,
    /// Someone else's (a Secret of the user's, or one another SmartClient controls): never written,
    /// never adopted, and nothing is registered for it. The text says whose and what to do.
    Foreign(String),
}

/// Decides whether the operator may write `observed` for `client` (review C8/S2: writing a Secret it
/// did not create would hand one app's credentials to another, or let garbage collection delete a
/// user's Secret with the SmartClient).
pub fn secret_ownership(observed: Option<&Secret>, client: &SmartClient) -> SecretOwnership {
    let Some(observed) = observed else {
        return SecretOwnership::Absent;
    };
    if controlled_by(observed, client) {
        return SecretOwnership::Ours;
    }
    let name = observed.name_any();
    let controller = observed
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{} {}", o.kind, o.name));
    SecretOwnership::Foreign(match controller {
        Some(controller) => format!(
            "Secret {name} is controlled by {controller}; the operator writes only Secrets it created for this SmartClient: set spec.secret.name to a Secret that does not exist yet"
        ),
        None => format!(
            "Secret {name} already exists and was not created by the operator for this SmartClient; it is left untouched: set spec.secret.name to a Secret that does not exist yet, or delete this one"
        ),
    })
}

/// What the record says beyond the credentials, as the Secret's annotations.
fn record_annotations(record: Option<&StoredCredentials>) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    let Some(record) = record else {
        return annotations;
    };
    annotations.insert(
        CREDENTIALS_DIGEST_ANNOTATION.into(),
        credentials_digest(record),
    );
    if let Some(hash) = &record.applied_metadata_hash {
        annotations.insert(APPLIED_METADATA_HASH_ANNOTATION.into(), hash.clone());
    }
    if record.registration_pending {
        annotations.insert(REGISTRATION_PENDING_ANNOTATION.into(), "true".into());
    }
    if let Some(lifecycle) = lifecycle_annotation(record) {
        annotations.insert(LIFECYCLE_ANNOTATION.into(), lifecycle);
    }
    if !record.tokens.is_empty() {
        let names: Vec<&str> = record.tokens.keys().map(String::as_str).collect();
        annotations.insert(DEBUG_TOKENS_ANNOTATION.into(), names.join(","));
    }
    annotations
}

/// SHA-256 over the credentials of a record, hex.
fn credentials_digest(record: &StoredCredentials) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    let previous = record.previous.as_ref();
    let mut parts = vec![
        Some(record.client_id.as_str()),
        record.client_secret.as_ref().map(|s| s.expose_secret()),
        record
            .registration_access_token
            .as_ref()
            .map(|s| s.expose_secret()),
    ];
    // A replaced registration's credentials are guarded too (records without one hash as before).
    if let Some(previous) = previous {
        parts.extend([
            Some(previous.client_id.as_str()),
            previous.client_secret.as_ref().map(|s| s.expose_secret()),
            previous
                .registration_access_token
                .as_ref()
                .map(|s| s.expose_secret()),
        ]);
    }
    for part in parts {
        // Length-prefixed, so no two different records hash the same input.
        let part = part.unwrap_or_default();
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether the observed Secret holds exactly what the operator would write for the keys it owns and is
/// labelled as it should be. Extra keys written by others are left alone.
pub fn is_in_sync(
    observed: &Secret,
    client: &SmartClient,
    data: &BTreeMap<String, ByteString>,
    record: Option<&StoredCredentials>,
    sent_at: Option<&str>,
) -> bool {
    let observed_data = observed.data.clone().unwrap_or_default();
    let labels = observed.labels();
    let wanted = render_secret(client, BTreeMap::new(), None);
    let observed_annotations = observed.annotations();
    let wanted_annotations = record_annotations(record);
    let record_ok = [
        APPLIED_METADATA_HASH_ANNOTATION,
        REGISTRATION_PENDING_ANNOTATION,
        DEBUG_TOKENS_ANNOTATION,
        CREDENTIALS_DIGEST_ANNOTATION,
        LIFECYCLE_ANNOTATION,
    ]
    .iter()
    .all(|key| {
        wanted_annotations.get(*key) == observed_annotations.get(*key)
            // Records written before the hash was kept: an absent hash is not a difference.
            || (*key == APPLIED_METADATA_HASH_ANNOTATION
                && record.is_none_or(|r| r.applied_metadata_hash.is_none()))
            // Nor is an absent digest (Secrets written before it was kept): the next write adds it.
            || (*key == CREDENTIALS_DIGEST_ANNOTATION && !observed_annotations.contains_key(*key))
            // Nor an absent lifecycle (Secrets written before it was kept; their age stands in
            // for it): a rotation, which needs it, writes it.
            || (*key == LIFECYCLE_ANNOTATION && !observed_annotations.contains_key(*key))
    });
    let labels_ok = wanted
        .metadata
        .labels
        .unwrap_or_default()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && record_ok
        && registration_sent_at(observed) == sent_at
        && controlled_by(observed, client)
        && data.iter().all(|(k, v)| observed_data.get(k) == Some(v))
}

/// Reads credentials back from a Secret the operator wrote (after a restart, when memory is empty).
/// Returns None unless the Secret belongs to this client, holds its client id, and holds the
/// credentials the operator wrote (see [`credentials_edited`]).
pub fn read_credentials(
    observed: &Secret,
    client: &SmartClient,
    token_names: &[String],
) -> Option<StoredCredentials> {
    if !controlled_by(observed, client) {
        return None;
    }
    let keys = key_names(client);
    let data = observed.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|v| !v.is_empty())
    };
    let secret = |key: &str| text(key).map(SecretString::from);
    let client_id = text(&keys.client_id)?;
    let lifecycle: Lifecycle = observed
        .annotations()
        .get(LIFECYCLE_ANNOTATION)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let tokens = token_names
        .iter()
        .filter_map(|name| {
            Some((
                name.clone(),
                StoredToken {
                    access_token: secret(&format!("{name}_access_token"))?,
                    refresh_token: secret(&format!("{name}_refresh_token")),
                    expires_at: text(&format!("{name}_expires_at")),
                },
            ))
        })
        .collect();
    let record = StoredCredentials {
        client_id,
        client_secret: secret(&keys.client_secret),
        registration_access_token: secret(&keys.registration_access_token),
        registration_client_uri: text(&keys.registration_client_uri),
        tokens,
        applied_metadata_hash: observed
            .annotations()
            .get(APPLIED_METADATA_HASH_ANNOTATION)
            .cloned(),
        registration_pending: observed
            .annotations()
            .get(REGISTRATION_PENDING_ANNOTATION)
            .is_some_and(|v| v == "true"),
        // Secrets written before the lifecycle was kept: registered when the Secret was made.
        registered_at: lifecycle
            .registered_at
            .or_else(|| observed.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        secret_expires_at: lifecycle.secret_expires_at,
        previous: text(&previous_key(&keys.client_id)).map(|client_id| PreviousRegistration {
            client_id,
            client_secret: secret(&previous_key(&keys.client_secret)),
            registration_access_token: secret(&previous_key(&keys.registration_access_token)),
            registration_client_uri: text(&previous_key(&keys.registration_client_uri)),
            replaced_at: lifecycle
                .previous_replaced_at
                .unwrap_or_else(Timestamp::now),
        }),
        handled_rotation_request: lifecycle.handled_rotation_request,
    };
    let digest = observed.annotations().get(CREDENTIALS_DIGEST_ANNOTATION);
    digest
        .is_none_or(|digest| *digest == credentials_digest(&record))
        .then_some(record)
}

/// Whether an owned Secret's credentials differ from the ones the operator wrote (someone edited
/// them): such a Secret is no record of the operator's.
pub fn credentials_edited(observed: &Secret, client: &SmartClient) -> bool {
    controlled_by(observed, client)
        && observed
            .annotations()
            .contains_key(CREDENTIALS_DIGEST_ANNOTATION)
        && read_credentials(observed, client, &[]).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SmartClientSpec;

    fn client(secret: serde_json::Value) -> SmartClient {
        let spec: SmartClientSpec = serde_json::from_value(serde_json::json!({
            "authServerRef": {"name": "s"},
            "redirectUris": ["https://app.example.org/cb"],
            "scopes": ["launch/patient"],
            "secret": secret,
        }))
        .unwrap();
        let mut client = SmartClient::new("app", spec);
        client.metadata.namespace = Some("team".into());
        client.metadata.uid = Some("uid-1".into());
        client
    }

    #[test]
    fn a_template_can_use_every_name_the_check_allows() {
        use crate::controller::secret_template::{TEMPLATE_VALUES, check_templates};
        let text: String = TEMPLATE_VALUES
            .iter()
            .map(|name| format!("{name}={{{{ {name} }}}};"))
            .collect();
        let c = client(serde_json::json!({"template": {"all": text}}));
        assert_eq!(check_templates(&c), Ok(()));
        let data = render_data(&c, &credentials(), None, &PublicValues::default());
        let all = String::from_utf8(data["all"].0.clone()).unwrap();
        assert!(
            all.starts_with("client_id=id-1;client_secret=secret-1;"),
            "{all}"
        );
    }

    fn credentials() -> StoredCredentials {
        StoredCredentials {
            client_id: "id-1".into(),
            client_secret: Some("secret-1".into()),
            registration_access_token: Some("rat-1".into()),
            registration_client_uri: Some("https://as/register/id-1".into()),
            tokens: BTreeMap::from([(
                "daniel".to_owned(),
                StoredToken {
                    access_token: "at".into(),
                    refresh_token: Some("rt".into()),
                    expires_at: Some("2026-11-23T12:00:00Z".into()),
                },
            )]),
            applied_metadata_hash: Some("h1".into()),
            registration_pending: false,
            ..Default::default()
        }
    }

    #[test]
    fn secret_uses_default_keys_owner_reference_and_labels() {
        let c = client(serde_json::json!({}));
        let secret = render_secret(
            &c,
            render_data(&c, &credentials(), None, &PublicValues::default()),
            Some(&credentials()),
        );
        assert_eq!(secret.metadata.name.as_deref(), Some("app-smart-client"));
        let data = secret.data.as_ref().unwrap();
        for key in [
            "client_id",
            "client_secret",
            "registration_access_token",
            "registration_client_uri",
            "scope",
            "daniel_access_token",
            "daniel_refresh_token",
            "daniel_expires_at",
        ] {
            assert!(data.contains_key(key), "missing {key}");
        }
        assert_eq!(secret.labels()[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        let owner = &secret.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("SmartClient", "uid-1", Some(true))
        );
    }

    #[test]
    fn a_secret_written_before_the_lifecycle_was_kept_is_in_sync_and_its_age_is_the_secrets() {
        let c = client(serde_json::json!({}));
        let mut record = credentials();
        record.registered_at = Some("2026-11-01T00:00:00Z".parse().unwrap());
        let data = render_data(&c, &record, None, &PublicValues::default());
        let mut secret = render_secret(&c, data.clone(), Some(&record));
        // An upgrade: the Secret an earlier release wrote has no lifecycle annotation.
        secret.annotations_mut().remove(LIFECYCLE_ANNOTATION);
        secret.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-01T00:00:00Z".parse().unwrap(),
            ));
        assert!(
            is_in_sync(&secret, &c, &data, Some(&record), None),
            "no rewrite (and no SecretRestored Event) for every client after an upgrade"
        );
        assert_eq!(
            read_credentials(&secret, &c, &[]).unwrap().registered_at,
            record.registered_at
        );
    }

    #[test]
    fn renamed_keys_round_trip() {
        let c = client(
            serde_json::json!({"name": "byo", "keys": {"client_id": "ID", "client_secret": "SECRET"}}),
        );
        let data = render_data(&c, &credentials(), None, &PublicValues::default());
        assert!(
            data.contains_key("ID")
                && data.contains_key("SECRET")
                && !data.contains_key("client_id")
        );
        let record = credentials();
        let secret = render_secret(&c, data.clone(), Some(&record));
        assert!(is_in_sync(&secret, &c, &data, Some(&record), None));
        let mut newer = credentials();
        newer.applied_metadata_hash = Some("h2".into());
        assert!(
            !is_in_sync(&secret, &c, &data, Some(&newer), None),
            "a newer record is out of sync"
        );
        let mut pending = credentials();
        pending.registration_pending = true;
        assert!(!is_in_sync(&secret, &c, &data, Some(&pending), None));
        let pending_secret = render_secret(&c, data.clone(), Some(&pending));
        assert!(
            read_credentials(&pending_secret, &c, &[])
                .unwrap()
                .registration_pending
        );
        let read = read_credentials(&secret, &c, &["daniel".into()]).unwrap();
        assert_eq!(read.applied_metadata_hash.as_deref(), Some("h1"));
        assert_eq!(read.client_id, "id-1");
        assert_eq!(read.client_secret.unwrap().expose_secret(), "secret-1");
        assert_eq!(read.tokens["daniel"].access_token.expose_secret(), "at");
    }

    #[test]
    fn a_record_without_a_token_the_secret_holds_is_out_of_sync() {
        let c = client(serde_json::json!({}));
        let record = credentials();
        let secret = render_secret(
            &c,
            render_data(&c, &record, None, &PublicValues::default()),
            Some(&record),
        );
        assert_eq!(secret.annotations()[DEBUG_TOKENS_ANNOTATION], "daniel");
        let mut pruned = credentials();
        pruned.tokens.clear();
        let data = render_data(&c, &pruned, None, &PublicValues::default());
        assert!(
            !is_in_sync(&secret, &c, &data, Some(&pruned), None),
            "the Secret still holds the removed token's keys"
        );
    }

    #[test]
    fn a_secret_whose_credentials_were_edited_is_no_record() {
        let c = client(serde_json::json!({}));
        let record = credentials();
        let data = render_data(&c, &record, None, &PublicValues::default());
        let mut secret = render_secret(&c, data, Some(&record));
        assert!(read_credentials(&secret, &c, &[]).is_some());
        assert!(!credentials_edited(&secret, &c));
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("client_secret".into(), ByteString(b"edited".to_vec()));
        assert!(read_credentials(&secret, &c, &[]).is_none());
        assert!(credentials_edited(&secret, &c));
        // Written before the digest was kept: trusted as before.
        secret
            .annotations_mut()
            .remove(CREDENTIALS_DIGEST_ANNOTATION);
        assert!(read_credentials(&secret, &c, &[]).is_some());
    }

    #[test]
    fn long_names_become_valid_distinct_label_values() {
        let short = "growth-chart";
        assert_eq!(client_label_value(short), short);
        let long_a = format!("{}a", "x".repeat(70));
        let long_b = format!("{}b", "x".repeat(70));
        let (a, b) = (client_label_value(&long_a), client_label_value(&long_b));
        assert_eq!(a.len(), 63);
        assert_ne!(a, b);
        assert!(a.ends_with(|c: char| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn only_a_secret_this_client_controls_is_ours() {
        let c = client(serde_json::json!({"name": "shared"}));
        assert_eq!(secret_ownership(None, &c), SecretOwnership::Absent);
        let ours = render_secret(&c, BTreeMap::new(), None);
        assert_eq!(secret_ownership(Some(&ours), &c), SecretOwnership::Ours);

        let mut users = Secret::default();
        users.metadata.name = Some("shared".into());
        assert!(matches!(
            secret_ownership(Some(&users), &c),
            SecretOwnership::Foreign(why) if why.contains("not created by the operator")
        ));

        // Another SmartClient's Secret, labels and all: the uid decides.
        let mut other = client(serde_json::json!({"name": "shared"}));
        other.metadata.name = Some("other".into());
        other.metadata.uid = Some("uid-2".into());
        let theirs = render_secret(&other, BTreeMap::new(), None);
        assert!(matches!(
            secret_ownership(Some(&theirs), &c),
            SecretOwnership::Foreign(why) if why.contains("SmartClient other")
        ));
        assert!(read_credentials(&theirs, &c, &[]).is_none());
    }

    #[test]
    fn an_edited_value_is_out_of_sync() {
        let c = client(serde_json::json!({}));
        let data = render_data(&c, &credentials(), None, &PublicValues::default());
        let mut secret = render_secret(&c, data.clone(), None);
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("client_secret".into(), ByteString(b"edited".to_vec()));
        assert!(!is_in_sync(&secret, &c, &data, None, None));
    }
}
