//! Fuzz target `expression`: see `switchyard::fuzzing::expression`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::expression(data));
