#![no_main]
//! See `pgmux::fuzzing::admin::admin` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgmux::fuzzing::admin::admin(data));
