//! What the dialects share on the wire: JSON and error bodies, form and query decoding, client
//! credentials, the externally visible origin, timestamps and random credentials.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rand::RngExt as _;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// `{"error": ..., "error_description": ...}`, the RFC 6749/7591 error shape Keycloak answers with.
pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// An error answer, kept as data until it is rendered; handlers return `Result<Response, Refusal>`.
#[derive(Debug)]
pub(super) enum Refusal {
    /// RFC 6749/7591 `{"error", "error_description"}` (Keycloak's shape).
    OAuth {
        status: StatusCode,
        error: &'static str,
        description: Cow<'static, str>,
    },
    /// The auth-proxy's `OAuthServiceError`: 400 `{"error", "description"}`.
    Service {
        error: &'static str,
        description: String,
    },
    /// A Werkzeug HTML error page: what Flask answers when a view raises.
    Page(StatusCode),
}

impl Refusal {
    pub(super) fn oauth(
        status: StatusCode,
        error: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::OAuth {
            status,
            error,
            description: description.into(),
        }
    }

    pub(super) fn service(error: &'static str, description: impl Into<String>) -> Self {
        Self::Service {
            error,
            description: description.into(),
        }
    }

    /// An unhandled Python exception in an auth-proxy view.
    pub(super) fn internal_error() -> Self {
        Self::Page(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Flask's answer to a missing form field or unparseable JSON.
    pub(super) fn bad_request_page() -> Self {
        Self::Page(StatusCode::BAD_REQUEST)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::OAuth {
                status,
                error,
                description,
            } => oauth_error(status, error, &description),
            Refusal::Service { error, description } => json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": error, "description": description}),
            ),
            Refusal::Page(status) => werkzeug_error_page(status),
        }
    }
}

/// Token endpoint answers must not be cached (RFC 6749 §5.1).
pub(super) fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// The HTML pages Flask/Werkzeug answers with when a view raises instead of returning JSON: a missing
/// form field (400) or an exception such as an integrity error (500).
fn werkzeug_error_page(status: StatusCode) -> Response {
    let (title, text) = match status {
        StatusCode::BAD_REQUEST => (
            "400 Bad Request",
            "The browser (or proxy) sent a request that this server could not understand.",
        ),
        _ => (
            "500 Internal Server Error",
            "The server encountered an internal error and was unable to complete your request. Either \
             the server is overloaded or there is an error in the application.",
        ),
    };
    let name = title.split_once(' ').map_or(title, |(_, name)| name);
    let body = format!(
        "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<title>{title}</title>\n\
         <h1>{name}</h1>\n<p>{text}</p>\n"
    );
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
        body,
    )
        .into_response()
}

/// `http://<Host header>`: URLs in responses point where the caller reached us (like Flask's
/// `url_for(_external=True)` and Keycloak's frontend URL), falling back to the bound address.
pub(super) fn origin(headers: &HeaderMap, fallback: &str) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|host| {
            !host.is_empty()
                && host.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_')
                })
        })
        .map_or_else(|| fallback.to_owned(), |host| format!("http://{host}"))
}

pub(super) fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

pub(super) fn is_form(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| m == "application/x-www-form-urlencoded")
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

/// Decoded `application/x-www-form-urlencoded` fields (a form body or a query string).
pub(super) struct Fields(Vec<(String, String)>);

impl Fields {
    pub(super) fn parse(encoded: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(encoded).into_owned().collect())
    }

    /// The first value of `name`, as Flask's `request.form[...]`/`request.args.get(...)` return.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(super) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Client credentials as an OAuth token endpoint reads them: `Authorization: Basic`, else the
/// `client_id`/`client_secret` form fields.
pub(super) struct ClientCredentials {
    pub client_id: String,
    pub client_secret: Option<String>,
}

pub(super) fn client_credentials(headers: &HeaderMap, form: &Fields) -> Option<ClientCredentials> {
    if let Some(basic) = basic_credentials(headers) {
        return Some(basic);
    }
    form.get("client_id").map(|client_id| ClientCredentials {
        client_id: client_id.to_owned(),
        client_secret: form.get("client_secret").map(str::to_owned),
    })
}

fn basic_credentials(headers: &HeaderMap) -> Option<ClientCredentials> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some(ClientCredentials {
        client_id: percent_decoded(id),
        client_secret: Some(percent_decoded(secret)),
    })
}

/// RFC 6749 §2.3.1 form-encodes credentials before Basic-encoding them.
fn percent_decoded(value: &str) -> String {
    let field = format!("v={}", value.replace('&', "%26"));
    url::form_urlencoded::parse(field.as_bytes())
        .next()
        .map_or_else(|| value.to_owned(), |(_, v)| v.into_owned())
}

/// Whether a presented secret authenticates a client; clients without a secret are public.
pub(super) fn secret_matches(expected: Option<&str>, presented: Option<&str>) -> bool {
    match expected {
        None => true,
        Some(expected) => presented == Some(expected),
    }
}

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Latest instant an RFC 1123 date can show (9999-12-31T23:59:59Z).
const MAX_HTTP_DATE: i64 = 253_402_300_799;

/// Unix seconds as an RFC 1123 HTTP-date, as Flask's `jsonify` renders datetimes; `None` outside
/// years 1970–9999 (where Python's datetime arithmetic would have raised).
pub(super) fn http_date(unix_seconds: i64) -> Option<String> {
    let seconds = u64::try_from(unix_seconds)
        .ok()
        .filter(|_| unix_seconds <= MAX_HTTP_DATE)?;
    Some(httpdate::fmt_http_date(
        UNIX_EPOCH + Duration::from_secs(seconds),
    ))
}

/// Whether `unix_seconds` can be shown as an HTTP-date.
pub(super) fn representable(unix_seconds: i64) -> bool {
    (0..=MAX_HTTP_DATE).contains(&unix_seconds)
}

pub(super) fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A random alphanumeric string (Keycloak's client secrets are 32 of these).
pub(super) fn random_alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Python's truthiness of a JSON value, for `if not value:` checks in the auth-proxy.
pub(super) fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

/// Python's `str()` of a JSON value, for error messages that format request fields.
pub(super) fn python_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        other => other.to_string(),
    }
}

/// Python's `int()` of a JSON value: `Ok(Some(n))`, `Ok(None)` where Python raises `ValueError`
/// (handled by the auth-proxy), `Err(())` where it raises `TypeError` (an unhandled 500).
pub(super) fn python_int(value: &Value) -> Result<Option<i64>, ()> {
    match value {
        Value::Bool(b) => Ok(Some(i64::from(*b))),
        Value::Number(n) => Ok(n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.trunc() as i64)
        })),
        Value::String(s) => Ok(s.trim().replace('_', "").parse::<i64>().ok()),
        Value::Null | Value::Array(_) | Value::Object(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_rfc_1123_in_gmt() {
        assert_eq!(
            http_date(360).as_deref(),
            Some("Thu, 01 Jan 1970 00:06:00 GMT")
        );
        assert_eq!(http_date(-1), None);
        assert_eq!(http_date(MAX_HTTP_DATE + 1), None);
    }

    #[test]
    fn python_int_truncates_floats_and_rejects_words() {
        assert_eq!(python_int(&json!(360)), Ok(Some(360)));
        assert_eq!(python_int(&json!(12.9)), Ok(Some(12)));
        assert_eq!(python_int(&json!(" 42 ")), Ok(Some(42)));
        assert_eq!(python_int(&json!("soon")), Ok(None));
        assert_eq!(python_int(&json!(null)), Err(()));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("my%20client:s%3Acret");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        let credentials = client_credentials(&headers, &Fields::parse(b"")).unwrap();
        assert_eq!(credentials.client_id, "my client");
        assert_eq!(credentials.client_secret.as_deref(), Some("s:cret"));
    }
}
