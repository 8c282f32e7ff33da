//! The config loader never panics: any text is a Config or a located error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = chatbot_core::Config::parse(text, "fuzz.yaml");
    }
});
