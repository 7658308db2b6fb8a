//! smart-operator: a Kubernetes operator that registers SMART on FHIR OAuth clients declaratively.

pub mod authserver;
pub mod crd;
pub mod manifests;
