#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bbr_fuzz::oracle::differential(data));
