//! Channel leases (`ha`) as the engine sees them: a standby never speaks, an owner
//! renews before its lease can expire and stops trusting it before anyone else could
//! hold it, limits survive a takeover, shutdown hands leases back.

mod common;

use chatbot_core::{Effect, Input, LeaseEvent, LeaseOp, LimitSnapshot, Outcome, Reason};
use common::{Bot, T0};

const HA: &str = "ha: { enabled: true, lease_ttl: 9s, instance: me }\nchannels: [ { name: lounge } ]\n";

fn ops(bot: &Bot) -> Vec<LeaseOp> {
    bot.effects.iter().filter_map(|e| if let Effect::Lease(op) = e { Some(op.clone()) } else { None }).collect()
}

fn lease(bot: &mut Bot, ev: LeaseEvent) {
    bot.input(Input::Lease(ev));
}

/// How long a new owner waits to confirm its create (a tenth of the 9 s TTL).
const CONFIRM_MS: u64 = 900;

/// Our acquires of `channels` created their keys at `revision`, and the renewals that
/// confirm them, sent [`CONFIRM_MS`] later, succeed (at the same revision, so the
/// tests' revisions stay as written).
fn own(bot: &mut Bot, channels: &[&str], revision: u64, state: Option<LimitSnapshot>) {
    for channel in channels {
        lease(bot, LeaseEvent::Acquired { channel: (*channel).into(), revision, state: state.clone() });
    }
    assert!(channels.iter().all(|c| bot.engine.lease_owner(c).is_none()), "silent until confirmed");
    bot.clear();
    bot.wait(CONFIRM_MS);
    for op in ops(bot) {
        if let LeaseOp::Renew { channel, revision: r } = op {
            assert_eq!(r, revision);
            lease(bot, LeaseEvent::Renewed { channel, revision });
        }
    }
    for channel in channels {
        assert_eq!(bot.engine.lease_owner(channel), Some("me"), "{channel} confirmed");
    }
}

fn acquired(bot: &mut Bot, state: Option<LimitSnapshot>) {
    own(bot, &["lounge"], 1, state);
}

#[test]
fn a_standby_reads_the_room_but_never_speaks_and_asks_for_the_lease() {
    let mut bot = Bot::new(HA);
    bot.wait(0);
    assert_eq!(ops(&bot), [LeaseOp::Acquire { channel: "lounge".into() }]);
    bot.say("alice", "hey KrytenBot");
    assert!(bot.calls().is_empty());
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::NotOwner]);
    // Someone else holds it.
    lease(&mut bot, LeaseEvent::Taken { channel: "lounge".into() });
    assert_eq!(bot.engine.lease_owner("lounge"), None);
    bot.say("bob", "KrytenBot?");
    assert!(bot.calls().is_empty());
}

#[test]
fn an_owner_speaks_renews_and_stops_before_its_lease_could_expire() {
    let mut bot = Bot::new(HA);
    bot.wait(0);
    acquired(&mut bot, None);
    assert_eq!(bot.engine.lease_owner("lounge"), Some("me"));
    bot.say("alice", "hey KrytenBot");
    bot.answer("hi alice");
    assert_eq!(bot.said(), ["hi alice"]);
    // Renewal at a third of the TTL.
    bot.clear();
    bot.wait(3_000);
    let renewals: Vec<LeaseOp> = ops(&bot).into_iter().filter(|o| matches!(o, LeaseOp::Renew { .. })).collect();
    assert_eq!(renewals, [LeaseOp::Renew { channel: "lounge".into(), revision: 1 }]);
    // The renewal never comes back: at ttl - ttl/5 (7.2 s after the acquire was sent)
    // the instance stops speaking, before the key can expire on the server.
    bot.clear();
    bot.wait(4_200);
    bot.say("alice", "KrytenBot still there?");
    assert!(bot.calls().is_empty(), "an owner whose lease ran out must not call");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::NotOwner]);
    assert_eq!(bot.engine.lease_stats().unwrap().lost, 1);
}

#[test]
fn a_new_owner_speaks_only_once_a_renewal_finds_nobody_created_the_key_after_it() {
    let mut bot = Bot::new(HA);
    bot.wait(0);
    // Our create succeeded, but a clustered bucket may also have let another create
    // through a moment later: silent until a renewal on our revision says otherwise.
    lease(&mut bot, LeaseEvent::Acquired { channel: "lounge".into(), revision: 4, state: None });
    bot.say("alice", "hey KrytenBot");
    assert!(bot.calls().is_empty(), "spoke before the create was confirmed");
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::NotOwner]);
    bot.clear();
    bot.wait(CONFIRM_MS - 1);
    assert!(ops(&bot).is_empty(), "confirmed before the other writes could land: {:?}", ops(&bot));
    bot.wait(1);
    assert_eq!(ops(&bot), [LeaseOp::Renew { channel: "lounge".into(), revision: 4 }]);
    // The other create landed after ours: the key is theirs, and it never was ours.
    lease(&mut bot, LeaseEvent::Taken { channel: "lounge".into() });
    bot.say("bob", "KrytenBot?");
    assert!(bot.calls().is_empty());
    let stats = bot.engine.lease_stats().unwrap();
    assert_eq!((stats.acquired, stats.lost, stats.owned), (0, 0, 0), "{stats:?}");
    // The same when the watch shows the later create first.
    let mut bot = Bot::new(HA);
    bot.wait(0);
    lease(&mut bot, LeaseEvent::Acquired { channel: "lounge".into(), revision: 4, state: None });
    lease(&mut bot, LeaseEvent::Seen { channel: "lounge".into(), owner: "other".into(), revision: 5, fresh: true });
    assert_eq!(bot.engine.lease_owner("lounge"), Some("other"));
    bot.clear();
    bot.wait(CONFIRM_MS);
    assert!(ops(&bot).is_empty(), "nothing to confirm: {:?}", ops(&bot));
    // Confirmed: it speaks.
    let mut bot = Bot::new(HA);
    bot.wait(0);
    own(&mut bot, &["lounge"], 4, None);
    bot.say("alice", "hey KrytenBot");
    assert_eq!(bot.calls().len(), 1);
    assert_eq!(bot.engine.lease_stats().unwrap().acquired, 1);
}

#[test]
fn renewals_keep_the_lease_and_a_reply_in_flight_is_dropped_when_it_is_lost() {
    let mut bot = Bot::new(HA);
    bot.wait(0);
    acquired(&mut bot, None);
    for round in 0..5 {
        bot.wait(3_000);
        lease(&mut bot, LeaseEvent::Renewed { channel: "lounge".into(), revision: 2 + round });
    }
    bot.say("alice", "hey KrytenBot");
    let call = bot.last_call();
    // Another instance took the key (we were partitioned): stop.
    lease(&mut bot, LeaseEvent::Seen { channel: "lounge".into(), owner: "other".into(), revision: 100, fresh: true });
    bot.reply(&call, "too late");
    assert!(bot.said().is_empty());
    assert!(bot.reasons(Outcome::Dropped).contains(&Reason::NotOwner));
}

#[test]
fn limits_survive_a_takeover_from_the_saved_state_and_the_echoes_seen() {
    let cfg = "ha: { enabled: true, lease_ttl: 9s, instance: me }\nchannels: [ { name: lounge, limits: { per_channel: { max: 3, window: 1m } } } ]\n";
    let mut bot = Bot::new(cfg);
    bot.wait(0);
    lease(&mut bot, LeaseEvent::Taken { channel: "lounge".into() });
    bot.wait(5_000);
    // The other owner said two lines (echoed by the channel) ...
    let t = bot.now;
    bot.say("KrytenBot", "first answer");
    bot.wait(1_000);
    bot.say("KrytenBot", "second answer");
    // ... and saved only the first before it died.
    let saved = LimitSnapshot {
        at: t,
        sends: vec![t],
        lines: vec![(t, chatbot_core::lease::fingerprint("first answer"))],
        last_send: Some(t),
        ..Default::default()
    };
    bot.clear();
    bot.wait(10_000);
    let acquire = ops(&bot);
    assert!(acquire.contains(&LeaseOp::Acquire { channel: "lounge".into() }), "{acquire:?}");
    acquired(&mut bot, Some(saved));
    // Two sends in the window (the first known both ways, counted once): one more fits,
    // then the limit holds.
    bot.say("alice", "KrytenBot one");
    bot.answer("ok one");
    bot.say("bob", "KrytenBot two");
    assert_eq!(bot.said(), ["ok one"]);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::PerChannelLimit]);
    // The new owner saves its own state within a second of a send.
    bot.wait(1_000);
    let saved: Vec<LimitSnapshot> = ops(&bot)
        .into_iter()
        .filter_map(|o| if let LeaseOp::Save { state, .. } = o { Some(state) } else { None })
        .collect();
    assert!(saved.last().is_some_and(|s| s.sends.len() == 3), "{saved:?}");
}

#[test]
fn shutdown_releases_the_lease_once_the_channel_is_idle() {
    let mut bot = Bot::new(HA);
    bot.wait(0);
    acquired(&mut bot, None);
    bot.say("alice", "hey KrytenBot");
    let call = bot.last_call();
    bot.clear();
    bot.input(Input::Shutdown);
    let releases =
        |bot: &Bot| ops(bot).into_iter().filter(|o| matches!(o, LeaseOp::Release { .. })).collect::<Vec<_>>();
    assert!(releases(&bot).is_empty(), "a reply is in flight: keep the lease until it is said");
    bot.reply(&call, "bye alice");
    bot.wait(100);
    assert_eq!(bot.said(), ["bye alice"]);
    let release = releases(&bot);
    assert!(matches!(release.as_slice(), [LeaseOp::Release { revision: 1, .. }]), "{release:?}");
    assert!(!bot.effects.iter().any(|e| matches!(e, Effect::ShutdownComplete)));
    lease(&mut bot, LeaseEvent::Released { channel: "lounge".into() });
    assert!(bot.effects.iter().any(|e| matches!(e, Effect::ShutdownComplete)));
}

#[test]
fn an_instance_holds_at_most_its_share_plus_one() {
    let names: Vec<String> = (0..6).map(|i| format!("{{ name: c{i} }}")).collect();
    let cfg = format!("ha: {{ enabled: true, lease_ttl: 9s, instance: me }}\nchannels: [ {} ]\n", names.join(", "));
    let mut bot = Bot::new(&cfg);
    bot.wait(0);
    // Alone: it asks for all six.
    let acquires = ops(&bot).len();
    assert_eq!(acquires, 6);
    own(&mut bot, &["c0", "c1", "c2", "c3", "c4", "c5"], 1, None);
    // Two more instances appear: ceil(6 / 3) + 1 = 3, so three leases go back.
    bot.clear();
    lease(&mut bot, LeaseEvent::Peer { instance: "b".into(), alive: true });
    lease(&mut bot, LeaseEvent::Peer { instance: "c".into(), alive: true });
    let released = ops(&bot).iter().filter(|o| matches!(o, LeaseOp::Release { .. })).count();
    assert_eq!(released, 3);
    assert_eq!(bot.engine.lease_stats().unwrap().live_instances, 3);
    // What it gave back it no longer speaks for, at once.
    bot.clear();
    for i in 0..6 {
        bot.say_in(&format!("c{i}"), "alice", "hey KrytenBot");
    }
    assert_eq!(bot.calls().len(), 3);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::NotOwner; 3]);
}

#[test]
fn an_event_the_previous_owner_answered_is_not_answered_again_when_it_arrives_late() {
    let mut bot = Bot::new(HA);
    bot.wait(0);
    let saved = LimitSnapshot { at: T0, answered: vec!["late-1".into()], released: true, ..Default::default() };
    acquired(&mut bot, Some(saved));
    bot.body(common::chat_body("lounge", "alice", "hey KrytenBot", T0, "late-1"));
    assert!(bot.calls().is_empty());
    assert_eq!(bot.reasons(Outcome::Ignored), [Reason::DuplicateEvent]);
    bot.body(common::chat_body("lounge", "alice", "hey KrytenBot, again", T0 + 1, "fresh-2"));
    assert_eq!(bot.calls().len(), 1);
}

#[test]
fn an_instance_that_was_cut_off_assumes_the_worst_about_what_it_did_not_see() {
    let cfg = "ha: { enabled: true, lease_ttl: 9s, instance: me }\nchannels: [ { name: lounge, limits: { send_spacing: 1s, per_channel: { max: 5, window: 1m } } } ]\n";
    let mut bot = Bot::new(cfg);
    bot.wait(0);
    lease(&mut bot, LeaseEvent::Taken { channel: "lounge".into() });
    bot.wait(5_000);
    // NATS is down here while the owner sends and saves one line, then dies: whatever it
    // said unsaved (at most SAVE_GRACE, 2 s, of sending) may have gone unseen.
    bot.input(Input::Connection { up: false });
    let t = bot.now;
    bot.wait(2_000);
    bot.input(Input::Connection { up: true });
    let saved = LimitSnapshot {
        at: t,
        sends: vec![t],
        lines: vec![(t, chatbot_core::lease::fingerprint("one"))],
        ..Default::default()
    };
    bot.wait(10_000);
    // Its next acquire succeeds.
    bot.clear();
    for _ in 0..100 {
        if ops(&bot).iter().any(|o| matches!(o, LeaseOp::Acquire { .. })) {
            break;
        }
        bot.wait(100);
    }
    acquired(&mut bot, Some(saved));
    // 1 saved + up to 3 in 2 s (spacing 1 s): one of 5 left.
    for (i, who) in ["alice", "bob", "carol"].iter().enumerate() {
        bot.wait(1_000);
        bot.say(who, "KrytenBot?");
        if i == 0 {
            bot.answer("ok");
        }
    }
    assert_eq!(bot.said(), ["ok"]);
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::PerChannelLimit, Reason::PerChannelLimit]);
}

#[test]
fn a_standby_obeys_a_moderator_silently_so_a_takeover_keeps_the_mute() {
    let mut bot = Bot::new(HA);
    bot.wait(0);
    bot.event("userlist", serde_json::json!([{"name": "carol", "rank": 2}, {"name": "alice", "rank": 1}]));
    bot.say("carol", "!kryten mute");
    assert!(bot.published().is_empty(), "only the lease holder answers");
    assert!(bot.effects.iter().any(|e| matches!(e, Effect::Moderation(r) if r.command == "mute")));
    assert_eq!(bot.reasons(Outcome::Suppressed), [Reason::NotOwner]);
    acquired(&mut bot, None);
    bot.say("alice", "hey KrytenBot");
    assert!(bot.calls().is_empty(), "the new owner is muted as the moderator asked");
    assert_eq!(bot.reasons(Outcome::Suppressed).last(), Some(&Reason::Muted));
    bot.say("carol", "!kryten unmute");
    assert_eq!(bot.pms(), [("carol".to_owned(), "Speaking again in lounge.".to_owned())]);
}

/// Lets `ms` pass in 50 ms steps (timers fire on time), each lease operation answered
/// by `answer` at once; the operations sent, with the time each went out.
fn run_for(bot: &mut Bot, ms: u64, answer: impl Fn(&LeaseOp) -> Option<LeaseEvent>) -> Vec<(u64, LeaseOp)> {
    let mut out = Vec::new();
    for _ in 0..ms / 50 {
        bot.clear();
        bot.wait(50);
        for op in ops(bot) {
            out.push((bot.now - T0, op.clone()));
            if let Some(ev) = answer(&op) {
                lease(bot, ev);
            }
        }
    }
    out
}

#[test]
fn a_failing_bucket_is_probed_by_one_acquire_at_a_time_with_growing_waits_and_all_go_when_it_answers() {
    let cfg =
        "ha: { enabled: true, lease_ttl: 9s, instance: me }\nchannels: [ { name: a }, { name: b }, { name: c } ]\n";
    let mut bot = Bot::new(cfg);
    bot.wait(0);
    assert_eq!(ops(&bot).len(), 3, "all three are tried at once");
    for ch in ["a", "b", "c"] {
        lease(&mut bot, LeaseEvent::Failed { channel: ch.into() });
    }
    assert_eq!(bot.engine.lease_stats().unwrap().failing, 3);
    // No leader for the bucket's stream: every probe fails 10 ms after it went out.
    let mut sent = Vec::new();
    for _ in 0..200 {
        bot.clear();
        bot.wait(50);
        for op in ops(&bot) {
            sent.push(bot.now - T0);
            assert!(matches!(op, LeaseOp::Acquire { .. }), "{op:?}");
            bot.now += 10;
            bot.clear();
            lease(&mut bot, LeaseEvent::Failed { channel: op.channel().to_owned() });
            assert!(ops(&bot).iter().all(|o| !matches!(o, LeaseOp::Acquire { .. })), "one probe at a time");
        }
    }
    // 10 s: probes at most once a second once the wait has grown (not every 200 ms).
    assert!(sent.len() <= 11, "{} probes in 10 s: {sent:?}", sent.len());
    let gaps: Vec<u64> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= 950), "the wait is 1 s once it has grown: {gaps:?}");
    // The bucket answers (the probe finds its key taken): the other two go at once.
    let probe = loop {
        bot.clear();
        bot.wait(50);
        if let Some(op) = ops(&bot).pop() {
            break op;
        }
    };
    bot.clear();
    lease(&mut bot, LeaseEvent::Taken { channel: probe.channel().to_owned() });
    let retried: Vec<String> = ops(&bot).iter().map(|o| o.channel().to_owned()).collect();
    assert_eq!(retried.len(), 2, "the two waiting channels are tried as soon as the bucket answers: {retried:?}");
    assert!(!retried.contains(&probe.channel().to_owned()));
    assert_eq!(bot.engine.lease_stats().unwrap().failing, 0);
}

#[test]
fn an_owner_whose_renewals_fail_retries_with_backoff_and_renews_at_once_when_the_bucket_answers() {
    let cfg = "ha: { enabled: true, lease_ttl: 9s, instance: me }\nchannels: [ { name: a }, { name: b } ]\n";
    let mut bot = Bot::new(cfg);
    bot.wait(0);
    own(&mut bot, &["a"], 1, None);
    lease(&mut bot, LeaseEvent::Taken { channel: "b".into() });
    // The renewal 3 s after the confirmation fails, and so do its retries: 200 ms,
    // 400 ms, 800 ms, 1 s.
    let mut renewals = Vec::new();
    let fail = |op: &LeaseOp| Some(LeaseEvent::Failed { channel: op.channel().to_owned() });
    for (t, op) in run_for(&mut bot, 6_000, fail) {
        if matches!(op, LeaseOp::Renew { .. }) {
            renewals.push(t);
        }
    }
    let gaps: Vec<u64> = renewals.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(renewals.first(), Some(&(CONFIRM_MS + 3_000)));
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]) && gaps.iter().all(|g| (200..=1_050).contains(g)), "{gaps:?}");
    assert!(gaps.first().is_some_and(|g| *g <= 250) && gaps.last().is_some_and(|g| *g >= 950), "{gaps:?}");
    assert!(bot.engine.lease_owner("a") == Some("me"), "still trusted: 6 s < ttl - ttl/5");
    // The bucket answers (the watch delivers b's renewal by another instance): a renews now.
    bot.clear();
    lease(&mut bot, LeaseEvent::Seen { channel: "b".into(), owner: "other".into(), revision: 50, fresh: true });
    assert!(matches!(ops(&bot).as_slice(), [LeaseOp::Renew { channel, .. }] if channel == "a"), "{:?}", ops(&bot));
}

#[test]
fn a_channel_nobody_has_held_for_longer_than_the_ttl_is_reported() {
    let cfg = "ha: { enabled: true, lease_ttl: 9s, instance: me }\nchannels: [ { name: a }, { name: b } ]\n";
    let mut bot = Bot::new(cfg);
    bot.wait(0);
    own(&mut bot, &["a"], 1, None);
    lease(&mut bot, LeaseEvent::Taken { channel: "b".into() });
    // b's owner renews (seen by the watch) every 3 s for a while, then goes silent; a's
    // renewals here succeed throughout.
    let renew_all = |bot: &mut Bot, ms: u64| {
        run_for(bot, ms, |op| match op {
            LeaseOp::Renew { channel, revision } => {
                Some(LeaseEvent::Renewed { channel: channel.clone(), revision: revision + 1 })
            }
            _ => None,
        })
    };
    for _ in 0..4 {
        renew_all(&mut bot, 3_000);
        lease(&mut bot, LeaseEvent::Seen { channel: "b".into(), owner: "other".into(), revision: 50, fresh: true });
    }
    renew_all(&mut bot, 8_000);
    assert!(bot.engine.lease_orphans().is_empty(), "b was seen 8 s ago, under the 9 s TTL");
    // Its key expires; this instance cannot take it (the bucket refuses: still there).
    renew_all(&mut bot, 1_500);
    let orphans = bot.engine.lease_orphans();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].0, "b");
    assert_eq!(orphans[0].1.as_millis(), 9_500);
    // a is held here, so it is never an orphan while trusted.
    assert_eq!(bot.engine.lease_owner("a"), Some("me"));
}

#[test]
fn a_watch_replaying_the_bucket_names_the_owner_without_delaying_a_takeover() {
    for fresh in [false, true] {
        let mut bot = Bot::new(HA);
        bot.wait(0);
        // Held elsewhere: look again in a renew period (3 s).
        lease(&mut bot, LeaseEvent::Taken { channel: "lounge".into() });
        bot.wait(1_000);
        lease(&mut bot, LeaseEvent::Seen { channel: "lounge".into(), owner: "other".into(), revision: 7, fresh });
        assert_eq!(bot.engine.lease_owner("lounge"), Some("other"));
        bot.clear();
        bot.wait(2_100);
        // A write seen as it happens cannot expire for a TTL: no point asking before
        // then. A replayed one may be almost a TTL old: ask as planned.
        let asked = ops(&bot).iter().any(|o| matches!(o, LeaseOp::Acquire { .. }));
        assert_eq!(asked, !fresh, "fresh: {fresh}: {:?}", ops(&bot));
    }
}

#[test]
fn an_owner_ignores_a_write_older_than_its_own_and_yields_to_a_newer_one() {
    let mut bot = Bot::new(HA);
    bot.wait(0);
    own(&mut bot, &["lounge"], 8, None);
    // The previous owner's last write (revision 5), replayed by a watch made anew, or
    // delivered late by one catching up after an outage.
    for fresh in [false, true] {
        lease(&mut bot, LeaseEvent::Seen { channel: "lounge".into(), owner: "other".into(), revision: 5, fresh });
        assert_eq!(bot.engine.lease_owner("lounge"), Some("me"), "fresh: {fresh}");
    }
    bot.say("alice", "hey KrytenBot");
    assert_eq!(bot.calls().len(), 1, "still the owner: it answers");
    // A write after ours by someone else: the key is theirs.
    lease(&mut bot, LeaseEvent::Seen { channel: "lounge".into(), owner: "other".into(), revision: 9, fresh: true });
    assert_eq!(bot.engine.lease_owner("lounge"), Some("other"));
    assert_eq!(bot.engine.lease_stats().unwrap().lost, 1);
}

#[test]
fn an_owner_whose_limits_cannot_be_saved_says_at_most_three_lines_until_a_save_holds_them() {
    let mut bot = Bot::new(HA);
    bot.answer_saves = false;
    bot.wait(0);
    acquired(&mut bot, None);
    let users = ["alice", "bob", "carol", "dave", "erin"];
    for who in users {
        bot.say(who, "hey KrytenBot");
        bot.answer(&format!("hi {who}"));
    }
    // The state bucket has no leader: no save is answered yet.
    let mut said = bot.said();
    assert_eq!(said, ["hi alice", "hi bob", "hi carol"], "the rest wait for a save");
    let out: Vec<LeaseOp> = ops(&bot).into_iter().filter(|o| matches!(o, LeaseOp::Save { .. })).collect();
    bot.clear();
    for op in out {
        lease(&mut bot, LeaseEvent::SaveFailed { channel: op.channel().to_owned() });
    }
    // Saves fail for 2.5 s: tried again with a backoff, and nothing more is said.
    // Each 50 ms step answers the saves that went out (`ok`: stored) and collects what
    // was said; returns the saves answered.
    fn step(bot: &mut Bot, said: &mut Vec<String>, ok: bool) -> usize {
        let out: Vec<LeaseOp> = ops(bot).into_iter().filter(|o| matches!(o, LeaseOp::Save { .. })).collect();
        said.extend(bot.said());
        bot.clear();
        for op in &out {
            let channel = op.channel().to_owned();
            lease(bot, if ok { LeaseEvent::Saved { channel } } else { LeaseEvent::SaveFailed { channel } });
        }
        said.extend(bot.said());
        bot.clear();
        bot.wait(50);
        out.len()
    }
    let failed: usize = (0..50).map(|_| step(&mut bot, &mut said, false)).sum();
    assert!(failed >= 2, "saves retried, about once a second: {failed}");
    assert_eq!(said.len(), 3);
    assert_eq!(bot.engine.lease_owner("lounge"), Some("me"));
    // The next one (within the backoff, a second) is answered: the two waiting lines go.
    for _ in 0..25 {
        step(&mut bot, &mut said, true);
    }
    assert_eq!(said, users.map(|u| format!("hi {u}")));
}
