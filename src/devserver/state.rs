//! The dev server's whole world: registered clients, issued tokens, initial access tokens, the scope
//! policy and the S4S users, behind one mutex; plus counters and the fault plan beside it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::faults::FaultPlan;
use super::stats::Stats;
use super::{DevServerConfig, Dialect};

/// An S4S user that debug tokens may be minted for, and the patients it may act for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoUser {
    pub username: String,
    pub patient_id: String,
}

impl FromStr for DemoUser {
    type Err = String;

    /// `USERNAME=PATIENT_ID`; repeat the user to allow several patients.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        match spec.split_once('=') {
            Some((username, patient_id)) if !username.is_empty() && !patient_id.is_empty() => {
                Ok(Self {
                    username: username.to_owned(),
                    patient_id: patient_id.to_owned(),
                })
            }
            _ => Err(format!("expected USERNAME=PATIENT_ID, got {spec:?}")),
        }
    }
}

/// The user the auth-proxy's demo deployment (and its documentation) uses.
fn auth_proxy_demo_user() -> DemoUser {
    DemoUser {
        username: "daniel-adams".to_owned(),
        patient_id: "smart-1288992".to_owned(),
    }
}

#[derive(Clone)]
pub(super) struct AppState(Arc<Shared>);

pub(super) struct Shared {
    pub dialect: Dialect,
    /// `http://<bound address>`, for requests without a usable `Host` header.
    pub fallback_origin: String,
    pub stats: Stats,
    store: Mutex<Store>,
    faults: RwLock<Option<Arc<FaultPlan>>>,
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub(super) fn new(config: &DevServerConfig, local_addr: SocketAddr) -> Self {
        let mut store = Store::default();
        for token in &config.initial_access_tokens {
            store
                .initial_access_tokens
                .insert(token.clone(), InitialAccessToken::unlimited());
        }
        let users = if config.users.is_empty() {
            vec![auth_proxy_demo_user()]
        } else {
            config.users.clone()
        };
        for user in users {
            store.add_user(user);
        }
        Self(Arc::new(Shared {
            dialect: config.dialect,
            fallback_origin: format!("http://{local_addr}"),
            stats: Stats::default(),
            store: Mutex::new(store),
            faults: RwLock::new(None),
        }))
    }
}

impl Shared {
    /// The store; never hold the guard across an `.await`.
    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn faults(&self) -> Option<Arc<FaultPlan>> {
        self.faults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set_faults(&self, plan: Option<FaultPlan>) {
        *self.faults.write().unwrap_or_else(PoisonError::into_inner) = plan.map(Arc::new);
    }
}

#[derive(Default)]
pub(super) struct Store {
    pub clients: HashMap<String, Client>,
    pub tokens: Tokens,
    pub initial_access_tokens: HashMap<String, InitialAccessToken>,
    pub scope_policy: ScopePolicy,
    /// S4S users and the patients each may act for.
    pub users: BTreeMap<String, BTreeSet<String>>,
    /// Client assertions seen at the token endpoint (`jti` replay).
    pub used_assertions: super::assertion::UsedAssertions,
    next_seq: u64,
}

impl Store {
    /// A number that orders clients and tokens by creation.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub(super) fn add_user(&mut self, user: DemoUser) {
        self.users
            .entry(user.username)
            .or_default()
            .insert(user.patient_id);
    }

    /// Removes a client and every token issued to it.
    pub(super) fn remove_client(&mut self, client_id: &str) -> Option<Client> {
        let client = self.clients.remove(client_id)?;
        self.tokens.remove_client(client_id);
        Some(client)
    }

    /// What an auth server redeploy does: every client and token gone. Configuration (initial access
    /// tokens, scope policy, users) stays. Returns (clients, tokens) removed.
    pub(super) fn wipe(&mut self) -> (usize, usize) {
        let removed = (self.clients.len(), self.tokens.len());
        self.clients.clear();
        self.tokens.clear();
        removed
    }

    /// Clients in registration order.
    pub(super) fn clients_in_order(&self) -> Vec<&Client> {
        let mut clients: Vec<&Client> = self.clients.values().collect();
        clients.sort_unstable_by_key(|c| c.seq);
        clients
    }
}

/// One registered client. Dialects render it in their own shape.
pub(super) struct Client {
    pub seq: u64,
    pub client_id: String,
    /// `None` for RFC 7591 public clients (`token_endpoint_auth_method: none`).
    pub client_secret: Option<String>,
    /// Unix seconds.
    pub issued_at: i64,
    /// RFC 7591 `client_secret_expires_at`: Unix seconds, 0 for never.
    pub secret_expires_at: i64,
    /// The scopes the server granted, in request order.
    pub scopes: Vec<String>,
    /// RFC 7591 only: the one registration access token currently valid.
    pub registration_access_token: Option<String>,
    /// Everything else the dialect keeps: RFC 7591 client metadata (as sent, plus defaults, without
    /// the server-issued fields); S4S `client_name` and `redirect_uris`.
    pub metadata: Map<String, Value>,
}

/// S4S access/refresh token pairs.
#[derive(Default)]
pub(super) struct Tokens {
    by_access: HashMap<String, IssuedToken>,
    access_by_refresh: HashMap<String, String>,
}

impl Tokens {
    pub(super) fn insert(&mut self, token: IssuedToken) {
        self.access_by_refresh
            .insert(token.refresh_token.clone(), token.access_token.clone());
        self.by_access.insert(token.access_token.clone(), token);
    }

    pub(super) fn by_access(&self, access_token: &str) -> Option<&IssuedToken> {
        self.by_access.get(access_token)
    }

    pub(super) fn by_refresh(&self, refresh_token: &str) -> Option<&IssuedToken> {
        self.access_by_refresh
            .get(refresh_token)
            .and_then(|access| self.by_access.get(access))
    }

    pub(super) fn remove(&mut self, access_token: &str) -> Option<IssuedToken> {
        let token = self.by_access.remove(access_token)?;
        self.access_by_refresh.remove(&token.refresh_token);
        Some(token)
    }

    /// Tokens of one client. A scan: only the (rare) refresh grant and deletions need it.
    pub(super) fn of_client<'a>(
        &'a self,
        client_id: &'a str,
    ) -> impl Iterator<Item = &'a IssuedToken> + 'a {
        self.by_access
            .values()
            .filter(move |t| t.client_id == client_id)
    }

    fn remove_client(&mut self, client_id: &str) {
        let doomed: Vec<String> = self
            .of_client(client_id)
            .map(|t| t.access_token.clone())
            .collect();
        for access_token in doomed {
            self.remove(&access_token);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_access.len()
    }

    fn clear(&mut self) {
        self.by_access.clear();
        self.access_by_refresh.clear();
    }
}

/// An S4S token row, like the auth-proxy's `Token` model.
#[derive(Clone)]
pub(super) struct IssuedToken {
    pub seq: u64,
    pub access_token: String,
    pub refresh_token: String,
    pub client_id: String,
    /// `None` when the legacy server was sent a user that is not a string.
    pub username: Option<String>,
    pub patient_id: String,
    pub scopes: Vec<String>,
    pub security_labels: Vec<String>,
    /// Unix seconds when the access token expires.
    pub access_expires: i64,
    /// Unix seconds when the patient's approval (and so the refresh token) expires.
    pub approval_expires: i64,
}

/// An RFC 7591 initial access token.
#[derive(Clone, Serialize)]
pub(super) struct InitialAccessToken {
    /// Registrations left; `None` = unlimited.
    pub remaining: Option<u64>,
    /// Unix seconds; `None` = never.
    pub expires_at: Option<i64>,
}

impl InitialAccessToken {
    pub(super) fn unlimited() -> Self {
        Self {
            remaining: None,
            expires_at: None,
        }
    }
}

/// Which scopes RFC 7591 registrations may ask for.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScopePolicy {
    /// `None` allows every scope.
    #[serde(default)]
    pub allowed_scopes: Option<BTreeSet<String>>,
    /// What happens to a scope outside `allowed_scopes`.
    #[serde(default)]
    pub on_disallowed: DisallowedScope,
    /// Registration answers carry no `registration_access_token` and no `registration_client_uri`, and
    /// no `Location`: RFC 7591 without RFC 7592 management, as many servers run it.
    #[serde(default)]
    pub without_management_api: bool,
    /// RFC 7592 GET answers with a new registration access token and the old one stops working, as
    /// older Keycloak releases did.
    #[serde(default)]
    pub rotate_token_on_read: bool,
    /// Lifetime of client_credentials access tokens (`expires_in`); default 300 s, Keycloak's.
    #[serde(default)]
    pub access_token_lifetime_secs: Option<i64>,
    /// Client secrets expire this long after they are issued (`client_secret_expires_at`); default
    /// never (0), as Keycloak answers.
    #[serde(default)]
    pub client_secret_lifetime_secs: Option<i64>,
    /// What discovery advertises in place of the defaults (both documents): lists of
    /// `token_endpoint_auth_methods_supported`, `token_endpoint_auth_signing_alg_values_supported`,
    /// `grant_types_supported` and SMART `capabilities`, so tests can offer a client less.
    #[serde(default)]
    pub advertise: Advertised,
}

/// Discovery lists that replace the defaults where set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Advertised {
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub token_endpoint_auth_signing_alg_values_supported: Option<Vec<String>>,
    #[serde(default)]
    pub grant_types_supported: Option<Vec<String>>,
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum DisallowedScope {
    /// Refuse the registration: 403 `insufficient_scope` (Keycloak's "Allowed Client Scopes" policy).
    #[default]
    Reject,
    /// Register anyway and silently leave the scope out of the granted `scope`.
    Narrow,
}
