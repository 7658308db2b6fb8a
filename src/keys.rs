//! Client signing keys for `private_key_jwt` (RFC 7523, SMART's client-confidential-asymmetric
//! profile): generated here, kept in the client's Secret as PKCS#8 PEM, published as a JWK Set whose
//! `kid` is the RFC 7638 thumbprint, and used to sign client assertions for the token endpoint.
//!
//! Nothing here puts key material in an error or a `Debug` output: the private key stays a
//! [`SecretString`] from generation to the Secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p384::elliptic_curve::Generate;
use p384::pkcs8::{EncodePrivateKey, LineEnding};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// RSA keys the operator generates: SMART requires at least 2048 bits for RS384.
pub const RSA_BITS: usize = 2048;

/// How long a client assertion is valid: SMART Backend Services allow at most five minutes.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// The signing algorithms SMART names for asymmetric client authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SigningAlgorithm {
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// RSASSA-PKCS1-v1_5 with SHA-384, on a 2048-bit key.
    RS384,
}

impl SigningAlgorithm {
    /// The JWA name (`ES384`, `RS384`), as in a JWT header or `token_endpoint_auth_signing_alg`.
    pub fn jwa_name(self) -> &'static str {
        match self {
            SigningAlgorithm::ES384 => "ES384",
            SigningAlgorithm::RS384 => "RS384",
        }
    }

    fn jwt_algorithm(self) -> Algorithm {
        match self {
            SigningAlgorithm::ES384 => Algorithm::ES384,
            SigningAlgorithm::RS384 => Algorithm::RS384,
        }
    }
}

/// What went wrong with a key. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating a {algorithm} key failed: {detail}")]
    Generate {
        algorithm: &'static str,
        detail: String,
    },
    #[error(
        "the {algorithm} private key in the Secret cannot be read ({detail}); delete the key so the operator makes a new one"
    )]
    Unreadable {
        algorithm: &'static str,
        detail: String,
    },
    #[error("signing a client assertion failed: {0}")]
    Sign(String),
}

/// A client's private key with its algorithm and key id.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: SigningAlgorithm,
    kid: String,
    private_key_pem: SecretString,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.algorithm == other.algorithm
            && self.kid == other.kid
            && self.private_key_pem.expose_secret() == other.private_key_pem.expose_secret()
    }
}

impl SigningKey {
    /// A new key pair from the operating system's random source.
    pub fn generate(algorithm: SigningAlgorithm) -> Result<Self, KeyError> {
        let failed = |detail: String| KeyError::Generate {
            algorithm: algorithm.jwa_name(),
            detail,
        };
        let pem = match algorithm {
            // The thread-local generator: a CSPRNG seeded from the operating system.
            SigningAlgorithm::ES384 => {
                p384::SecretKey::generate_from_rng(&mut rand::rng()).to_pkcs8_pem(LineEnding::LF)
            }
            SigningAlgorithm::RS384 => rsa::PrivateKey::new(&mut rand::rng(), RSA_BITS)
                .map_err(|e| failed(e.to_string()))?
                .to_pkcs8_pem(LineEnding::LF),
        }
        .map_err(|e| failed(e.to_string()))?;
        Self::from_pem(algorithm, SecretString::from(pem.as_str()))
    }

    /// The key kept in a Secret (PKCS#8 PEM); its kid is computed, never trusted from elsewhere.
    pub fn from_pem(algorithm: SigningAlgorithm, pem: SecretString) -> Result<Self, KeyError> {
        let unreadable = |detail: String| KeyError::Unreadable {
            algorithm: algorithm.jwa_name(),
            detail,
        };
        let bytes = pem.expose_secret().as_bytes();
        let encoding = match algorithm {
            SigningAlgorithm::ES384 => EncodingKey::from_ec_pem(bytes),
            SigningAlgorithm::RS384 => EncodingKey::from_rsa_pem(bytes),
        }
        // The crate's error kinds name the format, never the key.
        .map_err(|e| unreadable(format!("{:?}", e.kind())))?;
        let jwk = Jwk::from_encoding_key(&encoding, algorithm.jwt_algorithm())
            .map_err(|e| unreadable(format!("{:?}", e.kind())))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| unreadable(format!("{:?}", e.kind())))?;
        Ok(Self {
            algorithm,
            kid,
            private_key_pem: pem,
            encoding,
        })
    }

    /// A key read back without knowing its algorithm: ES384, else RS384.
    pub fn from_pem_any(pem: SecretString) -> Result<Self, KeyError> {
        Self::from_pem(SigningAlgorithm::ES384, pem.clone())
            .or_else(|_| Self::from_pem(SigningAlgorithm::RS384, pem))
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// The RFC 7638 thumbprint (SHA-256) of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 PEM, for the Secret only.
    pub fn private_key_pem(&self) -> &SecretString {
        &self.private_key_pem
    }

    /// The public key as a JWK: `kid`, `alg` and `use: sig` set.
    pub fn public_jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.algorithm.jwt_algorithm())
            .expect("a key that was read once converts again");
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(match self.algorithm {
            SigningAlgorithm::ES384 => KeyAlgorithm::ES384,
            SigningAlgorithm::RS384 => KeyAlgorithm::RS384,
        });
        jwk
    }

    /// A client assertion for `token_endpoint` (RFC 7523 §3 as SMART profiles it): `iss` = `sub` =
    /// the client id, `aud` = the token endpoint, `exp` at most five minutes ahead, a unique `jti`,
    /// and the key's `kid` in the header so the server picks the right key during a rotation.
    pub fn client_assertion(
        &self,
        client_id: &str,
        token_endpoint: &str,
        now: SystemTime,
    ) -> Result<SecretString, KeyError> {
        let issued = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": token_endpoint,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME.as_secs(),
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let mut header = Header::new(self.algorithm.jwt_algorithm());
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map(SecretString::from)
            .map_err(|e| KeyError::Sign(format!("{:?}", e.kind())))
    }
}

/// The JWK Set a server is given for these keys (the registration's `jwks`).
pub fn jwk_set<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> JwkSet {
    JwkSet {
        keys: keys.into_iter().map(SigningKey::public_jwk).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};

    fn verify(key: &SigningKey, assertion: &str, audience: &str) -> serde_json::Value {
        let set = jwk_set([key]);
        let header = decode_header(assertion).unwrap();
        let jwk = set
            .find(header.kid.as_deref().unwrap())
            .expect("kid in the set");
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        decode::<serde_json::Value>(assertion, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .expect("the assertion verifies against the published key")
            .claims
    }

    #[test]
    fn assertions_of_each_algorithm_verify_against_the_published_jwk() {
        for algorithm in [SigningAlgorithm::ES384, SigningAlgorithm::RS384] {
            let key = SigningKey::generate(algorithm).unwrap();
            let endpoint = "https://auth.example.org/token";
            let now = SystemTime::now();
            let a = key.client_assertion("client-1", endpoint, now).unwrap();
            let b = key.client_assertion("client-1", endpoint, now).unwrap();
            let claims = verify(&key, a.expose_secret(), endpoint);
            assert_eq!(claims["iss"], "client-1");
            assert_eq!(claims["sub"], "client-1");
            let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
            assert!(lifetime <= 300, "{algorithm:?}: {lifetime}s");
            let other = verify(&key, b.expose_secret(), endpoint);
            assert_ne!(
                claims["jti"], other["jti"],
                "every assertion has its own jti"
            );
            let jwk = serde_json::to_value(key.public_jwk()).unwrap();
            assert_eq!(jwk["alg"], algorithm.jwa_name());
            assert_eq!(jwk["use"], "sig");
            assert!(jwk.get("d").is_none(), "no private part in the JWK: {jwk}");
        }
    }

    #[test]
    fn a_key_read_back_from_its_pem_is_the_same_key_with_the_same_kid() {
        for algorithm in [SigningAlgorithm::ES384, SigningAlgorithm::RS384] {
            let key = SigningKey::generate(algorithm).unwrap();
            let pem = key.private_key_pem().expose_secret();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
            let again = SigningKey::from_pem(algorithm, SecretString::from(pem)).unwrap();
            assert_eq!(again, key);
            assert_ne!(
                SigningKey::generate(algorithm).unwrap().kid(),
                key.kid(),
                "a new key has a new kid"
            );
        }
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 §3.1: the example RSA key's thumbprint.
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn a_key_and_its_errors_never_show_the_private_key() {
        let key = SigningKey::generate(SigningAlgorithm::ES384).unwrap();
        let pem = key.private_key_pem().expose_secret().to_owned();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!format!("{key:?}").contains(&body[..20]));
        let damaged = pem.replace(&body[10..30], "AAAAAAAAAAAAAAAAAAAA");
        let error = SigningKey::from_pem(SigningAlgorithm::ES384, SecretString::from(damaged))
            .unwrap_err()
            .to_string();
        assert!(!error.contains(&body[30..50]), "{error}");
        assert!(error.contains("delete the key"), "{error}");
    }
}
