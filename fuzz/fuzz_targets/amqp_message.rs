//! Fuzz target `amqp_message`: see `switchyard::fuzzing::amqp_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::amqp_message(data));
