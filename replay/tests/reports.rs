//! Replay reports of the shipped corpora, pinned with insta, and the properties an
//! operator relies on: identical bytes for identical runs, bad lines reported and
//! skipped, and the comparison of two configs.

use std::io::BufReader;
use std::path::PathBuf;

use chatbot_core::Config;
use chatbot_replay::{corpus_channels, default_config, replay, Compare, Options, Report};
use chatbot_sim::{FaultPlan, Faults, Offline, Script};

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn config_for(corpus: &str) -> Config {
    default_config(&corpus_channels(corpus.as_bytes())).unwrap()
}

fn run_with(corpus: &str, config: Config, seed: u64) -> Report {
    let opts = Options {
        seed,
        llm: Box::new(Offline::new(&config.bot)),
        faults: None,
        llm_label: "offline".into(),
        prompts: false,
        recording: None,
        recorded_seed: false,
    };
    replay(BufReader::new(corpus.as_bytes()), config, opts, |_| {})
}

fn run(rel: &str) -> Report {
    let corpus = read(rel);
    run_with(&corpus, config_for(&corpus), 0)
}

#[test]
fn demo_corpus_text_report() {
    insta::assert_snapshot!(run("corpus/demo.jsonl").to_text());
}

#[test]
fn demo_corpus_json_report() {
    insta::assert_snapshot!(run("corpus/demo.jsonl").to_json());
}

#[test]
fn rooms_corpus_text_report() {
    insta::assert_snapshot!(run("corpus/rooms.jsonl").to_text());
}

#[test]
fn rooms_corpus_json_summary() {
    let mut v: serde_json::Value = serde_json::from_str(&run("corpus/rooms.jsonl").to_json()).unwrap();
    // Thousands of decision records and replies are pinned by the text snapshot already.
    v["decisions"] = serde_json::json!(v["decisions"].as_array().map_or(0, Vec::len));
    for ch in v["channels"].as_array_mut().unwrap() {
        ch["replies"] = serde_json::json!(ch["replies"].as_array().map_or(0, Vec::len));
        ch["per_minute"] = serde_json::json!(ch["per_minute"].as_object().map_or(0, serde_json::Map::len));
    }
    insta::assert_snapshot!(serde_json::to_string_pretty(&v).unwrap());
}

#[test]
fn real_robot_capture_text_report() {
    insta::assert_snapshot!(run("core/tests/fixtures/kryten-robot-1.12.6-session.jsonl").to_text());
}

#[test]
fn replaying_twice_gives_identical_bytes() {
    let a = run("corpus/rooms.jsonl");
    let b = run("corpus/rooms.jsonl");
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(a.to_html(), b.to_html());
    let c = {
        let corpus = read("corpus/rooms.jsonl");
        run_with(&corpus, config_for(&corpus), 99)
    };
    assert_ne!(a.to_json(), c.to_json(), "the seed must matter where probabilities are below 1");
}

#[test]
fn the_backlog_and_the_bots_own_lines_are_never_answered() {
    let report = run("corpus/rooms.jsonl");
    let lounge = &report.channels[0];
    assert_eq!(lounge.ignored.get("backlog"), Some(&15));
    assert!(lounge.ignored.get("own_message").copied().unwrap_or(0) > 10);
    assert!(lounge.ignored.get("shadow_muted").copied().unwrap_or(0) > 0);
    for r in &lounge.replies {
        assert!(!r.cause.as_deref().unwrap_or("").starts_with("KrytenBot:"), "{r:?}");
        assert!(!r.text.starts_with('/'));
    }
}

#[test]
fn moderator_commands_and_what_they_changed_are_listed() {
    let at = |s: u64| 1_795_633_200_000 + s * 1000;
    let line = |event: &str, payload: serde_json::Value, s: u64| {
        serde_json::json!({"event_name": event, "payload": payload, "channel": "lounge", "domain": "cytu.be",
            "timestamp": chatbot_core::Millis(at(s)).to_rfc3339(), "correlation_id": format!("c{s}")})
        .to_string()
    };
    let chat = |user: &str, msg: &str, s: u64| {
        line("chatMsg", serde_json::json!({"username": user, "msg": msg, "meta": {}, "time": at(s)}), s)
    };
    let corpus = [
        line("userlist", serde_json::json!([{"name": "carol", "rank": 2}, {"name": "bob", "rank": 0}]), 0),
        chat("bob", "!KrytenBot mute", 1),
        chat("carol", "!KrytenBot mute 10m", 2),
        chat("alice", "KrytenBot, hello?", 3),
        chat("carol", "!KrytenBot unmute", 4),
    ]
    .join("\n");
    let report = run_with(&corpus, config_for(&corpus), 0);
    let text = report.to_text();
    assert!(text.contains("moderator commands"), "{text}");
    assert!(text.contains("carol         mute → muted for 10m"), "{text}");
    assert!(text.contains("carol         unmute → unmuted"), "{text}");
    assert!(text.contains("ignored      not_moderator 1"), "{text}");
    assert!(text.contains("muted 1"), "the mention while muted: {text}");
    assert!(report.to_html().contains("<caption>moderator commands</caption>"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["channels"][0]["commands"][0]["changed"], "muted for 10m");
}

#[test]
fn bad_lines_are_reported_with_numbers_and_the_run_goes_on() {
    let corpus =
        format!("{}\nthis is not json\n// comment\n{{\"payload\": 1}}\n{}", read("corpus/demo.jsonl").trim_end(), "");
    let report = run_with(&corpus, config_for(&corpus), 0);
    assert_eq!(report.bad_lines.len(), 2);
    assert!(report.bad_lines[0].starts_with("line 322: "), "{:?}", report.bad_lines);
    assert!(report.bad_lines[1].starts_with("line 324: "), "{:?}", report.bad_lines);
    assert_eq!(report.events, 321);
}

#[test]
fn html_report_is_self_contained_and_escapes_chat() {
    let html = run("corpus/rooms.jsonl").to_html();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("<svg"));
    assert!(!html.contains("<script"));
    assert!(!html.contains("src=\"http"));
    // A chat line with a literal <b> must arrive escaped.
    let fixture = run("core/tests/fixtures/kryten-robot-1.12.6-session.jsonl").to_html();
    assert!(fixture.contains("is &lt;b&gt; safe"), "chat text must be escaped");
}

#[test]
fn compare_shows_what_a_stricter_config_changes() {
    let corpus = read("corpus/demo.jsonl");
    let a = config_for(&corpus);
    let strict = Config::parse(
        &format!(
            "{}defaults: {{ limits: {{ per_user: {{ max: 1, window: 5m }} }} }}\nchannels: [ {{ name: lounge }} ]\n",
            chatbot_replay::DEFAULT_CONFIG
        ),
        "strict.yaml",
    )
    .unwrap();
    let cmp = Compare {
        a_label: "defaults".into(),
        b_label: "strict.yaml".into(),
        a: run_with(&corpus, a, 0),
        b: run_with(&corpus, strict, 0),
    };
    assert!(cmp.b.channels[0].said < cmp.a.channels[0].said);
    insta::assert_snapshot!(cmp.to_text());
}

#[test]
fn injected_faults_and_a_provider_outage_show_in_the_report() {
    // demo.jsonl also holds a spam burst and another bot looping with ours: the snapshot
    // shows the penalty and loop guard at work next to the outage.
    let corpus = read("corpus/demo.jsonl");
    let config = Config::parse(
        r#"
bot: { name: KrytenBot, aliases: [kryten] }
llm:
  providers:
    main: { base_url: "http://127.0.0.1:1/v1", model: offline }
    backup: { base_url: "http://127.0.0.1:2/v1", model: offline }
defaults: { provider: [main, backup] }
channels: [ { name: lounge } ]
"#,
        "outage.yaml",
    )
    .unwrap();
    let script = Script::parse("- { provider: main, fault: 'status:503' }\n", "outage").unwrap();
    let opts = Options {
        seed: 1,
        llm: Box::new(script),
        faults: Some(Faults::new(FaultPlan::parse("jitter=1s").unwrap(), 1)),
        llm_label: "script:outage".into(),
        prompts: false,
        recording: None,
        recorded_seed: false,
    };
    let report = replay(BufReader::new(corpus.as_bytes()), config, opts, |_| {});
    insta::assert_snapshot!("outage_loop_and_spam_on_the_demo_corpus", report.to_text());
    let answers = &report.channels[0].llm_answers;
    assert!(answers["main"].get("llm_http_status").copied().unwrap_or(0) > 0, "{answers:?}");
    assert!(answers["backup"].get("ok").copied().unwrap_or(0) > 0, "{answers:?}");
    assert!(report.channels[0].said > 0);
}
