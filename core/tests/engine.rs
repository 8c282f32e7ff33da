//! Behaviour of the engine as a user of the room would notice it.

mod common;

use chatbot_core::{CommandKind, Effect, Input, LlmError, Outcome, Purpose, Reason, Role, Trigger};
use common::{chat_body, config, Bot, T0};

const LOUNGE: &str = "channels: [ { name: lounge } ]\n";

#[test]
fn mention_produces_one_llm_call_and_the_reply_is_said() {
    let mut bot = Bot::new(LOUNGE);
    bot.say("alice", "hey KrytenBot, how are you?");
    let call = bot.last_call();
    assert_eq!(call.channel, "lounge");
    assert_eq!(call.provider, "main");
    assert_eq!(call.purpose, Purpose::Reply);
    bot.reply(&call, "Doing great, thanks!");
    assert_eq!(bot.said(), ["Doing great, thanks!"]);
    let cmd = &bot.published()[0];
    assert_eq!(cmd.correlation_id.as_deref(), Some("ev-1"));
}

#[test]
fn ordinary_chat_makes_no_call_and_no_decision() {
    let mut bot = Bot::new(LOUNGE);
    bot.say("alice", "robotics is fun");
    bot.say("bob", "nobody mentioned the bot's name here... wait");
    assert_eq!(bot.calls().len(), 0, "'bot' alone is not an alias here");
    assert!(bot.decisions().is_empty());
}

#[test]
fn prompt_is_system_then_context_with_speakers_and_own_lines_as_assistant() {
    let mut bot = Bot::new(LOUNGE);
    bot.say("alice", "morning &amp; hello");
    bot.say("KrytenBot", "morning!");
    bot.say("bob", "kryten, tea?");
    let call = bot.last_call();
    let roles: Vec<Role> = call.messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::User, Role::User]);
    assert!(call.messages[0].content.contains("You are KrytenBot in the CyTube chat room \"lounge\""));
    assert_eq!(call.messages[1].content, "alice: morning & hello");
    assert_eq!(call.messages[2].content, "morning!");
    // The line answered stays where it was said (a stable prefix), and the instruction
    // names it last.
    assert_eq!(call.messages[3].content, "bob: kryten, tea?");
    assert_eq!(call.messages[4].content, "[bob is talking to you; reply to them]");
}

#[test]
fn own_messages_shadow_server_and_ignored_users_are_never_answered() {
    let mut bot = Bot::new("channels: [ { name: lounge, ignore_users: [OtherBot] } ]\n");
    bot.say("KrytenBot", "I am KrytenBot");
    bot.say("krytenbot", "kryten says hi");
    bot.say("otherbot", "hey kryten");
    bot.say("[server]", "KrytenBot joined");
    bot.body(
        serde_json::json!({"event_name":"chatMsg","channel":"lounge","correlation_id":"s1",
            "payload":{"username":"eve","msg":"kryten buy followers","meta":{"shadow":true},"time":T0}})
        .to_string()
        .into_bytes(),
    );
    assert!(bot.calls().is_empty());
    assert_eq!(
        bot.reasons(Outcome::Ignored),
        [Reason::OwnMessage, Reason::OwnMessage, Reason::IgnoredUser, Reason::ServerMessage, Reason::ShadowMuted]
    );
}

#[test]
fn join_backlog_is_remembered_but_never_answered() {
    let mut bot = Bot::new(LOUNGE);
    bot.body(chat_body("lounge", "alice", "kryten are you there?", T0 - 60_000, "old"));
    assert!(bot.calls().is_empty());
    assert_eq!(bot.reasons(Outcome::Ignored), [Reason::Backlog]);
    bot.say("bob", "kryten?");
    let call = bot.last_call();
    assert!(call.messages.iter().any(|m| m.content == "alice: kryten are you there?"));
}

#[test]
fn repeated_events_are_ignored_by_id_and_by_content() {
    let mut bot = Bot::new(LOUNGE);
    let body = chat_body("lounge", "alice", "kryten hi", T0, "same");
    bot.body(body.clone());
    bot.body(body);
    bot.body(chat_body("lounge", "alice", "kryten hi", T0, "other-id"));
    assert_eq!(bot.calls().len(), 1);
    assert_eq!(bot.reasons(Outcome::Ignored), [Reason::DuplicateEvent, Reason::DuplicateEvent]);
}

#[test]
fn pm_is_answered_by_pm_and_own_pm_echo_is_ignored() {
    let mut bot = Bot::new(LOUNGE);
    bot.pm("alice", "KrytenBot", "psst, what's on?");
    let call = bot.last_call();
    let n = call.messages.len();
    assert_eq!(call.messages[n - 2].content, "alice: psst, what's on?");
    assert_eq!(call.messages[n - 1].content, "[private message from alice; answer their last line privately]");
    bot.reply(&call, "a zoo video");
    assert_eq!(bot.published()[0].kind, CommandKind::Pm { to: "alice".into(), text: "a zoo video".into() });
    bot.pm("KrytenBot", "alice", "a zoo video");
    bot.pm("bob", "carol", "not for the bot");
    assert_eq!(bot.calls().len(), 1);
    assert_eq!(bot.reasons(Outcome::Ignored), [Reason::OwnMessage, Reason::NotForBot]);
}

#[test]
fn doubled_media_change_fires_once_and_resync_is_not_commented() {
    let mut bot =
        Bot::new("channels: [ { name: lounge, triggers: { media_change: { enabled: true, probability: 1.0 } } } ]\n");
    bot.media("a", "Rick Astley - Never Gonna Give You Up", 39.4);
    bot.media("b", "Me at the zoo", -3.0);
    bot.media("b", "Me at the zoo", -3.0);
    assert_eq!(bot.calls().len(), 1);
    assert!(bot.last_call().messages.last().unwrap().content.contains("Me at the zoo"));
    assert_eq!(bot.reasons(Outcome::Ignored), [Reason::MediaResync, Reason::DuplicateMedia]);
}

#[test]
fn media_change_cooldown_silences_a_quick_second_comment() {
    let mut bot =
        Bot::new("channels: [ { name: lounge, triggers: { media_change: { enabled: true, probability: 1.0 } } } ]\n");
    bot.media("a", "one", -3.0);
    bot.answer("nice one");
    bot.wait(10_000);
    bot.media("b", "two", -3.0);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::MediaChangeCooldown]);
    bot.wait(30_000);
    bot.media("c", "three", -3.0);
    assert_eq!(bot.calls().len(), 2);
}

#[test]
fn per_user_limit_silences_the_fourth_mention_in_a_minute() {
    // The loop guard would step in first for a fourth quick exchange; widen it here.
    let mut bot = Bot::new("channels: [ { name: lounge, loop_guard: { max_exchanges: 10 } } ]\n");
    for i in 0..4 {
        bot.say("alice", &format!("kryten question {i}"));
        bot.answer(&format!("answer {i}"));
        bot.wait(1_000);
    }
    assert_eq!(bot.said().len(), 3);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::PerUserLimit]);
    bot.say("bob", "kryten, my turn");
    assert_eq!(bot.calls().len(), 4, "another user is not limited by alice's window");
    bot.wait(60_000);
    bot.say("alice", "kryten again");
    assert_eq!(bot.calls().len(), 5, "the window slid");
}

#[test]
fn per_user_limit_counts_replies_still_in_flight() {
    let mut bot = Bot::new(LOUNGE);
    for i in 0..5 {
        bot.say("alice", &format!("kryten {i}"));
    }
    assert_eq!(bot.calls().len(), 3);
    // Hitting the limit starts a penalty: the next line meets that first.
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::PerUserLimit, Reason::Penalty]);
}

#[test]
fn per_channel_limit_applies_across_users() {
    let mut bot = Bot::new("channels: [ { name: lounge, limits: { per_channel: { max: 2, window: 1m } } } ]\n");
    for user in ["a", "b", "c"] {
        bot.say(user, "kryten hi");
        bot.answer(&format!("hi {user}"));
    }
    assert_eq!(bot.said().len(), 2);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::PerChannelLimit]);
}

#[test]
fn global_cooldown_keeps_the_bot_quiet_after_a_reply() {
    let mut bot = Bot::new("channels: [ { name: lounge, limits: { global_cooldown: 5s } } ]\n");
    bot.say("a", "kryten one");
    bot.answer("first");
    bot.wait(4_000);
    bot.say("b", "kryten two");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::GlobalCooldown]);
    bot.wait(1_000);
    bot.say("c", "kryten three");
    assert_eq!(bot.calls().len(), 2);
}

#[test]
fn send_spacing_queues_an_early_reply_instead_of_dropping_it() {
    let mut bot = Bot::new("channels: [ { name: lounge, limits: { send_spacing: 1s } } ]\n");
    bot.say("a", "kryten one");
    bot.say("b", "kryten two");
    let calls = bot.calls();
    bot.reply(&calls[0], "first");
    bot.reply(&calls[1], "second");
    assert_eq!(bot.said(), ["first"]);
    assert_eq!(bot.engine.poll_timeout(), Some(chatbot_core::Millis(T0 + 1_000)));
    bot.wait(999);
    assert_eq!(bot.said(), ["first"]);
    bot.wait(1);
    assert_eq!(bot.said(), ["first", "second"]);
}

#[test]
fn max_in_flight_bounds_concurrent_requests() {
    let mut bot = Bot::new("channels: [ { name: lounge, limits: { max_in_flight: 2 } } ]\n");
    for u in ["a", "b", "c"] {
        bot.say(u, "kryten?");
    }
    assert_eq!(bot.calls().len(), 2);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::MaxInFlight]);
}

#[test]
fn keyword_fires_with_its_own_cooldown() {
    let mut bot = Bot::new(
        "channels: [ { name: lounge, triggers: { keywords: [ { words: [pizza, star wars], cooldown: 2m } ] } } ]\n",
    );
    bot.say("a", "who wants PIZZA");
    bot.answer("me!");
    bot.say("b", "star wars marathon tonight");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::TriggerCooldown]);
    assert_eq!(bot.decisions()[0].trigger, Some(Trigger::Keyword(0)));
    bot.wait(120_000);
    bot.say("b", "star wars marathon tonight again");
    assert_eq!(bot.calls().len(), 2);
}

#[test]
fn a_mention_still_fires_when_a_keyword_is_cooling_down() {
    let mut bot =
        Bot::new("channels: [ { name: lounge, triggers: { keywords: [ { words: [pizza], cooldown: 2m } ] } } ]\n");
    bot.say("a", "pizza");
    bot.say("b", "pizza, kryten?");
    assert_eq!(bot.calls().len(), 2);
    assert_eq!(bot.decisions().iter().rfind(|d| d.outcome == Outcome::Fired).unwrap().trigger, Some(Trigger::Mention));
}

#[test]
fn probability_zero_never_fires_and_one_always_fires() {
    let mut bot = Bot::new("channels: [ { name: lounge, triggers: { mention: { probability: 0.0 } } } ]\n");
    bot.say("a", "kryten?");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::Probability]);
}

#[test]
fn probability_is_reproducible_from_the_seed() {
    let run = |seed| {
        let mut bot = Bot::with_seed(
            "channels: [ { name: lounge, triggers: { mention: { probability: 0.5 } }, limits: { per_user: { max: 1000 }, per_channel: { max: 1000 }, max_in_flight: 1000 } } ]\n",
            seed,
        );
        for i in 0..64 {
            bot.say(&format!("u{i}"), "kryten?");
            bot.wait(10);
        }
        bot.decisions().iter().map(|d| d.outcome == Outcome::Fired).collect::<Vec<_>>()
    };
    let a = run(1);
    assert_eq!(a, run(1));
    assert_ne!(a, run(2));
    let fired = a.iter().filter(|f| **f).count();
    assert!((16..=48).contains(&fired), "about half of 64 should fire, got {fired}");
}

#[test]
fn contextual_asks_the_llm_and_replies_only_on_yes() {
    let mut bot = Bot::new(
        "channels: [ { name: lounge, triggers: { contextual: { enabled: true, every: 10m, min_new_messages: 2 } } } ]\n",
    );
    bot.say("a", "anyone seen the new season?");
    bot.say("b", "yes, loved it");
    bot.wait(600_000);
    let check = bot.last_call();
    assert_eq!(check.purpose, Purpose::ParticipationCheck);
    bot.reply(&check, "Yes.");
    let reply = bot.last_call();
    assert_eq!(reply.purpose, Purpose::Reply);
    bot.reply(&reply, "The finale was wild.");
    assert_eq!(bot.said(), ["The finale was wild."]);

    bot.say("a", "true");
    bot.say("b", "so true");
    bot.wait(600_000);
    let check = bot.last_call();
    bot.reply(&check, "no");
    assert_eq!(bot.said().len(), 1);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::DeclinedToJoin]);

    bot.wait(600_000);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::DeclinedToJoin, Reason::NotEnoughNewMessages]);
}

#[test]
fn llm_failure_says_rotating_fallbacks_or_stays_silent() {
    let mut bot = Bot::from_yaml(
        r#"
bot: { name: KrytenBot }
llm:
  providers: { main: { base_url: "http://127.0.0.1:9/v1", model: m } }
  fallback_responses: ["brb", "/kick me"]
defaults: { limits: { global_cooldown: 0s, send_spacing: 0s } }
channels: [ { name: lounge } ]
"#,
    );
    for (i, err) in [LlmError::Status(500), LlmError::Timeout, LlmError::Malformed].into_iter().enumerate() {
        bot.say("a", &format!("KrytenBot {i}"));
        let call = bot.last_call();
        bot.fail(&call, err);
        bot.wait(60_000);
    }
    assert_eq!(bot.said(), ["brb", "kick me", "brb"], "rotating, and never a leading slash");
    assert_eq!(bot.reasons(Outcome::Sent), [Reason::Fallback, Reason::Fallback, Reason::Fallback]);

    let mut silent = Bot::new(LOUNGE);
    silent.say("a", "kryten?");
    let call = silent.last_call();
    silent.fail(&call, LlmError::EmptyChoices);
    assert!(silent.said().is_empty());
    assert_eq!(silent.reasons(Outcome::Dropped), [Reason::LlmFailed(LlmError::EmptyChoices)]);
}

#[test]
fn a_transient_failure_moves_to_the_next_provider_in_the_chain() {
    let mut bot = Bot::new("channels: [ { name: lounge, provider: [main, backup] } ]\n");
    bot.say("a", "kryten?");
    let first = bot.last_call();
    bot.fail(&first, LlmError::Status(429));
    let second = bot.last_call();
    assert_eq!(second.provider, "backup");
    assert_ne!(first.id, second.id);
    bot.reply(&second, "from backup");
    assert_eq!(bot.said(), ["from backup"]);
}

#[test]
fn a_lost_llm_answer_never_stalls_the_channel() {
    let mut bot = Bot::new("channels: [ { name: lounge, limits: { max_in_flight: 1 } } ]\n");
    bot.say("a", "kryten?");
    let lost = bot.last_call();
    bot.say("b", "kryten??");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::MaxInFlight]);
    // default provider: 30 s x (3 attempts + 1 adapted resend) + up to 30 s (Retry-After)
    // before each of the 2 retries + 10 s slack: the client's own retry schedule.
    bot.wait(189_000);
    assert!(!bot.effects.contains(&Effect::CancelLlm(lost.id)), "the client may still be retrying");
    bot.wait(1_000);
    assert!(bot.effects.contains(&Effect::CancelLlm(lost.id)));
    assert_eq!(bot.reasons(Outcome::Dropped), [Reason::LlmFailed(LlmError::Timeout)]);
    bot.say("c", "kryten???");
    assert_eq!(bot.calls().len(), 2);
    // The late answer to the abandoned request is ignored.
    bot.reply(&lost, "too late");
    assert!(bot.said().is_empty());
}

#[test]
fn dropped_replies_have_reasons_and_free_their_slot() {
    let mut bot = Bot::new(
        "channels: [ { name: lounge, response: { block_keywords: [darn] }, limits: { per_user: { max: 1 } } } ]\n",
    );
    bot.say("a", "kryten?");
    bot.answer("well darn");
    bot.say("a", "kryten??");
    bot.answer("KrytenBot:");
    bot.say("a", "kryten???");
    bot.answer("fine");
    bot.say("b", "kryten?");
    bot.answer("fine");
    assert_eq!(bot.said(), ["fine"]);
    assert_eq!(bot.reasons(Outcome::Dropped), [Reason::BlockedReply, Reason::EmptyReply, Reason::DuplicateReply]);
}

#[test]
fn reload_keeps_unchanged_channels_and_drops_removed_ones() {
    let mut bot = Bot::new("channels: [ { name: lounge }, { name: movies } ]\n");
    bot.say("a", "remember this line");
    bot.say_in("movies", "b", "kryten, a film?");
    let pending = bot.last_call();
    bot.input(Input::Reload(Box::new(config("channels: [ { name: Lounge, system_prompt: new }, { name: games } ]\n"))));
    assert!(bot.effects.contains(&Effect::CancelLlm(pending.id)));
    assert_eq!(bot.reasons(Outcome::Dropped), [Reason::ChannelRemoved]);
    bot.say("c", "kryten?");
    let call = bot.last_call();
    assert!(call.messages[0].content.starts_with("new\n\n"));
    assert_eq!(call.messages[1].content, "a: remember this line");
    bot.say_in("games", "d", "kryten?");
    assert_eq!(bot.last_call().messages.len(), 3, "a new channel starts empty: system, d's line, instruction");
    bot.say_in("movies", "b", "kryten?");
    assert_eq!(bot.reasons(Outcome::Ignored), [Reason::UnknownChannel]);
}

#[test]
fn shutdown_stops_new_triggers_and_reports_when_idle() {
    let mut bot = Bot::new(LOUNGE);
    bot.say("a", "kryten?");
    bot.input(Input::Shutdown);
    assert!(!bot.effects.contains(&Effect::ShutdownComplete));
    bot.say("b", "kryten??");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::ShuttingDown]);
    bot.answer("bye");
    assert_eq!(bot.said(), ["bye"]);
    assert_eq!(bot.effects.last(), Some(&Effect::ShutdownComplete));

    let mut idle = Bot::new(LOUNGE);
    idle.input(Input::Shutdown);
    assert_eq!(idle.effects, [Effect::ShutdownComplete]);
}

#[test]
fn replies_made_while_disconnected_leave_after_reconnect_with_spacing() {
    let mut bot = Bot::new("channels: [ { name: lounge, limits: { send_spacing: 1s } } ]\n");
    bot.input(Input::Connection { up: false });
    bot.say("a", "kryten one");
    bot.say("b", "kryten two");
    let calls = bot.calls();
    bot.reply(&calls[0], "one");
    bot.reply(&calls[1], "two");
    assert!(bot.said().is_empty());
    bot.wait(5_000);
    bot.input(Input::Connection { up: true });
    assert_eq!(bot.said(), ["one"]);
    bot.wait(1_000);
    assert_eq!(bot.said(), ["one", "two"]);
}

#[test]
fn garbage_bodies_are_counted_and_skipped() {
    let mut bot = Bot::new(LOUNGE);
    bot.body(b"not json".to_vec());
    bot.body(br#"{"event_name":"chatMsg","channel":"lounge","payload":42}"#.to_vec());
    bot.body(br#"{"event_name":"usercount","channel":"lounge","payload":3}"#.to_vec());
    assert_eq!(bot.reasons(Outcome::Ignored), [Reason::MalformedEvent, Reason::MalformedEvent]);
    assert_eq!(bot.engine.unrouted(), 1);
    let stats = bot.engine.stats();
    assert_eq!(stats["lounge"].events.get("usercount"), Some(&1));
    bot.say("a", "kryten still works");
    assert_eq!(bot.calls().len(), 1);
}

#[test]
fn long_replies_are_split_into_parts_sent_with_spacing() {
    let mut bot = Bot::new(
        "channels: [ { name: lounge, response: { max_length: 40, max_parts: 2 }, limits: { send_spacing: 1s } } ]\n",
    );
    bot.say("a", "kryten, tell me a story");
    bot.answer("Once upon a time there was a bot. It answered every question politely and well.");
    assert_eq!(bot.said(), ["Once upon a time there was a bot."]);
    bot.wait(1_000);
    assert_eq!(bot.said().len(), 2);
    assert!(bot.said().iter().all(|s| s.encode_utf16().count() <= 40));
}

#[test]
fn decision_records_serialise_in_the_shared_log_shape() {
    let mut bot = Bot::new("channels: [ { name: lounge, limits: { per_user: { max: 1 } } } ]\n");
    bot.say("alice", "kryten?");
    bot.say("alice", "kryten??");
    let json = serde_json::to_string(&bot.decisions()[1]).unwrap();
    assert_eq!(
        json,
        format!(
            r#"{{"at":{T0},"channel":"lounge","correlation_id":"ev-2","user":"alice","trigger":"mention","outcome":"suppressed","reason":"per_user_limit"}}"#
        )
    );
}

#[test]
fn a_participation_check_does_not_start_the_global_cooldown_for_its_own_reply() {
    let mut bot = Bot::new(
        "channels: [ { name: lounge, limits: { global_cooldown: 30s }, triggers: { contextual: { enabled: true, every: 10m, min_new_messages: 1 } } } ]\n",
    );
    bot.say("a", "quiet in here");
    bot.wait(600_000);
    bot.answer("yes");
    bot.wait(800);
    assert_eq!(bot.last_call().purpose, Purpose::Reply);
    assert!(bot.reasons(Outcome::Suppressed).is_empty());
}

#[test]
fn a_user_who_keeps_hitting_limits_gets_a_growing_penalty_that_decays() {
    let mut bot = Bot::new(
        "channels: [ { name: lounge, limits: { per_user: { max: 1, window: 10s } }, penalty: { base: 30s, max: 2m }, loop_guard: { max_exchanges: 100 } } ]\n",
    );
    bot.say("spammy", "kryten!");
    bot.answer("hi");
    bot.say("spammy", "kryten!!"); // limit hit: strike 1, 30 s penalty
    bot.wait(20_000);
    bot.say("spammy", "kryten!!!"); // still penalised: strike 2, 60 s from now
    bot.wait(40_000);
    bot.say("spammy", "kryten?"); // 60 s after strike 1, 40 s into a 60 s penalty: strike 3, 2 min (max)
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::PerUserLimit, Reason::Penalty, Reason::Penalty]);
    bot.wait(119_000);
    bot.say("spammy", "kryten??");
    assert_eq!(bot.reasons(Outcome::Suppressed).last(), Some(&Reason::Penalty), "still inside the 2 min cap");
    // Stops for a while: the strikes decay and the next line is answered.
    bot.wait(600_000);
    bot.say("spammy", "kryten, sorry");
    assert_eq!(bot.calls().len(), 2);
    // Other users were never affected.
    bot.say("polite", "kryten, hello");
    assert_eq!(bot.calls().len(), 3);
}

#[test]
fn the_loop_guard_backs_off_from_an_account_that_keeps_answering_quickly() {
    let mut bot =
        Bot::new("channels: [ { name: lounge, loop_guard: { max_exchanges: 3, window: 2m, backoff: 5m } } ]\n");
    for i in 0..6 {
        bot.say("OtherBot", &format!("KrytenBot, round {i}?"));
        if bot.calls().len() > i {
            bot.answer(&format!("OtherBot, my answer number {i}"));
        }
        bot.wait(3_000);
    }
    // A fresh line, then three quick exchanges: the fourth answer is one too many.
    assert_eq!(bot.said().len(), 3);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::LoopGuard, Reason::LoopGuard, Reason::LoopGuard]);
    // Others are still answered meanwhile.
    bot.say("alice", "kryten, you there?");
    assert_eq!(bot.calls().len(), 4);
    // After the backoff the account is heard again.
    bot.wait(300_000);
    bot.say("OtherBot", "KrytenBot, back again?");
    assert_eq!(bot.calls().len(), 5);
}

#[test]
fn a_line_copying_the_bots_own_reply_counts_as_an_exchange() {
    let mut bot =
        Bot::new("channels: [ { name: lounge, loop_guard: { max_exchanges: 1, window: 10s, backoff: 5m } } ]\n");
    bot.say("alice", "kryten, what is the best pizza topping");
    bot.answer("mushrooms are the best pizza topping by far");
    bot.wait(60_000); // long after the window
    bot.say("parrot", "kryten mushrooms are the best pizza topping by far");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::LoopGuard]);
}

#[test]
fn a_spent_budget_silences_the_channel_until_the_hour_has_passed() {
    let mut bot = Bot::new("channels: [ { name: lounge, budget: { tokens_per_hour: 500, include_pms: false } } ]\n");
    let usage = Some(chatbot_core::Usage { input_tokens: 250, output_tokens: 50, cached_input_tokens: 0 });
    for i in 0..2 {
        bot.say(&format!("u{i}"), "kryten?");
        let call = bot.last_call();
        bot.input(Input::LlmDone { id: call.id, result: Ok(chatbot_core::LlmReply::new(format!("reply {i}"), usage)) });
    }
    // 600 spent: one reply over, never more.
    assert_eq!(bot.engine.status()[0].tokens_hour, 600);
    bot.say("u3", "kryten?");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::Budget]);
    // PMs are exempt here (include_pms: false).
    bot.pm("u4", "KrytenBot", "hello?");
    assert_eq!(bot.calls().len(), 3);
    bot.wait(3_600_000);
    bot.say("u5", "kryten, again?");
    assert_eq!(bot.calls().len(), 4);
}

#[test]
fn requests_in_flight_reserve_their_estimate_against_the_budget() {
    // Each request reserves ~max_tokens (200) + its prompt: the third would cross 500.
    let mut bot = Bot::new("channels: [ { name: lounge, budget: { tokens_per_hour: 500 } } ]\n");
    for i in 0..3 {
        bot.say(&format!("u{i}"), "kryten?");
    }
    assert_eq!(bot.calls().len(), 2);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::Budget]);
}

#[test]
fn a_failing_provider_opens_its_breaker_then_is_tried_again_after_the_cooldown() {
    let mut bot = Bot::from_yaml(
        r#"
bot: { name: KrytenBot }
llm:
  providers:
    main: { base_url: "http://127.0.0.1:9/v1", model: m, breaker: { failures: 2, cooldown: 30s } }
    backup: { base_url: "http://127.0.0.1:10/v1", model: m, breaker: { failures: 2, cooldown: 30s } }
  fallback_responses: ["all lines are busy"]
defaults: { provider: [main, backup], limits: { global_cooldown: 0s, send_spacing: 0s }, loop_guard: { max_exchanges: 100 } }
channels: [ { name: lounge } ]
"#,
    );
    for i in 0..2 {
        bot.say(&format!("u{i}"), "KrytenBot?");
        let first = bot.last_call();
        assert_eq!(first.provider, "main");
        bot.fail(&first, LlmError::Status(503));
        assert_eq!(bot.last_call().provider, "backup");
        bot.answer("from backup");
        bot.wait(1_000);
    }
    // Open: main is skipped without a request.
    bot.say("u2", "KrytenBot?");
    assert_eq!(bot.last_call().provider, "backup");
    bot.answer("still backup");
    // After the cooldown one trial goes to main; success closes the breaker.
    bot.wait(30_000);
    bot.say("u3", "KrytenBot?");
    assert_eq!(bot.last_call().provider, "main");
    bot.answer("main is back");
    assert_eq!(bot.said().last().map(String::as_str), Some("main is back"));
}

#[test]
fn when_every_breaker_is_open_the_fallback_is_said_without_calling() {
    let mut bot = Bot::from_yaml(
        r#"
bot: { name: KrytenBot }
llm:
  providers: { main: { base_url: "http://127.0.0.1:9/v1", model: m, breaker: { failures: 1, cooldown: 1m } } }
  fallback_responses: ["all lines are busy"]
defaults: { limits: { global_cooldown: 0s, send_spacing: 0s }, loop_guard: { max_exchanges: 100 } }
channels: [ { name: lounge } ]
"#,
    );
    bot.say("a", "KrytenBot?");
    let call = bot.last_call();
    bot.fail(&call, LlmError::Timeout);
    bot.say("b", "KrytenBot??");
    assert_eq!(bot.calls().len(), 1, "no request while the only provider is open");
    assert_eq!(bot.reasons(Outcome::Dropped), [Reason::LlmFailed(LlmError::Timeout), Reason::ProvidersDown]);
    assert_eq!(bot.said(), ["all lines are busy", "all lines are busy"]);
}

#[test]
fn operators_can_mute_unmute_and_clear_a_channel() {
    let mut bot = Bot::new(LOUNGE);
    bot.say("alice", "remember me");
    bot.say("bob", "kryten?");
    let pending = bot.last_call();
    let control = |action| Input::Control { channel: "LOUNGE".into(), action };
    bot.input(control(chatbot_core::Control::Mute(None)));
    assert!(bot.engine.is_muted("lounge"));
    bot.reply(&pending, "too late, muted");
    bot.say("carol", "kryten??");
    assert!(bot.said().is_empty());
    assert_eq!(bot.reasons(Outcome::Dropped), [Reason::Muted]);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::Muted]);
    bot.input(control(chatbot_core::Control::ClearContext));
    bot.input(control(chatbot_core::Control::Unmute));
    bot.say("dave", "kryten, back?");
    let call = bot.last_call();
    assert_eq!(call.messages.len(), 3, "context cleared: the system prompt, dave's line and the instruction");
    let recent = bot.engine.recent_decisions("lounge", 2);
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[1].outcome, Outcome::Fired);
}

#[test]
fn a_reply_cut_by_the_token_cap_keeps_only_its_complete_sentences() {
    let mut bot = Bot::new("channels: [ { name: lounge } ]\n");
    bot.say("a", "kryten, tell me about it");
    let call = bot.last_call();
    let cut = chatbot_core::LlmReply {
        text: "It is a fine film. The director also made the".into(),
        usage: None,
        truncated: true,
    };
    bot.input(Input::LlmDone { id: call.id, result: Ok(cut) });
    assert_eq!(bot.said(), ["It is a fine film."]);
}

#[test]
fn a_reasoning_model_that_ran_out_of_tokens_is_dropped_as_truncated() {
    let mut bot = Bot::new("channels: [ { name: lounge } ]\n");
    bot.say("a", "kryten?");
    let call = bot.last_call();
    bot.fail(&call, LlmError::Truncated);
    assert_eq!(bot.reasons(Outcome::Dropped), [Reason::LlmFailed(LlmError::Truncated)]);
    assert_eq!(Reason::LlmFailed(LlmError::Truncated).label(), "llm_truncated");
}
