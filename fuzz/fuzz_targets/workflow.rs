//! Fuzz target `workflow`: see `switchyard::fuzzing::workflow`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::workflow(data));
