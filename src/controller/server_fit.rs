//! Whether an auth server offers what a client needs, by what its discovery documents say (pure).
//! Checked before anything is sent: a mismatch is a user error naming what is missing
//! (`Ready=False UnsupportedByServer`), not a registration the server would refuse or a client that
//! could never authenticate. A list the server does not publish is no evidence either way.

use crate::authserver::{ClientMetadata, ServerEndpoints};
use crate::keys::SigningAlgorithm;

/// What the server lacks for `metadata`, in words; None when nothing it says stands in the way.
///
/// `scopes_supported` is not compared: servers list a selection (SMART v2 scopes with query
/// parameters and wildcards are never all listed), so a scope missing from it proves nothing.
pub fn unsupported_by_server(
    metadata: &ClientMetadata,
    signing_algorithms: &[SigningAlgorithm],
    endpoints: &ServerEndpoints,
) -> Option<String> {
    let method = metadata.token_endpoint_auth_method.as_str();
    let lacks = |list: &[String], value: &str| !list.is_empty() && !list.iter().any(|v| v == value);
    let mut missing = Vec::new();
    // A public client authenticates nowhere, and servers seldom list `none`.
    if method != "none" && lacks(&endpoints.token_endpoint_auth_methods_supported, method) {
        missing.push(format!(
            "token_endpoint_auth_methods_supported [{}] lacks {method}",
            endpoints.token_endpoint_auth_methods_supported.join(", ")
        ));
    }
    if method == "private_key_jwt" {
        if lacks(
            &endpoints.smart_capabilities,
            "client-confidential-asymmetric",
        ) {
            missing.push("its SMART capabilities lack client-confidential-asymmetric".to_owned());
        }
        for alg in signing_algorithms
            .iter()
            .map(|a| a.jwa_name())
            .filter(|alg| {
                lacks(
                    &endpoints.token_endpoint_auth_signing_alg_values_supported,
                    alg,
                )
            })
        {
            missing.push(format!(
                "token_endpoint_auth_signing_alg_values_supported [{}] lacks {alg}",
                endpoints
                    .token_endpoint_auth_signing_alg_values_supported
                    .join(", ")
            ));
        }
    }
    for grant in &metadata.grant_types {
        if lacks(&endpoints.grant_types_supported, grant) {
            missing.push(format!(
                "grant_types_supported [{}] lacks {grant}",
                endpoints.grant_types_supported.join(", ")
            ));
        }
    }
    (!missing.is_empty()).then(|| {
        format!(
            "the auth server does not offer what this client needs: {}; nothing was sent to it",
            missing.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> ClientMetadata {
        ClientMetadata {
            grant_types: vec!["client_credentials".into()],
            token_endpoint_auth_method: "private_key_jwt".into(),
            ..Default::default()
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_server_that_says_nothing_stands_in_no_ones_way() {
        assert_eq!(
            unsupported_by_server(
                &backend(),
                &[SigningAlgorithm::ES384],
                &ServerEndpoints::default()
            ),
            None
        );
    }

    #[test]
    fn each_missing_offer_is_named() {
        let endpoints = ServerEndpoints {
            token_endpoint_auth_methods_supported: strings(&["client_secret_basic"]),
            token_endpoint_auth_signing_alg_values_supported: strings(&["RS384"]),
            grant_types_supported: strings(&["authorization_code"]),
            smart_capabilities: strings(&["client-confidential-symmetric"]),
            ..Default::default()
        };
        let problem =
            unsupported_by_server(&backend(), &[SigningAlgorithm::ES384], &endpoints).unwrap();
        for expected in [
            "lacks private_key_jwt",
            "client-confidential-asymmetric",
            "[RS384] lacks ES384",
            "lacks client_credentials",
        ] {
            assert!(problem.contains(expected), "{expected}: {problem}");
        }
    }

    #[test]
    fn what_the_server_offers_passes_and_public_clients_need_no_listed_method() {
        let endpoints = ServerEndpoints {
            token_endpoint_auth_methods_supported: strings(&["private_key_jwt"]),
            token_endpoint_auth_signing_alg_values_supported: strings(&["ES384", "RS384"]),
            grant_types_supported: strings(&["client_credentials", "authorization_code"]),
            smart_capabilities: strings(&["client-confidential-asymmetric"]),
            ..Default::default()
        };
        assert_eq!(
            unsupported_by_server(&backend(), &[SigningAlgorithm::RS384], &endpoints),
            None
        );
        let public = ClientMetadata {
            grant_types: vec!["authorization_code".into()],
            token_endpoint_auth_method: "none".into(),
            ..Default::default()
        };
        assert_eq!(unsupported_by_server(&public, &[], &endpoints), None);
    }
}
