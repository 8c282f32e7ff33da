//! HTML decoding never panics and never grows text beyond the input plus spoiler marks.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let out = chatbot_core::html::to_plain_text(text);
        let spoilers = text.matches("spoiler").count() + 1;
        assert!(out.len() <= text.len() + 9 * spoilers + 16, "{} -> {}", text.len(), out.len());
    }
});
