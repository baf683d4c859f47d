//! Everything operators declare, once: the topology and the event registry.
