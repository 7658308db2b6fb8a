//! Finding an auth server's endpoints: SMART configuration and OpenID metadata for RFC7591, the FHIR
//! CapabilityStatement's `oauth-uris` extension for the S4S dialects, then the user's overrides.

use serde::Deserialize;
use serde_json::Value;

use super::AuthServerError;
use super::http::{HttpClient, Redactor, decode_json};
use crate::crd::{Dialect, EndpointOverrides};

/// The SMART extension on a CapabilityStatement's `rest.security` that lists OAuth endpoints.
pub const OAUTH_URIS_EXTENSION: &str =
    "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

/// Endpoints and capabilities of an auth server after discovery and overrides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerEndpoints {
    pub issuer: Option<String>,
    pub registration: Option<String>,
    pub token: Option<String>,
    pub authorization: Option<String>,
    pub debug_token: Option<String>,
    pub debug_introspect: Option<String>,
    pub scopes_supported: Vec<String>,
    /// SMART capabilities the server advertises (`launch-standalone`, `client-confidential-symmetric`, ...).
    pub smart_capabilities: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct OAuthMetadata {
    issuer: Option<String>,
    registration_endpoint: Option<String>,
    token_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
    #[serde(default)]
    scopes_supported: Vec<String>,
    #[serde(default)]
    capabilities: Vec<String>,
}

/// Discovers the endpoints of a server. With `endpoints.registration` overridden, discovery failures are
/// tolerated (the override is enough to register); otherwise they are errors.
pub async fn discover(
    http: &HttpClient,
    dialect: Dialect,
    fhir_base_url: Option<&str>,
    overrides: Option<&EndpointOverrides>,
) -> Result<ServerEndpoints, AuthServerError> {
    let discovered = match fhir_base_url {
        None => Ok(ServerEndpoints::default()),
        Some(base) => match dialect {
            Dialect::Rfc7591 => discover_oauth_metadata(http, base).await,
            Dialect::S4s | Dialect::S4sLegacy => discover_capability_statement(http, base).await,
        },
    };
    let has_registration_override = overrides.is_some_and(|o| o.registration.is_some());
    let discovered = match discovered {
        Ok(found) => found,
        Err(_) if has_registration_override => ServerEndpoints::default(),
        Err(e) => return Err(e),
    };
    // Debug endpoints sit beside the registration endpoint actually used, overridden or not.
    let endpoints = with_debug_endpoints(dialect, apply_overrides(discovered, overrides));
    if endpoints.registration.is_none() {
        return Err(AuthServerError::Discovery {
            detail:
                "the server advertises no registration endpoint; set spec.endpoints.registration"
                    .to_owned(),
        });
    }
    Ok(endpoints)
}

async fn discover_oauth_metadata(
    http: &HttpClient,
    fhir_base_url: &str,
) -> Result<ServerEndpoints, AuthServerError> {
    let smart_url = well_known(fhir_base_url, "smart-configuration");
    let smart: OAuthMetadata = fetch_json(http, &smart_url).await?;
    let mut endpoints = ServerEndpoints {
        issuer: smart.issuer.clone(),
        registration: smart.registration_endpoint,
        token: smart.token_endpoint,
        authorization: smart.authorization_endpoint,
        scopes_supported: smart.scopes_supported,
        smart_capabilities: smart.capabilities,
        ..Default::default()
    };
    // SMART configuration need not list the registration endpoint; the issuer's OpenID metadata does.
    if endpoints.registration.is_none()
        && let Some(issuer) = &smart.issuer
    {
        let openid: OAuthMetadata =
            fetch_json(http, &well_known(issuer, "openid-configuration")).await?;
        endpoints.registration = openid.registration_endpoint;
        endpoints.token = endpoints.token.or(openid.token_endpoint);
        endpoints.authorization = endpoints.authorization.or(openid.authorization_endpoint);
        if endpoints.scopes_supported.is_empty() {
            endpoints.scopes_supported = openid.scopes_supported;
        }
    }
    Ok(endpoints)
}

async fn discover_capability_statement(
    http: &HttpClient,
    fhir_base_url: &str,
) -> Result<ServerEndpoints, AuthServerError> {
    let url = format!("{}/metadata", fhir_base_url.trim_end_matches('/'));
    let statement: Value = fetch_json(http, &url).await?;
    Ok(parse_oauth_uris(&statement))
}

/// Reads the `oauth-uris` extension of a CapabilityStatement.
pub fn parse_oauth_uris(statement: &Value) -> ServerEndpoints {
    let mut endpoints = ServerEndpoints::default();
    let rests = statement["rest"].as_array().cloned().unwrap_or_default();
    let uris = rests
        .iter()
        .filter_map(|rest| rest["security"]["extension"].as_array())
        .flatten()
        .filter(|ext| ext["url"] == OAUTH_URIS_EXTENSION)
        .filter_map(|ext| ext["extension"].as_array())
        .flatten();
    for uri in uris {
        let value = uri["valueUri"].as_str().map(str::to_owned);
        match uri["url"].as_str() {
            Some("register") => endpoints.registration = value,
            Some("token") => endpoints.token = value,
            Some("authorize") => endpoints.authorization = value,
            _ => {}
        }
    }
    endpoints
}

/// The Sync-for-Science debug API sits beside the registration endpoint: `.../oauth/register` →
/// `.../oauth/debug/token` and `.../oauth/debug/introspect`.
fn with_debug_endpoints(dialect: Dialect, mut endpoints: ServerEndpoints) -> ServerEndpoints {
    if dialect.mints_debug_tokens()
        && let Some(registration) = &endpoints.registration
        && let Ok(base) = url::Url::parse(registration)
    {
        if endpoints.debug_token.is_none() {
            endpoints.debug_token = base.join("debug/token").ok().map(String::from);
        }
        if endpoints.debug_introspect.is_none() {
            endpoints.debug_introspect = base.join("debug/introspect").ok().map(String::from);
        }
    }
    endpoints
}

/// Overrides win over discovery.
pub fn apply_overrides(
    mut endpoints: ServerEndpoints,
    overrides: Option<&EndpointOverrides>,
) -> ServerEndpoints {
    if let Some(o) = overrides {
        let pick = |o: &Option<crate::crd::schema::ServerUrl>, found: Option<String>| {
            o.as_ref().map(|u| u.0.clone()).or(found)
        };
        endpoints.registration = pick(&o.registration, endpoints.registration);
        endpoints.token = pick(&o.token, endpoints.token);
        endpoints.debug_token = pick(&o.debug_token, endpoints.debug_token);
        endpoints.debug_introspect = pick(&o.debug_introspect, endpoints.debug_introspect);
    }
    endpoints
}

fn well_known(base: &str, document: &str) -> String {
    format!("{}/.well-known/{document}", base.trim_end_matches('/'))
}

async fn fetch_json<T: serde::de::DeserializeOwned>(
    http: &HttpClient,
    url: &str,
) -> Result<T, AuthServerError> {
    let redactor = Redactor::new();
    let answer = http
        .send(http.get(url), url, &redactor)
        .await
        .map_err(|e| AuthServerError::Discovery {
            detail: e.to_string(),
        })?;
    if !answer.status.is_success() {
        return Err(AuthServerError::Discovery {
            detail: format!(
                "GET {url} answered HTTP {}: {}",
                answer.status.as_u16(),
                redactor.excerpt(&answer.body)
            ),
        });
    }
    decode_json(&answer, url, &redactor).map_err(|e| AuthServerError::Discovery {
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn oauth_uris_are_read_from_the_capability_statement() {
        let statement = json!({
            "resourceType": "CapabilityStatement",
            "rest": [{"security": {"extension": [{
                "url": OAUTH_URIS_EXTENSION,
                "extension": [
                    {"url": "register", "valueUri": "https://s4s.example.org/oauth/register"},
                    {"url": "token", "valueUri": "https://s4s.example.org/oauth/token"},
                    {"url": "authorize", "valueUri": "https://s4s.example.org/oauth/authorize"}
                ]
            }]}}]
        });
        let endpoints = with_debug_endpoints(Dialect::S4s, parse_oauth_uris(&statement));
        assert_eq!(
            endpoints.registration.as_deref(),
            Some("https://s4s.example.org/oauth/register")
        );
        assert_eq!(
            endpoints.token.as_deref(),
            Some("https://s4s.example.org/oauth/token")
        );
        assert_eq!(
            endpoints.debug_token.as_deref(),
            Some("https://s4s.example.org/oauth/debug/token")
        );
        assert_eq!(
            endpoints.debug_introspect.as_deref(),
            Some("https://s4s.example.org/oauth/debug/introspect")
        );
    }

    #[test]
    fn overrides_replace_discovered_endpoints() {
        let discovered = ServerEndpoints {
            registration: Some("https://a/register".into()),
            token: Some("https://a/token".into()),
            ..Default::default()
        };
        let overrides = EndpointOverrides {
            token: Some("https://b/token".into()),
            ..Default::default()
        };
        let endpoints = apply_overrides(discovered, Some(&overrides));
        assert_eq!(
            endpoints.registration.as_deref(),
            Some("https://a/register")
        );
        assert_eq!(endpoints.token.as_deref(), Some("https://b/token"));
    }
}
