#![no_main]
//! See `pgmux::fuzzing::sql::sql_scan` for what this target asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgmux::fuzzing::sql::sql_scan(data));
