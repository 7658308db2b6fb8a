//! What can go wrong when talking to an auth server, classified so the controller knows what to do.

use std::time::Duration;

/// How the controller should react to an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (network, timeouts, 5xx, 429): back off and try again.
    Retryable,
    /// The request itself is wrong (invalid metadata, refused by policy, unsupported operation): report it
    /// and wait for the spec to change.
    User,
    /// A credential is no longer accepted (initial access token used up or expired, stale registration
    /// access token, client gone): needs a new credential or a re-registration.
    Credential,
}

/// An error from an auth server call. Messages never contain credentials: bodies are redacted of every
/// secret sent in the request and cut short before they get here.
#[derive(Debug, thiserror::Error)]
pub enum AuthServerError {
    #[error("cannot reach the auth server at {endpoint}: {detail}")]
    Unreachable {
        endpoint: String,
        detail: String,
        /// Whether the request may have reached the server (the connection broke after it was
        /// made, not while making it).
        request_sent: bool,
    },

    #[error("the auth server at {endpoint} did not answer in time")]
    Timeout { endpoint: String },

    #[error("the auth server answered HTTP {status} at {endpoint}: {detail}")]
    ServerError {
        endpoint: String,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },

    #[error("the auth server rejected the client metadata (HTTP {status}, {error}): {description}")]
    InvalidMetadata {
        status: u16,
        error: String,
        description: String,
    },

    #[error("the auth server's policy refused the request (HTTP {status}, {error}): {description}")]
    PolicyRejected {
        status: u16,
        error: String,
        description: String,
    },

    #[error(
        "the initial access token was rejected (HTTP {status}): it is expired, used up or wrong; put a new one in the auth server's credentials Secret"
    )]
    InitialAccessTokenRejected { status: u16 },

    #[error(
        "the registration access token was rejected (HTTP {status}): it is stale or the client was deleted on the server"
    )]
    RegistrationAccessTokenRejected { status: u16 },

    #[error("the client no longer exists on the auth server")]
    ClientGone,

    #[error(
        "the token endpoint refused the client's authentication (HTTP {status}, {error}): {description}"
    )]
    ClientAuthenticationRejected {
        status: u16,
        error: String,
        description: String,
    },

    #[error(
        "the auth server refuses to register client id {client_id} (it is taken) and does not accept this SmartClient's secret for it: the secret that registered it was lost (its Secret deleted while the operator was down?) or the id belongs to someone else; the registration cannot be overwritten: set another spec.clientId"
    )]
    ClientIdTaken { client_id: String },

    #[error(
        "the existence check at {endpoint} was inconclusive (HTTP {status}, {detail}): the answer says neither that the client is unknown (invalid_client) nor that it exists (invalid_grant); nothing is registered again, the check is retried"
    )]
    ExistenceUnknown {
        endpoint: String,
        status: u16,
        detail: String,
    },

    #[error("the auth server's answer at {endpoint} could not be understood: {detail}")]
    Protocol { endpoint: String, detail: String },

    #[error(
        "the auth server at {endpoint} accepted the registration{} but its answer could not be read ({detail}); it is not retried, since each retry would register another client: check the server, then change the spec to try again",
        client_id.as_ref().map(|id| format!(" of client {id}")).unwrap_or_default()
    )]
    RegisteredButUnreadable {
        endpoint: String,
        client_id: Option<String>,
        detail: String,
    },

    #[error("the {dialect} dialect cannot {operation}")]
    Unsupported {
        dialect: &'static str,
        operation: &'static str,
    },

    #[error("discovery failed: {detail}")]
    Discovery { detail: String },

    #[error(
        "this instance is past its leader renew deadline; the call was not made (or abandoned)"
    )]
    NotLeader,

    #[error("invalid auth server configuration: {detail}")]
    Configuration { detail: String },
}

impl AuthServerError {
    pub fn class(&self) -> ErrorClass {
        use AuthServerError::*;
        match self {
            Unreachable { .. }
            | Timeout { .. }
            | ServerError { .. }
            | Protocol { .. }
            | ExistenceUnknown { .. }
            // A refused key or secret is retried with backoff: the reason and the server's words are
            // on TokensFresh, and a registration is never replaced because of it.
            | ClientAuthenticationRejected { .. }
            | NotLeader => ErrorClass::Retryable,
            // Discovery documents are fetched over the network; a broken one is usually a server
            // mid-deploy, so it is retried like any other transient failure.
            Discovery { .. } => ErrorClass::Retryable,
            InvalidMetadata { .. }
            | RegisteredButUnreadable { .. }
            | ClientIdTaken { .. }
            | PolicyRejected { .. }
            | Unsupported { .. }
            | Configuration { .. } => ErrorClass::User,
            InitialAccessTokenRejected { .. }
            | RegistrationAccessTokenRejected { .. }
            | ClientGone => ErrorClass::Credential,
        }
    }

    /// Whether the server may have acted on the request although no answer came back: a timeout, or
    /// a connection that broke after the request went out. A registration that ends like this may
    /// have created a client whose id nobody learnt.
    pub fn answer_may_be_lost(&self) -> bool {
        use AuthServerError::*;
        matches!(
            self,
            Timeout { .. }
                | Unreachable {
                    request_sent: true,
                    ..
                }
        )
    }

    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// PascalCase reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        use AuthServerError::*;
        match self {
            Unreachable { .. } => "AuthServerUnreachable",
            Timeout { .. } => "AuthServerTimeout",
            ServerError { .. } => "AuthServerError",
            InvalidMetadata { .. } => "InvalidClientMetadata",
            PolicyRejected { .. } => "RejectedByPolicy",
            InitialAccessTokenRejected { .. } => "InitialAccessTokenRejected",
            RegistrationAccessTokenRejected { .. } => "RegistrationAccessTokenRejected",
            ClientGone => "ClientGone",
            ClientAuthenticationRejected { .. } => "ClientAuthenticationRejected",
            ClientIdTaken { .. } => "CredentialsLost",
            ExistenceUnknown { .. } => "ExistenceUnknown",
            Protocol { .. } => "AuthServerProtocolError",
            RegisteredButUnreadable { .. } => "RegistrationAnswerUnreadable",
            Unsupported { .. } => "UnsupportedByDialect",
            Discovery { .. } => "DiscoveryFailed",
            NotLeader => "NotLeader",
            Configuration { .. } => "InvalidAuthServerConfiguration",
        }
    }

    /// How long the server asked us to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthServerError::ServerError { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
