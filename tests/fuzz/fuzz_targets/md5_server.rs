#![no_main]
//! See `pgmux::fuzzing::auth::md5_server` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgmux::fuzzing::auth::md5_server(data));
