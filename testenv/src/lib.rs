//! Real test infrastructure for kacme, on loopback only.
#![forbid(unsafe_code)]
