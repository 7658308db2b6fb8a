//! The HTTP layer every dialect uses: one client per auth server (rustls, optional CA bundle, timeouts,
//! no redirects), bounded response bodies, `Retry-After`, and redaction of secrets from anything that
//! could end up in an error message.

use std::time::{Duration, SystemTime};

use reqwest::{RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::AuthServerError;

/// Limits and trust for one auth server's HTTP client.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Bodies larger than this are refused: an auth server answer is a few KiB of JSON.
    pub max_body_bytes: usize,
    /// PEM bundle trusted instead of the system roots.
    pub ca_bundle_pem: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_body_bytes: 1024 * 1024,
            ca_bundle_pem: None,
        }
    }
}

/// An HTTP client for one auth server.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: reqwest::Client,
    max_body_bytes: usize,
}

/// A complete answer: status, bounded body and the server's `Retry-After`, if any.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: StatusCode,
    pub body: Vec<u8>,
    pub retry_after: Option<Duration>,
}

impl HttpClient {
    pub fn new(settings: &HttpSettings) -> Result<Self, AuthServerError> {
        // Redirects are not followed: a registration endpoint that redirects would make us resend the
        // initial access token to wherever it points.
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("smart-operator/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_bundle_pem {
            let certificates =
                reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
                    AuthServerError::Configuration {
                        detail: format!("the CA bundle is not valid PEM: {e}"),
                    }
                })?;
            if certificates.is_empty() {
                return Err(AuthServerError::Configuration {
                    detail: "the CA bundle holds no certificate".to_owned(),
                });
            }
            builder = builder.tls_certs_only(certificates);
        }
        let inner = builder
            .build()
            .map_err(|e| AuthServerError::Configuration {
                detail: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Self {
            inner,
            max_body_bytes: settings.max_body_bytes,
        })
    }

    pub fn get(&self, url: &str) -> RequestBuilder {
        self.inner.get(url).header("accept", "application/json")
    }

    pub fn post(&self, url: &str) -> RequestBuilder {
        self.inner.post(url).header("accept", "application/json")
    }

    pub fn put(&self, url: &str) -> RequestBuilder {
        self.inner.put(url).header("accept", "application/json")
    }

    pub fn delete(&self, url: &str) -> RequestBuilder {
        self.inner.delete(url).header("accept", "application/json")
    }

    /// Sends a request and reads the whole (bounded) answer. Transport failures become typed errors
    /// whose text has every secret of `redactor` removed.
    pub async fn send(
        &self,
        request: RequestBuilder,
        endpoint: &str,
        redactor: &Redactor,
    ) -> Result<HttpAnswer, AuthServerError> {
        let transport_error = |e: reqwest::Error| {
            if e.is_timeout() {
                AuthServerError::Timeout {
                    endpoint: endpoint.to_owned(),
                }
            } else {
                // Without the URL: an introspection URL carries a token in its query, and redaction
                // would miss it in its URL-encoded form (review S5).
                AuthServerError::Unreachable {
                    endpoint: endpoint.to_owned(),
                    request_sent: !e.is_connect(),
                    detail: redactor.redact(&error_chain(&e.without_url())),
                }
            }
        };
        let mut response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > self.max_body_bytes {
                return Err(AuthServerError::Protocol {
                    endpoint: endpoint.to_owned(),
                    detail: format!("the answer is larger than {} bytes", self.max_body_bytes),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpAnswer {
            status,
            body,
            retry_after,
        })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` is either delay-seconds or an HTTP-date (RFC 9110 section 10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Removes known secret values from text that may be shown to users (errors, conditions, Events).
#[derive(Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a secret to redact. Very short values are ignored: replacing them would mangle ordinary
    /// words, and a secret that short is not worth protecting this way.
    pub fn with(mut self, secret: Option<&SecretString>) -> Self {
        if let Some(secret) = secret {
            let value = secret.expose_secret();
            if value.len() >= 6 {
                self.secrets.push(value.to_owned());
            }
        }
        self
    }

    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "[REDACTED]");
        }
        text
    }

    /// A short, redacted, printable excerpt of a response body for error messages.
    pub fn excerpt(&self, body: &[u8]) -> String {
        const MAX: usize = 300;
        let text = String::from_utf8_lossy(body);
        let text = self.redact(text.trim());
        let mut excerpt: String = text.chars().filter(|c| !c.is_control()).take(MAX).collect();
        if text.chars().count() > MAX {
            excerpt.push('…');
        }
        if excerpt.is_empty() {
            excerpt.push_str("(empty body)");
        }
        excerpt
    }
}

/// An OAuth error body: RFC 6749 `{error, error_description}`, or the S4S `{error, description}`.
#[derive(Debug, Default, Deserialize)]
pub struct OAuthErrorBody {
    #[serde(default)]
    pub error: String,
    #[serde(default, alias = "description")]
    pub error_description: String,
}

impl OAuthErrorBody {
    /// Parses an error body, redacted; an unparsable body becomes its excerpt as the description.
    pub fn parse(body: &[u8], redactor: &Redactor) -> Self {
        match serde_json::from_slice::<OAuthErrorBody>(body) {
            Ok(parsed) if !parsed.error.is_empty() || !parsed.error_description.is_empty() => {
                Self {
                    error: redactor.redact(&parsed.error),
                    error_description: redactor.excerpt(parsed.error_description.as_bytes()),
                }
            }
            _ => Self {
                error: String::new(),
                error_description: redactor.excerpt(body),
            },
        }
    }
}

/// The errors every operation maps the same way: 5xx and 429 are transient.
pub fn transient_error(
    answer: &HttpAnswer,
    endpoint: &str,
    redactor: &Redactor,
) -> Option<AuthServerError> {
    let status = answer.status;
    (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS).then(|| {
        AuthServerError::ServerError {
            endpoint: endpoint.to_owned(),
            status: status.as_u16(),
            detail: redactor.excerpt(&answer.body),
            retry_after: answer.retry_after,
        }
    })
}

/// Decodes a JSON success body.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    answer: &HttpAnswer,
    endpoint: &str,
    redactor: &Redactor,
) -> Result<T, AuthServerError> {
    serde_json::from_slice(&answer.body).map_err(|e| AuthServerError::Protocol {
        endpoint: endpoint.to_owned(),
        // serde's message can quote the offending value, which may be a secret.
        detail: redactor.redact(&format!("invalid JSON ({e})")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Mon, 23 Nov 2026 12:00:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Mon, 23 Nov 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Mon, 23 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn redactor_removes_every_secret_from_error_text() {
        let secret = SecretString::from("s3cr3t-value-123");
        let redactor = Redactor::new().with(Some(&secret));
        let body = br#"{"error":"invalid_client","description":"bad secret s3cr3t-value-123"}"#;
        let parsed = OAuthErrorBody::parse(body, &redactor);
        assert_eq!(parsed.error, "invalid_client");
        assert_eq!(parsed.error_description, "bad secret [REDACTED]");
        assert!(!redactor.excerpt(body).contains("s3cr3t"));
    }

    #[test]
    fn excerpts_are_bounded() {
        let redactor = Redactor::new();
        let excerpt = redactor.excerpt("x".repeat(10_000).as_bytes());
        assert!(excerpt.chars().count() <= 301);
    }
}
