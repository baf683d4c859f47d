//! The example declared files (`examples/` at the workspace root), built in,
//! so every crate's tests and the demo start from the same topology and
//! registry without caring about the working directory.

use std::path::Path;

use crate::check::parse_checked;
use crate::Declared;

/// `examples/two-dc.toml`: two datacenters on loopback.
pub const TOPOLOGY: &str = include_str!("../../examples/two-dc.toml");
/// `examples/events.toml`: registration, watch_progress, vote, screen_view.
pub const REGISTRY: &str = include_str!("../../examples/events.toml");

/// Both example files, checked.
pub fn declared() -> Declared {
    Declared {
        topology: parse_checked(Path::new("examples/two-dc.toml"), TOPOLOGY)
            .expect("the example topology is valid (tested)"),
        registry: parse_checked(Path::new("examples/events.toml"), REGISTRY)
            .expect("the example registry is valid (tested)"),
        registry_path: "examples/events.toml".into(),
        registry_text: REGISTRY.to_string(),
    }
}
