#![no_main]
//! See `pgmux::fuzzing::auth::scram_server` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgmux::fuzzing::auth::scram_server(data));
