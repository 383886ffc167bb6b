//! The library half of the `claude-relay` binary: the configuration parser, exposed so that the
//! fuzz targets (`fuzz/`) can drive `Config::build`. Everything else stays in the binary.

pub mod config;
