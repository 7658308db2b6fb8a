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
    /// `token_endpoint_auth_methods_supported`; empty when the server does not say.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// `token_endpoint_auth_signing_alg_values_supported`; empty when the server does not say.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// `grant_types_supported`; empty when the server does not say.
    pub grant_types_supported: Vec<String>,
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
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    grant_types_supported: Vec<String>,
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
    if let Some(base) = fhir_base_url {
        check_discovered(&discovered, base, overrides)?;
    }
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
        token_endpoint_auth_methods_supported: smart.token_endpoint_auth_methods_supported,
        token_endpoint_auth_signing_alg_values_supported: smart
            .token_endpoint_auth_signing_alg_values_supported,
        grant_types_supported: smart.grant_types_supported,
        ..Default::default()
    };
    // SMART configuration need not list the registration endpoint; the issuer's OpenID metadata does.
    if endpoints.registration.is_none()
        && let Some(issuer) = &smart.issuer
    {
        // The issuer is fetched from as well: it obeys the rules of any discovered URL.
        endpoint_allowed(issuer, fhir_base_url, &[]).map_err(|why| AuthServerError::Discovery {
            detail: format!("the discovered issuer {why}"),
        })?;
        let openid: OAuthMetadata =
            fetch_json(http, &well_known(issuer, "openid-configuration")).await?;
        endpoints.registration = openid.registration_endpoint;
        endpoints.token = endpoints.token.or(openid.token_endpoint);
        endpoints.authorization = endpoints.authorization.or(openid.authorization_endpoint);
        if endpoints.scopes_supported.is_empty() {
            endpoints.scopes_supported = openid.scopes_supported;
        }
        for (ours, theirs) in [
            (
                &mut endpoints.token_endpoint_auth_methods_supported,
                openid.token_endpoint_auth_methods_supported,
            ),
            (
                &mut endpoints.token_endpoint_auth_signing_alg_values_supported,
                openid.token_endpoint_auth_signing_alg_values_supported,
            ),
            (
                &mut endpoints.grant_types_supported,
                openid.grant_types_supported,
            ),
        ] {
            if ours.is_empty() {
                *ours = theirs;
            }
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

/// Every discovered endpoint that an override does not replace must pass [`endpoint_allowed`]
/// (review S1). Debug endpoints are derived from the registration endpoint, so they follow it.
fn check_discovered(
    discovered: &ServerEndpoints,
    fhir_base_url: &str,
    overrides: Option<&EndpointOverrides>,
) -> Result<(), AuthServerError> {
    let allowed: Vec<String> = overrides
        .and_then(|o| o.allowed_hosts.as_ref())
        .map(|hosts| hosts.iter().map(|h| h.0.clone()).collect())
        .unwrap_or_default();
    let overridden = |pick: fn(&EndpointOverrides) -> bool| overrides.is_some_and(pick);
    let checks = [
        (
            "registration",
            &discovered.registration,
            overridden(|o| o.registration.is_some()),
        ),
        (
            "token",
            &discovered.token,
            overridden(|o| o.token.is_some()),
        ),
        ("authorization", &discovered.authorization, false),
    ];
    for (name, url, replaced) in checks {
        if let (Some(url), false) = (url, replaced) {
            endpoint_allowed(url, fhir_base_url, &allowed).map_err(|why| {
                AuthServerError::Discovery {
                    detail: format!("the discovered {name} endpoint {why}"),
                }
            })?;
        }
    }
    Ok(())
}

/// Whether a URL found in a discovery document may be used: https, or http only to localhost, as for
/// URLs in a spec; and on the host of `fhir_base_url` or one of `allowed_hosts` (`*.domain` for any host
/// below it). The error says why, naming the URL (discovery documents hold no secrets).
pub fn endpoint_allowed(
    url: &str,
    fhir_base_url: &str,
    allowed_hosts: &[String],
) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|_| format!("{url} is not an absolute URL"))?;
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let loopback = matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]" | "::1");
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        other => {
            return Err(format!(
                "{url} uses {other}://: only https (http only to localhost) may carry credentials"
            ));
        }
    }
    let base_host = url::Url::parse(fhir_base_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    let allowed = base_host.as_deref() == Some(host.as_str())
        || allowed_hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => *pattern == host,
            });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "{url} is on host {host}, which is neither the host of fhirBaseUrl nor listed in spec.endpoints.allowedHosts"
        ))
    }
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

    #[test]
    fn discovered_endpoints_stay_on_https_and_on_the_hosts_the_admin_named() {
        let base = "https://fhir.example.org/r4";
        let ok = |url: &str, allowed: &[&str]| {
            let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
            endpoint_allowed(url, base, &allowed)
        };
        assert!(ok("https://fhir.example.org/oauth/token", &[]).is_ok());
        assert!(ok("https://FHIR.example.org/register", &[]).is_ok());
        assert!(ok("https://auth.example.org/token", &["auth.example.org"]).is_ok());
        assert!(ok("https://a.auth.example.org/token", &["*.example.org"]).is_ok());
        // Another host, named by nobody but the discovery document.
        let other = ok("https://collector.example.net/register", &[]).unwrap_err();
        assert!(other.contains("allowedHosts"), "{other}");
        assert!(ok("https://example.org.evil.net/t", &["*.example.org"]).is_err());
        // A downgrade to plain http, even on the right host.
        let plain = ok("http://fhir.example.org/oauth/token", &[]).unwrap_err();
        assert!(plain.contains("http://"), "{plain}");
        // Loopback servers (the dev server, the real auth-proxy in tests) answer over http.
        assert!(
            endpoint_allowed(
                "http://127.0.0.1:8080/oauth/token",
                "http://127.0.0.1:8080/api/fhir",
                &[]
            )
            .is_ok()
        );
        assert!(ok("ftp://fhir.example.org/x", &[]).is_err());
    }
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
