//! Extra Secret keys rendered from `spec.secret.template` with minijinja (Jinja2 syntax), out of the
//! values the operator writes to the Secret anyway: a `.env` file, a JSON config, whatever shape an
//! app reads. Templates are checked before anything is sent; a render error never carries a value.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};

use crate::crd::{DEFAULT_SECRET_KEYS, SmartClient};

/// The names a template can use: the output keys by their default names.
pub const TEMPLATE_VALUES: &[&str] = DEFAULT_SECRET_KEYS;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A misspelt name is an error, not an empty string in the app's config.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // The text is a file's content: its last newline stays.
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters"),
    );
    env
}

fn templates(client: &SmartClient) -> BTreeMap<String, String> {
    client
        .spec
        .secret
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default()
}

/// Whether every template parses and names only known values (rendered once with each value
/// empty); the problem in words, naming the key, otherwise.
pub fn check_templates(client: &SmartClient) -> Result<(), String> {
    let env = environment();
    let empty: BTreeMap<&str, &str> = TEMPLATE_VALUES.iter().map(|k| (*k, "")).collect();
    for (key, text) in templates(client) {
        env.render_str(&text, &empty).map_err(|e| {
            format!(
                "spec.secret.template {key}: {} (the names a template can use: {})",
                e.detail().unwrap_or("does not render"),
                TEMPLATE_VALUES.join(", ")
            )
        })?;
    }
    Ok(())
}

/// The templated keys, rendered with `values` (each of [`TEMPLATE_VALUES`], empty where the client
/// has none). A template that fails with these values is left out and logged by key only.
pub fn render_templates(
    client: &SmartClient,
    values: &BTreeMap<&'static str, String>,
) -> BTreeMap<String, String> {
    let env = environment();
    let mut rendered = BTreeMap::new();
    for (key, text) in templates(client) {
        match env.render_str(&text, values) {
            Ok(out) => {
                rendered.insert(key, out);
            }
            Err(e) => {
                tracing::warn!(key = %key, kind = ?e.kind(), "a Secret template did not render; key left out")
            }
        }
    }
    rendered
}
