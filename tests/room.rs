//! The room, end to end: the real binary on a real nats-server, fed the payload shapes of
//! the real Kryten-Robot capture (shared/fixtures): what is playing reaches the prompt,
//! moderators steer the bot from chat (answered by PM), a guest's command does nothing,
//! `forget` empties the next prompt, Kryten's stored state is known right after a start,
//! and a person talking to the bot at human pace gets every answer.

use std::time::Duration;

use chatbot_testkit::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");
const T: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(700);
const KEY: &[(&str, &str)] = &[("LLMTEST_API_KEY", "test-key")];

fn envelope(event: &str, payload: Value, id: &str) -> Vec<u8> {
    json!({"event_name": event, "payload": payload, "channel": "lounge", "domain": "cytu.be",
           "timestamp": "2026-11-26T01:12:56.781178+00:00", "correlation_id": id})
    .to_string()
    .into_bytes()
}

fn user(name: &str, rank: u32) -> Value {
    json!({"name": name, "rank": rank, "profile": {"image": "", "text": ""}, "meta": {"afk": false, "muted": false}})
}

/// The join sequence: setCurrent, changeMedia, userlist, usercount, the bot's addUser.
async fn join(client: &async_nats::Client) {
    publish_event(client, "lounge", "setCurrent", envelope("setCurrent", json!(1), "j-1")).await;
    let media = json!({"id": "dQw4w9WgXcQ", "title": "Rick Astley - Never Gonna Give You Up", "seconds": 213,
                       "duration": "03:33", "type": "yt", "meta": {}, "currentTime": 39.451, "paused": false});
    publish_event(client, "lounge", "changeMedia", envelope("changeMedia", media, "j-2")).await;
    let users = json!([user("alice", 1), user("bob", 0), user("carol", 2)]);
    publish_event(client, "lounge", "userlist", envelope("userlist", users, "j-3")).await;
    publish_event(client, "lounge", "usercount", envelope("usercount", json!(4), "j-4")).await;
    publish_event(client, "lounge", "addUser", envelope("addUser", user("KrytenBot", 2), "j-5")).await;
}

fn last_prompt(llm: &FakeLlm) -> Vec<Value> {
    let (body, _) = llm.requests.lock().unwrap().last().cloned().expect("an LLM request");
    body["messages"].as_array().unwrap().clone()
}

async fn say(client: &async_nats::Client, who: &str, text: &str, id: &str) {
    publish_event(client, "lounge", "chatMsg", chat("lounge", who, text, id)).await;
}

/// A PM to `to`, its text.
fn pm_to<'a>(cmd: &'a Value, to: &str) -> &'a str {
    assert_eq!((cmd["command"].as_str(), cmd["args"]["to"].as_str()), (Some("pm"), Some(to)), "{cmd}");
    cmd["args"]["msg"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_title_reaches_the_prompt_and_moderators_mute_unmute_and_forget_by_chat() {
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    let _bot = Bot::start(BIN, &config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], ""), KEY);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    join(&client).await;

    say(&client, "alice", "kryten, what are we watching?", "r-1").await;
    let said = commands.next(T).await.expect("an answer");
    assert_eq!(said["args"]["message"], "echo: alice: kryten, what are we watching?");
    let last = last_prompt(&llm).last().unwrap()["content"].as_str().unwrap().to_owned();
    assert!(last.contains("playing \"Rick Astley - Never Gonna Give You Up\" (0:"), "{last}");
    assert!(last.contains("of 3:33)") && last.contains("Moderators: carol."), "{last}");

    // A moderator mutes by chat: answered by PM, nothing asked of the LLM.
    let asked = llm.request_count();
    say(&client, "carol", "!kryten mute 10m", "r-2").await;
    let ack = commands.next(T).await.expect("a PM to carol");
    assert!(pm_to(&ack, "carol").starts_with("Muted in lounge for 10m."), "{ack}");
    say(&client, "alice", "kryten, still there?", "r-3").await;
    commands.none(QUIET).await;
    // A guest's command changes nothing, visibly or not.
    say(&client, "bob", "!kryten unmute", "r-4").await;
    commands.none(QUIET).await;
    say(&client, "alice", "kryten, hello??", "r-5").await;
    commands.none(QUIET).await;
    assert_eq!(llm.request_count(), asked, "no command and no muted line reached the LLM");
    say(&client, "carol", "!KrytenBot unmute", "r-6").await;
    assert_eq!(pm_to(&commands.next(T).await.expect("a PM to carol"), "carol"), "Speaking again in lounge.");

    // forget: the next prompt holds no chat line of before.
    say(&client, "alice", "the secret word is marmalade", "r-7").await;
    say(&client, "carol", "!kryten forget", "r-8").await;
    assert!(pm_to(&commands.next(T).await.expect("a PM"), "carol").starts_with("Forgot the conversation in lounge"));
    say(&client, "alice", "kryten, what was the word?", "r-9").await;
    assert_eq!(
        commands.next(T).await.expect("an answer")["args"]["message"],
        "echo: alice: kryten, what was the word?"
    );
    let prompt = last_prompt(&llm);
    assert_eq!(prompt.len(), 3, "system prompt, the line answered and the instruction only: {prompt:?}");
    assert!(!prompt.iter().any(|m| m["content"].as_str().unwrap().contains("marmalade")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kryten_robots_stored_state_is_known_right_after_a_start() {
    let nats = Nats::start_jetstream();
    let client = nats.client().await;
    let playlist = kv_bucket(&client, "kryten_lounge_playlist").await;
    let current = json!({"id": "kJQP7kiw5Fk", "title": "Luis Fonsi - Despacito ft. Daddy Yankee", "seconds": 282,
                         "duration": "04:42", "type": "yt", "meta": {}, "currentTime": -3, "paused": true, "uid": 3});
    playlist.put("current", current.to_string().into()).await.unwrap();
    let items = json!([
        {"media": {"id": "kJQP7kiw5Fk", "title": "Luis Fonsi - Despacito ft. Daddy Yankee", "seconds": 282}, "uid": 3, "temp": true, "queueby": "alice"},
        {"media": {"id": "jNQXAC9IVRw", "title": "Me at the zoo", "seconds": 19}, "uid": 4, "temp": true, "queueby": "alice"}
    ]);
    playlist.put("items", items.to_string().into()).await.unwrap();
    let users = kv_bucket(&client, "kryten_lounge_userlist").await;
    users.put("users", json!([user("dana", 3), user("eli", 0)]).to_string().into()).await.unwrap();

    let llm = FakeLlm::start().await;
    let bot = Bot::start(BIN, &config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], ""), KEY);
    let mut commands = Commands::subscribe(&client).await;
    // No event has said anything yet: dana's rank and the title come from the buckets.
    let mut ack = None;
    for i in 0..50 {
        publish_event(&client, "lounge", "pm", pm("lounge", "dana", "!kryten status", &format!("s-{i}"))).await;
        ack = commands.next(Duration::from_millis(200)).await;
        if ack.is_some() {
            break;
        }
    }
    let ack = ack.expect("dana (rank 3 in the stored user list) is obeyed");
    assert!(pm_to(&ack, "dana").starts_with("lounge: speaking."), "{ack}");
    say(&client, "eli", "kryten, what's on?", "s-x").await;
    commands.next(T).await.expect("an answer");
    let last = last_prompt(&llm).last().unwrap()["content"].as_str().unwrap().to_owned();
    assert!(last.contains("playing \"Luis Fonsi - Despacito ft. Daddy Yankee\""), "{last}");
    assert!(last.contains("Up next: \"Me at the zoo\"."), "{last}");
    assert_eq!(bot.count(" WARN "), 0, "{}", bot.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_jetstream_the_room_starts_empty_and_fills_from_events() {
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    let bot = Bot::start(BIN, &config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], ""), KEY);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    say(&client, "carol", "!kryten mute", "n-1").await;
    commands.none(QUIET).await;
    join(&client).await;
    say(&client, "carol", "!kryten mute", "n-2").await;
    assert!(pm_to(&commands.next(T).await.expect("a PM"), "carol").starts_with("Muted"));
    assert_eq!(bot.count(" WARN "), 0, "no warning for a server without JetStream: {}", bot.logs());
    assert_eq!(bot.count("ERROR"), 0, "{}", bot.logs());
}

/// A person asking question after question, each a few seconds more than a program would
/// take after the bot's previous answer, with the default loop guard: every one answered.
/// (The guard of before counted any line within 2 minutes of our reply: the third
/// question here was cut off.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_talking_to_the_bot_at_human_pace_gets_every_answer() {
    let nats = Nats::start();
    let llm = FakeLlm::start().await;
    let _bot = Bot::start(BIN, &config(&nats.url(), &llm.base_url(), free_port(), &["lounge"], ""), KEY);
    let client = nats.client().await;
    let mut commands = Commands::subscribe(&client).await;
    let questions = [
        "kryten, what's a good horror film?",
        "hm, seen it. kryten anything older?",
        "kryten ok and who directed that one",
        "nice. kryten is there a sequel worth it?",
    ];
    for (i, q) in questions.iter().enumerate() {
        say(&client, "alice", q, &format!("h-{i}")).await;
        let answer = commands.next(T).await.unwrap_or_else(|| panic!("question {i} was not answered"));
        assert_eq!(answer["args"]["message"], format!("echo: alice: {q}"));
        // Reading the answer and typing the next question.
        tokio::time::sleep(Duration::from_millis(6_500)).await;
    }
}
