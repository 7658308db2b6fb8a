//! The controllers: SmartClient (resolve → plan → apply → status) and the two auth server kinds.

mod access_tokens;
mod adoption;
pub mod auth_server;
pub mod cache;
pub mod cleanup;
pub mod conditions;
pub mod context;
mod credential_rotation;
pub mod deletion;
pub mod desired;
pub mod events;
mod key_rotation;
pub mod observed;
pub mod plan;
pub mod reconcile;
mod record;
mod report;
pub mod resolve;
pub mod rotation;
pub mod secret;
mod secret_template;
mod server_fit;
mod signing;
mod steps;

pub use context::{Context, Settings};
