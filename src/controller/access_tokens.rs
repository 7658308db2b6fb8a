//! Access tokens a client obtains for itself (client_credentials grant, RFC7591 servers), kept fresh
//! in its Secret on the schedule debug tokens use: authenticated with a client assertion made fresh
//! for each request (`private_key_jwt`) or with the client's secret.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::info;

use super::observed::ObservedAuthServer;
use super::plan::refresh_due_at;
use super::reconcile::{ReconcileError, Run, as_client_credentials};
use super::resolve::ResolvedServer;
use super::secret::StoredToken;
use crate::authserver::{AuthServer, AuthServerError, ClientAuthentication};
use crate::crd::{AccessToken, TokenEndpointAuthMethod};

/// The lifetime assumed when a server leaves out `expires_in` (Keycloak's default lifespan).
const ASSUMED_LIFETIME: Duration = Duration::from_secs(300);

impl Run<'_> {
    pub(super) async fn obtain_access_token(
        &mut self,
        auth: &ObservedAuthServer,
        server: &ResolvedServer,
        scopes: &[String],
        spec: &AccessToken,
    ) -> Result<(), ReconcileError> {
        let credentials = self
            .credentials
            .clone()
            .expect("plan obtains tokens only for known clients");
        let authentication = match self.client.spec.token_endpoint_auth_method {
            Some(TokenEndpointAuthMethod::PrivateKeyJwt) => ClientAuthentication::Assertion(
                self.fresh_assertion(server, &credentials.client_id)?
                    .ok_or(AuthServerError::Unsupported {
                        dialect: "RFC7591",
                        operation: "obtain access tokens without a token endpoint (set spec.endpoints.token)",
                    })?,
            ),
            Some(TokenEndpointAuthMethod::ClientSecretPost) => ClientAuthentication::Post,
            _ => ClientAuthentication::Basic,
        };
        let requested: Vec<String> = spec
            .scopes
            .as_ref()
            .map(|s| s.iter().map(|s| s.0.clone()).collect())
            .unwrap_or_else(|| scopes.to_vec());
        let grant = match auth
            .client_credentials_token(
                &as_client_credentials(&credentials),
                &authentication,
                &requested,
            )
            .await
        {
            Ok(grant) => grant,
            Err(e) => {
                return Err(self.token_failed(format!("obtaining access token {}", spec.name), e));
            }
        };
        let obtained_at = Timestamp::now();
        let lifetime = grant.expires_in.unwrap_or(ASSUMED_LIFETIME);
        // Whole seconds, as status shows it (rounded down: an app renews a little early, never late).
        let expires_at = Timestamp::from_second(
            obtained_at.as_second() + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2),
        )
        .unwrap_or(obtained_at + lifetime);
        let refresh_before = spec
            .refresh_before
            .map(Duration::from)
            .unwrap_or(lifetime / 5);
        let next_refresh_at =
            refresh_due_at(obtained_at, expires_at, refresh_before, rand::random());
        let token = StoredToken {
            access_token: grant.access_token,
            refresh_token: None,
            expires_at: Some(expires_at.to_string()),
        };
        self.keep_token(
            server,
            scopes,
            &spec.name,
            token,
            expires_at,
            next_refresh_at,
        );
        info!(client = %self.client.name_any(), token = %spec.name, %expires_at, %next_refresh_at, "access token obtained");
        Ok(())
    }
}
