#![no_main]
//! See `pgmux::fuzzing::flows::client_flow` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgmux::fuzzing::flows::client_flow(data));
