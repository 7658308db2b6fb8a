//! The floor: a controller-less client doing the same work, for the operator/floor ratio.

use super::*;

pub(crate) struct Floor {
    pub(crate) kube: Client,
    pub(crate) auth: AuthServerClient,
    pub(crate) endpoints: ServerEndpoints,
    pub(crate) fhir_base_url: String,
    pub(crate) dialect: Dialect,
}

impl Floor {
    /// Registers (mints and introspects a debug token for S4S), applies the Secret, applies status.
    pub(crate) async fn handle(&self, object: SmartClient) -> Res<()> {
        let namespace = object.namespace().unwrap_or_default();
        let name = object.name_any();
        let now = Timestamp::now();
        let generation = object.metadata.generation.unwrap_or(1);
        let desired = desired_metadata(&object)?;
        let chosen = (self.dialect == Dialect::S4sLegacy).then(|| ClientCredentials {
            client_id: object
                .spec
                .client_id
                .clone()
                .unwrap_or_else(|| name.clone()),
            client_secret: Some(smart_operator::controller::desired::generate_client_secret()),
            registration_access_token: None,
            registration_client_uri: None,
            client_assertion: None,
        });
        let registered = self.auth.register(&desired, chosen.as_ref()).await?;
        let mut credentials = StoredCredentials {
            client_id: registered.client_id.clone(),
            client_secret: registered
                .client_secret
                .clone()
                .or_else(|| chosen.as_ref().and_then(|c| c.client_secret.clone())),
            registration_access_token: registered.registration_access_token.clone(),
            registration_client_uri: registered.registration_client_uri.clone(),
            tokens: BTreeMap::new(),
            applied_metadata_hash: Some(metadata_hash(&desired, self.dialect)),
            registration_pending: false,
            ..Default::default()
        };
        let mut status = SmartClientStatus {
            observed_generation: Some(generation),
            client_id: Some(registered.client_id.clone()),
            registration_client_uri: registered.registration_client_uri.clone(),
            client_id_issued_at: registered
                .client_id_issued_at
                .and_then(|s| Timestamp::from_second(s).ok())
                .map(Time),
            granted_scopes: registered.granted_scopes.clone().unwrap_or_default(),
            applied_metadata_hash: Some(metadata_hash(&desired, self.dialect)),
            secret_name: Some(secret_name(&object)),
            ..Default::default()
        };
        for token in object.spec.debug_tokens.iter().flatten() {
            let client = ClientCredentials {
                client_id: credentials.client_id.clone(),
                client_secret: credentials.client_secret.clone(),
                registration_access_token: None,
                registration_client_uri: None,
                client_assertion: None,
            };
            let lifetime = token
                .lifetime
                .map(Duration::from)
                .unwrap_or(Duration::from_secs(3600));
            let request = DebugTokenRequest {
                user: token.user.clone(),
                patient_id: token.patient_id.clone(),
                scopes: desired.scopes.clone(),
                lifetime,
            };
            let grant = self.auth.mint_debug_token(&client, &request).await?;
            let info = self.auth.introspect(&grant.access_token).await?;
            let expires_at = info
                .expires_at
                .and_then(|t| Timestamp::try_from(t).ok())
                .unwrap_or(now + lifetime);
            credentials.tokens.insert(
                token.name.clone(),
                StoredToken {
                    access_token: grant.access_token,
                    refresh_token: grant.refresh_token,
                    expires_at: Some(expires_at.to_string()),
                },
            );
            status.debug_tokens.push(DebugTokenStatus {
                name: token.name.clone(),
                expires_at: Some(Time(expires_at)),
                next_refresh_at: Some(Time(expires_at - lifetime / 5)),
            });
        }
        let public = PublicValues {
            token_endpoint: self.endpoints.token.clone(),
            fhir_base_url: Some(self.fhir_base_url.clone()),
            scope: desired.scopes.join(" "),
            issuer: self.endpoints.issuer.clone(),
            authorization_endpoint: self.endpoints.authorization.clone(),
        };
        let secret = render_secret(
            &object,
            render_data(&object, &credentials, None, &public),
            Some(&credentials),
        );
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), &namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        secrets
            .patch(&secret_name(&object), &params, &Patch::Apply(&secret))
            .await?;
        let c = &mut status.conditions;
        set_condition(
            c,
            condition::REGISTERED,
            true,
            "Registered",
            "registered with SmartAuthServer dev",
            Some(generation),
            now,
        );
        set_condition(
            c,
            condition::SECRET_SYNCED,
            true,
            "SecretWritten",
            "the Secret holds the credentials",
            Some(generation),
            now,
        );
        if !status.debug_tokens.is_empty() {
            set_condition(
                c,
                condition::TOKENS_FRESH,
                true,
                "TokensFresh",
                "debug tokens minted",
                Some(generation),
                now,
            );
        }
        set_condition(
            c,
            condition::READY,
            true,
            "Ready",
            "registered and the Secret is up to date",
            Some(generation),
            now,
        );
        let api: Api<SmartClient> = Api::namespaced(self.kube.clone(), &namespace);
        let patch = json!({
            "apiVersion": "smart.fhir.dev/v1alpha1",
            "kind": "SmartClient",
            "status": status,
        });
        api.patch_status(&name, &params, &Patch::Apply(&patch))
            .await?;
        Ok(())
    }
}
