//! Hand-written schemas for string types whose every value is checked by CEL at admission.
//!
//! schemars cannot attach `x-kubernetes-validations` to the items of a `Vec<String>`, so each such value
//! is a transparent newtype with its own schema. Keeping the rules here, next to each other, makes the
//! grammar the apiserver enforces easy to review.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The scopes SMART App Launch defines outside the resource grammar.
pub const SMART_STANDALONE_SCOPES: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
];

/// SMART v1 resource scope: `patient/Observation.read`, `user/*.*`.
const SMART_V1_RESOURCE_SCOPE: &str =
    "^(patient|user|system)/([A-Z][A-Za-z]*|[*])[.](read|write|[*])$";
/// SMART v2 resource scope: permissions are a non-empty subsequence of `cruds`, in that order, with an
/// optional query that narrows them (`patient/Observation.rs?category=laboratory`).
const SMART_V2_RESOURCE_SCOPE: &str =
    "^(patient|user|system)/([A-Z][A-Za-z]*|[*])[.](cr?u?d?s?|ru?d?s?|ud?s?|ds?|s)([?][!-~]+)?$";
/// Looks like a v2 scope whose permission letters are valid but out of order or repeated.
const SMART_V2_LETTERS_ANY_ORDER: &str =
    "^(patient|user|system)/([A-Z][A-Za-z]*|[*])[.][cruds]+([?].*)?$";

/// Longest scope accepted; v2 queries can carry a coding system URL.
pub const MAX_SCOPE_LENGTH: u32 = 256;
/// Longest URL accepted anywhere in a spec.
pub const MAX_URL_LENGTH: u32 = 2048;

/// One SMART on FHIR scope (v1 or v2 grammar, or one of the standalone scopes such as `openid`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SmartScope(pub String);

impl JsonSchema for SmartScope {
    fn schema_name() -> Cow<'static, str> {
        "SmartScope".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let standalone = SMART_STANDALONE_SCOPES
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let rule = format!(
            "self in [{standalone}] || self.matches('{SMART_V1_RESOURCE_SCOPE}') || self.matches('{SMART_V2_RESOURCE_SCOPE}')"
        );
        let message = format!(
            "self.matches('{SMART_V2_LETTERS_ANY_ORDER}') ? 'SMART v2 permissions must be a subset of c, r, u, d, s in that order, each at most once (e.g. patient/Observation.rs), got ' + self : 'must be a SMART scope: <patient|user|system>/<ResourceType|*>.<read|write|*> (v1), <patient|user|system>/<ResourceType|*>.<cruds>[?query] (v2), or one of {}; got ' + self",
            SMART_STANDALONE_SCOPES.join(", ")
        );
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_SCOPE_LENGTH,
            "x-kubernetes-validations": [{
                "rule": rule,
                "messageExpression": message,
                "reason": "FieldValueInvalid",
            }],
        })
    }
}

/// An OAuth redirect URI: absolute https, or http to a loopback host (RFC 8252 native apps).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RedirectUri(pub String);

impl JsonSchema for RedirectUri {
    fn schema_name() -> Cow<'static, str> {
        "RedirectUri".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_URL_LENGTH,
            "x-kubernetes-validations": [
                {
                    "rule": "isURL(self) && url(self).getHostname() != '' && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && url(self).getHostname() in ['localhost', '127.0.0.1', '::1']))",
                    "messageExpression": "'redirect URIs must be absolute https:// URLs (http:// only for localhost, 127.0.0.1 or [::1]); got ' + self",
                    "reason": "FieldValueInvalid",
                },
                {
                    "rule": "!self.contains('#')",
                    "message": "redirect URIs must not contain a fragment (RFC 6749 section 3.1.2)",
                    "reason": "FieldValueInvalid",
                },
            ],
        })
    }
}

/// An https URL (a logo, a policy page).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HttpsUrl(pub String);

impl JsonSchema for HttpsUrl {
    fn schema_name() -> Cow<'static, str> {
        "HttpsUrl".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": MAX_URL_LENGTH,
            "x-kubernetes-validations": [{
                "rule": "isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname() != ''",
                "messageExpression": "'must be an absolute https:// URL; got ' + self",
                "reason": "FieldValueInvalid",
            }],
        })
    }
}

/// The URL of an auth server or one of its endpoints: https, or http to a loopback host (for a server
/// running beside the operator). Plain http elsewhere would send credentials in clear text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerUrl(pub String);

impl JsonSchema for ServerUrl {
    fn schema_name() -> Cow<'static, str> {
        "ServerUrl".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_URL_LENGTH,
            "x-kubernetes-validations": [{
                "rule": "isURL(self) && url(self).getHostname() != '' && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && url(self).getHostname() in ['localhost', '127.0.0.1', '::1']))",
                "messageExpression": "'must be an absolute https:// URL (http:// only for localhost, 127.0.0.1 or [::1]); got ' + self",
                "reason": "FieldValueInvalid",
            }],
        })
    }
}

/// An e-mail address of a person responsible for a client (RFC 7591 `contacts`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(pub String);

impl JsonSchema for EmailAddress {
    fn schema_name() -> Cow<'static, str> {
        "EmailAddress".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 254,
            "pattern": "^[^@ ]+@[^@ ]+$",
        })
    }
}

macro_rules! impl_string_newtype {
    ($($name:ident),*) => {$(
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }
    )*};
}
impl_string_newtype!(SmartScope, RedirectUri, HttpsUrl, ServerUrl, EmailAddress);
