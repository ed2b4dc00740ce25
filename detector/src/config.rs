//! Configuration: `/etc/detector/detector.toml`, overridden by command-line flags.
//! (Filled in by the daemon work; see detector.toml.example.)
