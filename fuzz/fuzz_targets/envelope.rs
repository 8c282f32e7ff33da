//! The envelope parser never panics, whatever the body and subject, and its one-pass
//! reader for chat lines gives exactly the general (serde_json) path's answer.
#![no_main]
use chatbot_core::event::{parse, parse_general};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for subject in [Some("kryten.events.cytube.lounge.chatmsg"), None] {
        assert_eq!(parse(data, subject), parse_general(data, subject));
    }
});
