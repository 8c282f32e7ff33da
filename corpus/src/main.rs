//! Generates the corpora in `corpus/`: realistic Kryten-Robot recordings of CyTube rooms,
//! made from a fixed seed so they are reproducible and reviewable.
//!
//! `cargo run -p chatbot-corpus --bin generate-corpus` rewrites `corpus/rooms.jsonl`
//! (three channels, four hours) and `corpus/demo.jsonl` (one channel, thirty minutes).
//!
//! What a real recording holds, and so these do: the join backlog CyTube replays with old
//! `time`s, `changeMedia` doubled on join, HTML entities and auto-linked URLs, `/me`
//! actions, PMs to the bot and the bot's own PM echoes, the bot's own chat lines echoed
//! back, `[server]` join notices, shadow-muted lines, `mediaUpdate`/`usercount` noise,
//! flood-control `cooldown`s, a spam burst from one user, and another bot that keeps
//! mentioning ours (the loop risk).

use std::fmt::Write as _;
use std::path::Path;

use chatbot_core::Millis;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{json, Value};

const BOT: &str = "KrytenBot";
/// 2026-11-25T19:00:00Z.
const START_MS: u64 = 1_795_633_200_000;

struct Gen {
    rng: ChaCha8Rng,
    events: Vec<(u64, u64, String)>,
    seq: u64,
}

struct Mood {
    channel: &'static str,
    users: &'static [&'static str],
    lines: &'static [&'static str],
    questions: &'static [&'static str],
    /// Mean gap between chat lines, ms.
    gap_ms: u64,
    /// Chance that a line mentions the bot.
    mention: f64,
    media: &'static [&'static str],
}

const LOUNGE: Mood = Mood {
    channel: "lounge",
    users: &["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"],
    lines: &[
        "morning all",
        "anyone up for a game later?",
        "lol",
        "that's wild",
        "brb coffee",
        "the weather here is awful &amp; cold",
        "pizza tonight? I vote pineapple",
        "has anyone tried the new ramen place",
        "I think the playlist needs more 80s stuff",
        "gg",
        "ok this song slaps",
        "haha yes",
        "who queued this one",
        "my cat just knocked over my drink",
        "3 &lt; 4 but 5 &gt; 2, checks out",
        "it&#39;s fine, it&#39;s all fine",
        "<strong>loud</strong> opinion: tabs over spaces",
        "star wars marathon this weekend?",
    ],
    questions: &[
        "{bot}, what's the capital of Australia?",
        "hey {bot} how's it going",
        "{bot} tell me a joke",
        "@{bot} do you like pizza?",
        "what do you think {bot}?",
        "kryten, settle this: cats or dogs?",
        "{bot}, recommend a song",
    ],
    gap_ms: 9_000,
    mention: 0.06,
    media: &["Daft Punk - Get Lucky", "a-ha - Take On Me", "Queen - Don&#39;t Stop Me Now", "Toto - Africa"],
};

const MOVIES: Mood = Mood {
    channel: "movies",
    users: &["cinephile", "popcorn", "reelgirl", "noir_fan", "spoilerking", "mara", "tom"],
    lines: &[
        "this director never misses",
        "the sequel was better honestly",
        "the score in this one is incredible",
        "wait who is that actor",
        "<span class=\"spoiler\">he was dead the whole time</span>",
        "cinematography 10/10",
        "I fell asleep during the first one",
        "trailer: <a href=\"https://example.com/trailer\" target=\"_blank\" rel=\"noopener noreferrer\">https://example.com/trailer</a>",
        "practical effects &gt; CGI",
        "classic",
        "the book was better",
        "this scene though",
    ],
    questions: &[
        "{bot}, who directed this?",
        "{bot} is the sequel worth it?",
        "kryten what's your favourite film",
        "@{bot} rate this movie out of 10",
    ],
    gap_ms: 14_000,
    mention: 0.05,
    media: &[
        "Blade Runner (1982) - Trailer",
        "Alien - Official Trailer",
        "The Thing (1982) Full Movie Review",
        "Arrival - Final Trailer",
        "Heat (1995) - Diner Scene",
    ],
};

const RETRO: Mood = Mood {
    channel: "retro",
    users: &["pixel", "chiptune", "8bitbob", "sega_sam"],
    lines: &[
        "the SNES sound chip is underrated",
        "anyone still have a CRT?",
        "speedrun tonight",
        "that boss took me a week as a kid",
        "blowing into cartridges totally worked",
        "Mode 7 was magic",
    ],
    questions: &["{bot}, what was the best console?", "kryten do you remember the N64?"],
    gap_ms: 45_000,
    mention: 0.04,
    media: &["Chrono Trigger OST - Corridors of Time", "Sonic 2 - Chemical Plant Zone"],
};

const BOT_REPLIES: &[&str] = &[
    "Canberra, though everyone guesses Sydney.",
    "Doing well, thanks for asking!",
    "Why did the scarecrow win an award? He was outstanding in his field.",
    "Pizza is always a yes.",
    "Honestly? Cats. Don&#39;t tell the dogs.",
    "Try some Daft Punk, never misses.",
    "Ridley Scott, and it shows.",
    "The sequel is worth it for the score alone.",
];

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen { rng: ChaCha8Rng::seed_from_u64(seed), events: Vec::new(), seq: 0 }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    fn uuid(&mut self) -> String {
        let a = self.rng.next_u64();
        let b = self.rng.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }

    /// Adds an envelope received by the robot at `at` ms.
    fn push(&mut self, at: u64, channel: &str, event_name: &str, payload: Value) {
        self.push_at(at, iso(at), channel, event_name, payload);
    }

    /// Adds an envelope whose robot `timestamp` is `stamp`, ordered at `at`, with the
    /// robot's field order (`RawEvent.to_dict()`).
    fn push_at(&mut self, at: u64, stamp: String, channel: &str, event_name: &str, payload: Value) {
        self.seq += 1;
        let envelope = format!(
            "{{\"event_name\": {}, \"payload\": {payload}, \"channel\": {}, \"domain\": \"cytu.be\", \"timestamp\": \"{stamp}\", \"correlation_id\": \"{}\"}}",
            json!(event_name),
            json!(channel),
            self.uuid()
        );
        self.events.push((at, self.seq, envelope));
    }

    fn chat(&mut self, at: u64, channel: &str, user: &str, msg: &str, meta: Value) {
        self.push(at, channel, "chatMsg", json!({"username": user, "msg": msg, "meta": meta, "time": at}));
    }

    fn write(mut self, path: &Path) -> std::io::Result<usize> {
        self.events.sort_by_key(|(at, seq, _)| (*at, *seq));
        let mut out = String::new();
        for (_, _, e) in &self.events {
            let _ = writeln!(out, "{e}");
        }
        std::fs::write(path, out)?;
        Ok(self.events.len())
    }

    /// A channel as the robot sees it from joining at `start` for `duration` ms.
    fn room(&mut self, mood: &Mood, start: u64, duration: u64) {
        let ch = mood.channel;
        let end = start + duration;
        // Join: rank, the chat backlog with old times, the current media twice, userlist.
        self.push(start, ch, "rank", json!(-1));
        for i in 0..15 {
            let at = start - (15 - i) * 40_000;
            let user = self.pick(mood.users);
            let line = self.pick(mood.lines);
            let mut p = json!({"username": user, "msg": line, "meta": {}, "time": at});
            if i == 14 {
                // The last backlog line mentions the bot: it must not be answered.
                p["msg"] = json!(format!("{BOT} are you there?"));
            }
            // Replayed on join: received now, stamped with its old CyTube `time`.
            self.push_at(start + 2 + i, iso(start + 2 + i), ch, "chatMsg", p);
        }
        let first = self.pick(mood.media);
        for k in 0..2 {
            self.push(start + 20 + k, ch, "setCurrent", json!(1));
            let media = json!({"id":"vid0","title":first,"seconds":200,"duration":"03:20","type":"yt","meta":{},"currentTime":37.5 + k as f64,"paused":false});
            self.push(start + 21 + k, ch, "changeMedia", media);
        }
        let users: Vec<Value> = mood.users.iter().map(|u| json!({"name": u, "rank": 1, "profile": {"image":"","text":""}, "meta": {"afk": false, "muted": false}})).collect();
        self.push(start + 30, ch, "userlist", Value::Array(users));
        self.push(start + 31, ch, "usercount", json!(mood.users.len() + 1));
        self.chat(
            start + 40,
            ch,
            "[server]",
            &format!("{BOT} joined (aliases: {BOT})"),
            json!({"addClass":"server-whisper","addClassToNameAndTimestamp":true}),
        );

        let mut t = start + 1_000;
        let mut next_media = start + 180_000 + self.below(240_000);
        let mut media_i = 1;
        let mut next_noise = start + 30_000;
        let mut last_bot_line = 0u64;
        while t < end {
            t += 500 + self.below(mood.gap_ms * 2);
            if t >= end {
                break;
            }
            if t >= next_noise {
                self.push(
                    next_noise,
                    ch,
                    "mediaUpdate",
                    json!({"currentTime": ((next_noise - start) / 1000 % 200) as f64 + 0.51, "paused": false}),
                );
                next_noise += 30_000;
            }
            if t >= next_media {
                // A new item: setCurrent + changeMedia with CyTube's 3 s lead-in.
                let title = mood.media[media_i % mood.media.len()];
                media_i += 1;
                self.push(t, ch, "setCurrent", json!(media_i));
                let media = json!({"id": format!("vid{media_i}"), "title": title, "seconds": 240, "duration": "04:00", "type": "yt", "meta": {}, "currentTime": -3, "paused": true});
                self.push(t + 1, ch, "changeMedia", media);
                next_media = t + 200_000 + self.below(200_000);
                continue;
            }
            let user = self.pick(mood.users);
            let roll = self.below(1000);
            if self.chance(mood.mention) {
                let q = self.pick(mood.questions).replace("{bot}", BOT);
                self.chat(t, ch, user, &q, json!({}));
                // The bot (a previous deployment) answered; its line echoes back.
                if self.chance(0.7) && t > last_bot_line + 5_000 {
                    let reply = self.pick(BOT_REPLIES);
                    let at = t + 1_200 + self.below(2_000);
                    self.chat(at, ch, BOT, &format!("{user}: {reply}"), json!({}));
                    last_bot_line = at;
                }
            } else if roll < 15 {
                let text = self.pick(mood.lines);
                self.chat(t, ch, user, text, json!({"addClass": "action", "action": true}));
            } else if roll < 22 {
                self.chat(t, ch, "troll", "buy followers at <a href=\"https://spam.example/x\" target=\"_blank\" rel=\"noopener noreferrer\">https://spam.example/x</a> kryten", json!({"shadow": true}));
            } else if roll < 30 {
                let name = format!("guest{}", self.below(90) + 10);
                self.push(t, ch, "addUser", json!({"name": name, "rank": 0, "profile": {"image":"","text":""}, "meta": {"afk": false, "muted": false}}));
                self.chat(
                    t + 1,
                    ch,
                    "[server]",
                    &format!("{name} joined (aliases: {name})"),
                    json!({"addClass":"server-whisper","addClassToNameAndTimestamp":true}),
                );
                self.push(t + 2, ch, "usercount", json!(mood.users.len() + 2));
            } else if roll < 34 {
                let name = format!("guest{}", self.below(90) + 10);
                self.push(t, ch, "userLeave", json!({"name": name}));
            } else if roll < 44 {
                let q = self.pick(mood.questions).replace("{bot}", BOT);
                self.push(t, ch, "pm", json!({"username": user, "msg": q, "meta": {}, "time": t, "to": BOT}));
                if self.chance(0.8) {
                    let at = t + 1_500;
                    let reply = self.pick(BOT_REPLIES);
                    self.push(at, ch, "pm", json!({"username": BOT, "msg": reply, "meta": {}, "time": at, "to": user}));
                }
            } else {
                let text = self.pick(mood.lines);
                self.chat(t, ch, user, text, json!({}));
            }
        }
    }

    /// One user spams mentions: 25 lines in 30 s.
    fn spam_burst(&mut self, channel: &str, at: u64) {
        for i in 0..25 {
            let msg = if i % 3 == 0 { format!("{BOT} {BOT} {BOT} answer me") } else { format!("@{BOT} hello?? {i}") };
            self.chat(at + i * 1_200, channel, "spammy", &msg, json!({}));
        }
    }

    /// Another bot that answers every line of ours by mentioning us: a loop in waiting.
    fn chatty_bot(&mut self, channel: &str, at: u64, rounds: u64) {
        let mut t = at;
        for i in 0..rounds {
            self.chat(t, channel, "ChattyBot", &format!("Hey {BOT}, what do you think about that? ({i})"), json!({}));
            t += 2_500;
            self.chat(t, channel, BOT, &format!("ChattyBot: I think it is great, round {i}."), json!({}));
            t += 1_500;
        }
        self.push(t + 100, channel, "cooldown", json!(1000));
    }
}

/// Python's `datetime.isoformat()` for UTC, as Kryten-Robot writes `timestamp`.
fn iso(ms: u64) -> String {
    Millis(ms).to_rfc3339()
}

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let hour = 3_600_000;

    let mut rooms = Gen::new(2026);
    rooms.room(&LOUNGE, START_MS, 4 * hour);
    rooms.room(&MOVIES, START_MS + 60_000, 4 * hour - 60_000);
    rooms.room(&RETRO, START_MS + 120_000, 4 * hour - 120_000);
    rooms.spam_burst("lounge", START_MS + hour + 600_000);
    rooms.chatty_bot("lounge", START_MS + 2 * hour + 300_000, 12);
    rooms.chatty_bot("movies", START_MS + 3 * hour, 6);
    let n = rooms.write(&dir.join("rooms.jsonl"))?;
    println!("corpus/rooms.jsonl: {n} events");

    let mut demo = Gen::new(7);
    demo.room(&LOUNGE, START_MS, hour / 2);
    demo.spam_burst("lounge", START_MS + 600_000);
    demo.chatty_bot("lounge", START_MS + 1_200_000, 5);
    let n = demo.write(&dir.join("demo.jsonl"))?;
    println!("corpus/demo.jsonl: {n} events");
    Ok(())
}
