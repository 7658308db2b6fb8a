//! smart-operator: a Kubernetes operator that registers SMART on FHIR OAuth clients declaratively.

pub mod app;
pub mod authserver;
pub mod controller;
pub mod crd;
pub mod devserver;
pub mod keys;
pub mod leadership;
pub mod manifests;
pub mod telemetry;
