//! Kubernetes YAML input: `Service`, `EndpointSlice` and `Node` objects as
//! `kubectl get -o yaml` prints them (one document, several, or a `List`),
//! translated to frontend rules with kube-proxy's semantics.

mod field;
mod objects;
mod services;
mod yaml;

use std::io::Read;

use anyhow::Result;

pub use self::{
    objects::KubeObject,
    services::{Translation, translate},
};

/// Every object of one YAML (or JSON) stream, in order.
pub fn read(file: &str, reader: impl Read) -> Result<Vec<KubeObject>> {
    let mut objects = Vec::new();
    yaml::for_each_object(file, reader, |node| {
        objects.push(objects::parse(file, &node)?);
        Ok(())
    })?;
    Ok(objects)
}
