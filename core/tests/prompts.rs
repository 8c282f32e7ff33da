//! The exact prompt for each trigger kind, pinned: who said what, which line is being
//! answered, and what the bot is asked to do.

mod common;

use chatbot_core::{LlmCall, Purpose};
use common::Bot;

fn render(call: &LlmCall) -> String {
    call.messages.iter().map(|m| format!("[{}]\n{}", m.role.as_str(), m.content)).collect::<Vec<_>>().join("\n\n")
}

const ROOM: &str = "channels: [ { name: lounge, system_prompt: \"You are KrytenBot, a dry-witted regular.\", \
    triggers: { keywords: [ { words: [pizza] } ], media_change: { enabled: true, probability: 1.0 }, \
    contextual: { enabled: true, every: 10m, min_new_messages: 2 } } } ]\n";

fn room() -> Bot {
    let mut bot = Bot::new(ROOM);
    bot.say("alice", "evening all");
    bot.say("KrytenBot", "evening alice");
    bot.say("bob", "anyone watching the match? &lt;3");
    bot
}

#[test]
fn prompt_for_a_mention() {
    let mut bot = room();
    bot.say("carol", "kryten, who wins tonight?");
    insta::assert_snapshot!(render(&bot.last_call()));
}

#[test]
fn prompt_for_a_keyword() {
    let mut bot = room();
    bot.say("dave", "ordering pizza, any takers");
    insta::assert_snapshot!(render(&bot.last_call()));
}

#[test]
fn prompt_for_a_pm_holds_only_that_conversation() {
    let mut bot = room();
    bot.pm("erin", "KrytenBot", "hi, quick question");
    bot.answer("sure, go ahead");
    bot.pm("KrytenBot", "erin", "sure, go ahead");
    bot.pm("erin", "KrytenBot", "what's the channel about?");
    insta::assert_snapshot!(render(&bot.last_call()));
}

#[test]
fn prompt_for_a_media_change() {
    let mut bot = room();
    bot.media("x1", "Rick Astley - Never Gonna Give You Up", -3.0);
    insta::assert_snapshot!(render(&bot.last_call()));
}

#[test]
fn prompts_for_the_contextual_check_and_reply() {
    let mut bot = room();
    bot.wait(600_000);
    let check = bot.last_call();
    assert_eq!(check.purpose, Purpose::ParticipationCheck);
    insta::assert_snapshot!("contextual_check", render(&check));
    bot.reply(&check, "Yes");
    let reply = bot.last_call();
    assert_eq!(reply.purpose, Purpose::Reply);
    insta::assert_snapshot!("contextual_reply", render(&reply));
}
