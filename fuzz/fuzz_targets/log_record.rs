//! Fuzz target `log_record`: see `switchyard::fuzzing::log_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::log_record(data));
