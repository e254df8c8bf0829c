//! Traum Engine's `traum` binary as a library: the command line, and the
//! commands themselves so tests can call them. `traum serve` (the GraphQL
//! service) joins `traum embed` here.

pub mod cli;
pub mod embed;
pub mod logging;
