//! Fuzz target `binding`: see `switchyard::fuzzing::binding`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::binding(data));
