//! An auth server client that records every operation in the metrics (server, operation, outcome,
//! latency). The controller only ever talks to auth servers through this.

use std::sync::Arc;
use std::time::Instant;

use secrecy::SecretString;

use super::context::HttpClients;
use crate::authserver::{
    AccessTokenGrant, AuthServer, AuthServerClient, AuthServerError, ClientAuthentication,
    ClientCredentials, ClientMetadata, DebugTokenGrant, DebugTokenRequest, Existence,
    RegisteredClient, TokenInfo,
};
use crate::leadership::Leadership;
use crate::telemetry::Metrics;

pub struct ObservedAuthServer {
    pub inner: AuthServerClient,
    pub metrics: Arc<Metrics>,
    /// `<kind>/<namespace>/<name>` of the auth server resource.
    pub server: String,
    pub leadership: Arc<Leadership>,
    pub http_clients: Arc<HttpClients>,
}

impl ObservedAuthServer {
    /// The one gate every remote call goes through: none is made past the leader renew deadline, and
    /// one still running at the deadline is abandoned, so two instances never act on one client.
    async fn observe<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, AuthServerError>>,
    ) -> Result<T, AuthServerError> {
        if !self.leadership.may_act() {
            return Err(AuthServerError::NotLeader);
        }
        let started = Instant::now();
        let result = match self.leadership.remaining() {
            None => call.await,
            Some(left) => tokio::time::timeout(left, call)
                .await
                .unwrap_or(Err(AuthServerError::NotLeader)),
        };
        let status = match &result {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        };
        if let Err(AuthServerError::Unreachable { .. }) = &result {
            // Built afresh next time, with the CA bundle read again.
            self.http_clients.forget(&self.server);
        }
        self.metrics
            .observe_request(&self.server, operation, status, started.elapsed());
        result
    }
}

impl AuthServer for ObservedAuthServer {
    async fn register(
        &self,
        metadata: &ClientMetadata,
        chosen: Option<&ClientCredentials>,
    ) -> Result<RegisteredClient, AuthServerError> {
        self.observe("register", self.inner.register(metadata, chosen))
            .await
    }

    async fn read(&self, client: &ClientCredentials) -> Result<RegisteredClient, AuthServerError> {
        self.observe("read", self.inner.read(client)).await
    }

    async fn update(
        &self,
        client: &ClientCredentials,
        metadata: &ClientMetadata,
    ) -> Result<RegisteredClient, AuthServerError> {
        self.observe("update", self.inner.update(client, metadata))
            .await
    }

    async fn delete(&self, client: &ClientCredentials) -> Result<(), AuthServerError> {
        self.observe("delete", self.inner.delete(client)).await
    }

    async fn mint_debug_token(
        &self,
        client: &ClientCredentials,
        request: &DebugTokenRequest,
    ) -> Result<DebugTokenGrant, AuthServerError> {
        self.observe("debug_token", self.inner.mint_debug_token(client, request))
            .await
    }

    async fn client_credentials_token(
        &self,
        client: &ClientCredentials,
        authentication: &ClientAuthentication,
        scopes: &[String],
    ) -> Result<AccessTokenGrant, AuthServerError> {
        self.observe(
            "access_token",
            self.inner
                .client_credentials_token(client, authentication, scopes),
        )
        .await
    }

    async fn introspect(&self, access_token: &SecretString) -> Result<TokenInfo, AuthServerError> {
        self.observe("introspect", self.inner.introspect(access_token))
            .await
    }

    async fn probe(&self, client: &ClientCredentials) -> Result<Existence, AuthServerError> {
        self.observe("probe", self.inner.probe(client)).await
    }
}
