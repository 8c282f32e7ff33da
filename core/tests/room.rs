//! The room as the engine knows it (what is playing, who is here, who moderates) and the
//! moderators' chat commands, through the engine's front door: envelopes in, effects out.

mod common;

use chatbot_core::{Effect, Input, Millis, Outcome, Reason, RoomSnapshot, Trigger};
use common::{Bot, T0};
use serde_json::json;

/// The room of the real capture: alice (member), bob (guest), carol (moderator), the bot.
fn room(extra: &str) -> Bot {
    let mut bot = Bot::new(extra);
    bot.event(
        "playlist",
        json!([
            {"media": {"id": "dQw4w9WgXcQ", "title": "Rick Astley - Never Gonna Give You Up", "seconds": 213, "duration": "03:33", "type": "yt", "meta": {}}, "uid": 1, "temp": true, "queueby": "alice"},
            {"media": {"id": "9bZkp7q19f0", "title": "PSY - GANGNAM STYLE", "seconds": 253, "duration": "04:13", "type": "yt", "meta": {}}, "uid": 2, "temp": true, "queueby": "alice"}
        ]),
    );
    bot.event("setCurrent", json!(1));
    bot.event(
        "changeMedia",
        json!({"id": "dQw4w9WgXcQ", "title": "Rick Astley - Never Gonna Give You Up", "seconds": 213,
               "duration": "03:33", "type": "yt", "meta": {}, "currentTime": 39.451, "paused": false}),
    );
    let user = |name: &str, rank: u32| json!({"name": name, "rank": rank, "profile": {"image": "", "text": ""}, "meta": {"afk": false, "muted": false}});
    bot.event("userlist", json!([user("alice", 1), user("bob", 0), user("carol", 2)]));
    bot.event("usercount", json!(4));
    bot.event("addUser", user("KrytenBot", 2));
    bot
}

fn last_user_message(bot: &Bot) -> String {
    bot.last_call().messages.last().unwrap().content.clone()
}

#[test]
fn what_is_playing_and_who_is_here_reach_the_prompt() {
    let mut bot = room("channels: [ { name: lounge } ]\n");
    bot.wait(20_000);
    bot.event("mediaUpdate", json!({"currentTime": 61.2, "paused": false}));
    bot.wait(5_000);
    bot.say("alice", "kryten, what are we watching?");
    let last = last_user_message(&bot);
    assert!(last.contains("\"Rick Astley - Never Gonna Give You Up\" (1:06 of 3:33)"), "{last}");
    assert!(last.contains("Up next: \"PSY - GANGNAM STYLE\""), "{last}");
    assert!(last.contains("3 here, including carol, alice, bob. Moderators: carol."), "{last}");
    // The facts come after the chat lines, next to the instruction, in the last message.
    assert!(last.ends_with("\n[alice is talking to you; reply to them]"), "{last}");
    let call = bot.last_call();
    assert!(call.messages[..call.messages.len() - 1].iter().all(|m| !m.content.contains("Rick Astley")));
}

#[test]
fn a_paused_item_keeps_its_position_and_says_so() {
    let mut bot = room("channels: [ { name: lounge } ]\n");
    bot.event("mediaUpdate", json!({"currentTime": 100.0, "paused": true}));
    bot.wait(600_000);
    bot.say("bob", "kryten, is it paused?");
    assert!(last_user_message(&bot).contains("(1:40 of 3:33, paused)"), "{}", last_user_message(&bot));
}

#[test]
fn a_moderator_mutes_and_unmutes_by_chat_and_is_answered_by_pm() {
    let mut bot = room("channels: [ { name: lounge } ]\n");
    bot.say("carol", "!kryten mute 10m");
    assert_eq!(bot.calls().len(), 0, "a command is never sent to the LLM");
    let pms = bot.pms();
    assert_eq!(pms.len(), 1);
    assert_eq!(pms[0].0, "carol");
    assert!(pms[0].1.starts_with("Muted in lounge for 10m."), "{}", pms[0].1);
    assert!(bot.said().is_empty(), "never answered in chat");
    bot.say("alice", "kryten, are you there?");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::Muted]);
    bot.say("carol", "!KRYTEN unmute");
    assert_eq!(bot.pms().last().unwrap().1, "Speaking again in lounge.");
    bot.say("alice", "kryten, now?");
    assert_eq!(bot.calls().len(), 1);
    let moderated: Vec<(String, &str, String)> = bot
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Moderation(r) => Some((r.user.clone(), r.command, r.changed.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        moderated,
        [("carol".into(), "mute", "muted for 10m".into()), ("carol".into(), "unmute", "unmuted".into())]
    );
    let acks: Vec<_> = bot
        .decisions()
        .into_iter()
        .filter(|d| d.trigger == Some(Trigger::Command) && d.outcome == Outcome::Sent)
        .collect();
    assert_eq!(acks.len(), 2, "each acknowledgement is a `sent` decision of the command");
}

#[test]
fn a_timed_mute_ends_by_itself() {
    let mut bot = room("channels: [ { name: lounge } ]\n");
    bot.say("carol", "!kryten mute 1m");
    bot.wait(30_000);
    bot.say("alice", "kryten?");
    assert_eq!(bot.calls().len(), 0);
    bot.wait(31_000);
    bot.say("alice", "kryten??");
    assert_eq!(bot.calls().len(), 1);
}

#[test]
fn a_guests_command_changes_nothing_and_reaches_no_llm() {
    let mut bot = room("channels: [ { name: lounge } ]\n");
    for who in ["bob", "alice", "mallory"] {
        bot.say(who, "!kryten mute");
    }
    assert_eq!(bot.calls().len(), 0, "never sent to the LLM although it names the bot");
    assert!(bot.published().is_empty(), "nothing visible");
    let refused: Vec<_> = bot.decisions().into_iter().filter(|d| d.reason == Some(Reason::NotModerator)).collect();
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|d| d.outcome == Outcome::Ignored && d.trigger == Some(Trigger::Command)));
    bot.say("alice", "kryten, still here?");
    assert_eq!(bot.calls().len(), 1, "not muted");
    assert!(!bot.last_call().messages.iter().any(|m| m.content.contains("!kryten")), "not in the context either");
}

#[test]
fn rank_comes_only_from_the_robot() {
    let mut bot = room("channels: [ { name: lounge } ]\n");
    bot.event("setUserRank", json!({"name": "bob", "rank": 2}));
    bot.say("bob", "!kryten mute");
    assert_eq!(bot.pms().len(), 1, "bob was made a moderator by the robot");
    bot.event("setUserRank", json!({"name": "carol", "rank": 1}));
    bot.say("carol", "!kryten unmute");
    assert_eq!(bot.reasons(Outcome::Ignored).last(), Some(&Reason::NotModerator));
    bot.event("userLeave", json!({"name": "bob"}));
    bot.say("bob", "!kryten unmute");
    assert_eq!(bot.reasons(Outcome::Ignored).last(), Some(&Reason::NotModerator), "gone: a guest again");
}

#[test]
fn forget_empties_the_next_prompts_chat_lines() {
    let mut bot = room("channels: [ { name: lounge } ]\n");
    bot.say("alice", "the secret word is marmalade");
    bot.say("bob", "nice");
    bot.say("carol", "!kryten forget");
    assert!(bot.pms()[0].1.starts_with("Forgot the conversation in lounge (2 lines)"), "{:?}", bot.pms());
    bot.say("alice", "kryten, what was the secret word?");
    let call = bot.last_call();
    assert_eq!(call.messages.len(), 3, "system prompt, the line answered, the instruction: {:?}", call.messages);
    assert!(!call.messages.iter().any(|m| m.content.contains("marmalade") || m.content.contains("Rick Astley")));
    assert!(call.messages[2].content.contains("3 here"), "who is here stays");
}

#[test]
fn status_why_and_help_answer_in_words() {
    let mut bot = room("channels: [ { name: lounge, limits: { per_user: { max: 1, window: 1m } } } ]\n");
    bot.say("alice", "kryten, one");
    bot.answer("one it is");
    bot.say("alice", "kryten, two");
    bot.say("carol", "!kryten status");
    let status = bot.pms().last().unwrap().1.clone();
    assert!(
        status
            .starts_with("lounge: speaking. Providers: main ok. 1 replies in the last hour; no token budget, 4 here."),
        "{status}"
    );
    bot.say("carol", "!kryten why");
    let why = bot.pms().last().unwrap().1.clone();
    assert!(why.contains("alice's mention: that user reached their reply limit."), "{why}");
    bot.say("carol", "!kryten help");
    assert!(bot.pms().last().unwrap().1.contains("!KrytenBot mute [time]"));
    bot.say("carol", "!kryten dance");
    assert!(bot.pms().last().unwrap().1.starts_with("Unknown command \"dance\"."));
    bot.say("carol", "!kryten mute soon");
    assert!(bot.pms().last().unwrap().1.contains("is not a duration"));
    assert!(bot.pms().iter().all(|(_, t)| t.encode_utf16().count() <= 320));
}

#[test]
fn commands_work_by_pm_too_and_a_custom_prefix_is_honoured() {
    let mut bot = room("moderation: { prefix: \"~\" }\nchannels: [ { name: lounge } ]\n");
    bot.pm("carol", "KrytenBot", "~kryten mute");
    assert!(bot.pms()[0].1.starts_with("Muted in lounge until unmuted."));
    assert_eq!(bot.calls().len(), 0);
    bot.say("carol", "!kryten unmute");
    assert_eq!(bot.calls().len(), 0, "`!` is an ordinary line now; still muted");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::Muted]);
}

#[test]
fn with_moderation_off_a_command_line_is_an_ordinary_mention() {
    let mut bot = room("moderation: { enabled: false }\nchannels: [ { name: lounge } ]\n");
    bot.say("carol", "!kryten mute");
    assert_eq!(bot.calls().len(), 1);
    assert!(bot.pms().is_empty());
}

#[test]
fn the_room_survives_a_reload_of_an_unchanged_channel() {
    let mut bot = room("channels: [ { name: lounge } ]\n");
    bot.input(Input::Reload(Box::new(common::config("channels: [ { name: lounge }, { name: other } ]\n"))));
    bot.say("carol", "!kryten mute");
    assert_eq!(bot.pms().len(), 1, "carol is still a moderator");
    bot.say("carol", "!kryten unmute");
    bot.say("alice", "kryten, what's on?");
    assert!(last_user_message(&bot).contains("Rick Astley"));
}

fn snapshot(read_at: u64) -> RoomSnapshot {
    RoomSnapshot {
        channel: "Lounge".into(),
        read_at: Millis(read_at),
        current: Some((
            br#"{"id":"kJQP7kiw5Fk","title":"Luis Fonsi - Despacito","seconds":282,"duration":"04:42","type":"yt","meta":{},"currentTime":-3,"paused":true,"uid":3}"#.to_vec(),
            Millis(read_at - 33_000),
        )),
        items: Some(br#"[{"media":{"id":"kJQP7kiw5Fk","title":"Luis Fonsi - Despacito"},"uid":3},{"media":{"id":"jNQXAC9IVRw","title":"Me at the zoo"},"uid":4}]"#.to_vec()),
        users: Some(br#"[{"name":"dana","rank":3,"meta":{"afk":false}},{"name":"eli","rank":0,"meta":{"afk":true}}]"#.to_vec()),
    }
}

#[test]
fn after_a_start_the_robots_stored_state_is_already_known() {
    let mut bot = Bot::new("channels: [ { name: lounge } ]\n");
    bot.input(Input::RoomState(snapshot(T0)));
    bot.say("eli", "kryten, what is this?");
    let last = last_user_message(&bot);
    assert!(last.contains("playing \"Luis Fonsi - Despacito\" (0:30 of 4:42). Up next: \"Me at the zoo\"."), "{last}");
    bot.pm("dana", "KrytenBot", "!kryten mute");
    assert_eq!(bot.pms().len(), 1, "dana's rank came from the snapshot");
}

#[test]
fn events_after_the_read_began_win_over_the_snapshot() {
    let mut bot = room("channels: [ { name: lounge } ]\n");
    bot.event("setUserRank", json!({"name": "carol", "rank": 1}));
    // The read began before those events: the snapshot is older than them.
    bot.input(Input::RoomState(snapshot(T0 - 1)));
    bot.say("carol", "!kryten mute");
    assert_eq!(bot.reasons(Outcome::Ignored).last(), Some(&Reason::NotModerator));
    bot.say("alice", "kryten, what's on?");
    assert!(last_user_message(&bot).contains("Rick Astley"), "the changeMedia after the read began wins");
}

#[test]
fn operators_templates_see_the_room_the_time_and_the_keyword() {
    let mut bot = room(
        "channels:\n  - name: lounge\n    triggers: { keywords: [ { words: [star wars] } ] }\n    timezone: Asia/Tokyo\n    \
         system_prompt: \"Tu es {{ bot.name }} dans {{ channel }}.\"\n    prompts:\n      \
         keyword: \"{{ user }} a parlé de {{ keyword }} à {{ now }} le {{ date }} ; {{ users.count }} ici ; on regarde {{ media.title }} ({{ media.position }}/{{ media.duration }}), puis {{ media.next }}.\"\n      \
         mention: \"{{ room }}\\n{{ user }} : {% for n in users.moderators %}{{ n }}{% endfor %}\"\n",
    );
    bot.say("bob", "anyone seen STAR WARS lately");
    let call = bot.last_call();
    assert!(call.messages[0].content.starts_with("Tu es KrytenBot dans lounge.\n\n"), "{}", call.messages[0].content);
    // T0 is 10:30 UTC on 2026-01-15: 19:30 in Tokyo.
    let last = &call.messages.last().unwrap().content;
    assert!(last.ends_with(
        "bob a parlé de STAR WARS à 19:30 le 2026-01-15 ; 3 ici ; on regarde Rick Astley - Never Gonna Give You Up (0:39/3:33), puis PSY - GANGNAM STYLE."
    ), "{last}");
    assert!(last.starts_with("[Room now: "), "the facts come first unless the template places {{{{ room }}}}: {last}");
    bot.say("alice", "kryten?");
    assert_eq!(
        last_user_message(&bot).lines().last(),
        Some("alice : carol"),
        "placed `room` itself: no second facts line"
    );
    assert_eq!(last_user_message(&bot).matches("[Room now:").count(), 1);
}
