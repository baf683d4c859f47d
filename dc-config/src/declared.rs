//! Both declared files, loaded and checked together: the one resolved model
//! everything is rendered from.

use std::path::{Path, PathBuf};

use crate::check;
use crate::error::{ConfigErrors, LoadError};
use crate::registry::Registry;
use crate::topology::Topology;

/// A checked topology and registry, with the registry's text (copied as is
/// beside each service config).
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// The checked topology.
    pub topology: Topology,
    /// The checked registry.
    pub registry: Registry,
    /// Where the registry was read from.
    pub registry_path: PathBuf,
    /// The registry's text.
    pub registry_text: String,
}

impl Declared {
    /// Reads and checks both files; reports the problems of both at once.
    pub fn load(topology: &Path, registry: &Path) -> Result<Self, LoadError> {
        let t_src = check::read(topology)?;
        let r_src = check::read(registry)?;
        let t = Topology::parse(topology, &t_src);
        let r = Registry::parse(registry, &r_src);
        match (t, r) {
            (Ok(topology), Ok(reg)) => Ok(Self {
                topology,
                registry: reg,
                registry_path: registry.to_path_buf(),
                registry_text: r_src,
            }),
            (t, r) => {
                let mut all = Vec::new();
                for e in [t.err(), r.err()].into_iter().flatten() {
                    all.extend(e.0);
                }
                Err(LoadError::Invalid(ConfigErrors(all)))
            }
        }
    }
}
