//! Fuzz target `webhook_signature`: see `switchyard::fuzzing::webhook_signature`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::webhook_signature(data));
