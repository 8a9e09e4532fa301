#![no_main]
//! See `pgmux::fuzzing::wire::frame` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgmux::fuzzing::wire::frame(data));
