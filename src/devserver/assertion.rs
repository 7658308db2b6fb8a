//! Client assertions at the RFC 7591 token endpoint (RFC 7523 §2.2, `private_key_jwt`), checked the
//! way Keycloak 26 checks them (`tests/keycloak.rs` pins its answers): the signature against the
//! client's registered JWK Set, found by `kid`; `exp`; the audience (the token endpoint or the
//! issuer); a `jti` used once. Every refusal is 400 `invalid_client` with Keycloak's description.

use std::collections::HashMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::Value;

/// `client_assertion_type` for a JWT assertion.
pub(super) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    jti: Option<String>,
    exp: Option<i64>,
}

/// The client an assertion claims to come from (its `sub`), before anything is verified: only to
/// find the keys to verify it with.
pub(super) fn claimed_client_id(assertion: &str) -> Option<String> {
    jsonwebtoken::dangerous::insecure_decode::<Claims>(assertion)
        .ok()?
        .claims
        .sub
}

/// Assertions seen, by `jti`, with the time each stops being valid (then it is forgotten).
#[derive(Debug, Default)]
pub(super) struct UsedAssertions(HashMap<String, i64>);

impl UsedAssertions {
    /// Records `jti`; false if it was seen before and is still valid.
    fn first_use(&mut self, jti: &str, exp: i64, now: i64) -> bool {
        self.0.retain(|_, until| *until > now);
        self.0.insert(jti.to_owned(), exp).is_none()
    }
}

/// Verifies an assertion for the client whose registered metadata is `metadata`. `audiences` are the
/// values `aud` may take. The error is Keycloak's `error_description`.
pub(super) fn verify(
    assertion: &str,
    metadata: &serde_json::Map<String, Value>,
    audiences: &[String],
    used: &mut UsedAssertions,
    now: i64,
) -> Result<(), &'static str> {
    const UNLOADABLE: &str = "Unable to load public key";
    let header = decode_header(assertion)
        .map_err(|_| "Client authentication with signed JWT failed: Failed to decode token")?;
    let jwks: JwkSet = metadata
        .get("jwks")
        .cloned()
        .and_then(|set| serde_json::from_value(set).ok())
        .ok_or(UNLOADABLE)?;
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        None if jwks.keys.len() == 1 => jwks.keys.first(),
        None => None,
    }
    .ok_or(UNLOADABLE)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| UNLOADABLE)?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(audiences);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    validation.leeway = 0;
    let claims = decode::<Claims>(assertion, &key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature
            | jsonwebtoken::errors::ErrorKind::ImmatureSignature => "Token is not active",
            jsonwebtoken::errors::ErrorKind::InvalidAudience => "Invalid token audience",
            _ => "Signature on JWT token failed validation",
        })?
        .claims;
    let jti = claims.jti.ok_or("Missing ID on the token")?;
    if !used.first_use(&jti, claims.exp.unwrap_or(now), now) {
        return Err("Token reuse detected");
    }
    Ok(())
}
