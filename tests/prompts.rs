//! Prompts operators own, through the binary: `prompt` prints what the model sees (a
//! template file relative to the config, the corpus's room and context), `replay
//! --format json --prompts` lists every request's messages and the prefix reuse, and a
//! broken template makes `check` fail with the template file's line.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_llm-chatbot");

const CONFIG: &str = r#"bot: { name: KrytenBot, aliases: [kryten] }
llm:
  providers:
    main: { base_url: "http://127.0.0.1:9/v1", model: m, price_per_million: { input: 0.15, output: 0.60, cached_input: 0.075 } }
defaults:
  system_prompt_file: prompts/persona.j2
  timezone: Europe/Paris
  prompts:
    mention: "{{ user }} te parle ({{ users.count }} ici)."
channels:
  - name: lounge
"#;

fn setup(persona: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("prompts")).unwrap();
    std::fs::write(dir.path().join("prompts/persona.j2"), persona).unwrap();
    std::fs::write(dir.path().join("bot.yaml"), CONFIG).unwrap();
    dir
}

fn corpus() -> String {
    format!("{}/corpus/demo.jsonl", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn prompt_prints_the_exact_messages_of_a_corpus_line() {
    let dir = setup("Tu es {{ bot.name }}, un habitué de {{ channel }}.\n");
    let cfg = dir.path().join("bot.yaml");
    // Line 48 of the demo corpus: grace's "KrytenBot, recommend a song".
    let out = Command::new(BIN)
        .args(["prompt", "-c"])
        .arg(&cfg)
        .args(["--channel", "lounge", "--corpus", &corpus(), "--at", "48"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("[system]\nTu es KrytenBot, un habitué de lounge.\n"), "{text}");
    assert!(text.contains("[user]\ngrace: KrytenBot, recommend a song\n"), "{text}");
    assert!(text.trim_end().ends_with("grace te parle (10 ici)."), "the room of the corpus: {text}");
    assert!(text.contains("[Room now: playing \""), "the facts line before the instruction: {text}");
    let backlog = text.matches("[user]").count();
    assert!(backlog > 5, "the lines before it are the context: {text}");
}

#[test]
fn replay_json_lists_every_requests_messages_and_the_prefix_reuse() {
    let dir = setup("Tu es {{ bot.name }}.\n");
    let out = Command::new(BIN)
        .args(["replay", &corpus(), "-c"])
        .arg(dir.path().join("bot.yaml"))
        .args(["--format", "json", "--prompts"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let prompts = report["prompts"].as_array().unwrap();
    let calls: u64 =
        report["channels"][0]["llm_calls"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(prompts.len() as u64, calls, "one record per request");
    assert_eq!(prompts[0]["messages"][0]["role"], "system");
    assert!(prompts[0]["messages"][0]["content"].as_str().unwrap().starts_with("Tu es KrytenBot."));
    let reuse = report["channels"][0]["prefix_reuse"].as_f64().unwrap();
    assert!(reuse > 0.3 && reuse <= 1.0, "{reuse}");
    // Without the flag, no prompts (reports stay small).
    let out = Command::new(BIN).args(["replay", &corpus(), "--format", "json"]).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.get("prompts").is_none());
}

#[test]
fn a_broken_template_fails_check_with_the_files_line() {
    let dir = setup("Tu es {{ bot.name }}.\nIl joue {{ media.tittle }}.\n");
    let out = Command::new(BIN).args(["check", "-c"]).arg(dir.path().join("bot.yaml")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("prompts/persona.j2:2:1: defaults.system_prompt_file: unknown variable `media.tittle`"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // `run` refuses to start with it too (before touching NATS).
    let out = Command::new(BIN).args(["run", "-c"]).arg(dir.path().join("bot.yaml")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown variable `media.tittle`"));
}
