//! The envelope parser never panics, whatever the body and subject.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatbot_core::event::parse(data, Some("kryten.events.cytube.lounge.chatmsg"));
    let _ = chatbot_core::event::parse(data, None);
});
