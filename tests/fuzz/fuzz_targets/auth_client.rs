#![no_main]
//! See `pgmux::fuzzing::auth::auth_client` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgmux::fuzzing::auth::auth_client(data));
