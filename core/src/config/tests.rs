//! The configuration's own tests: defaults, layering, and located errors.

use super::*;

const MINIMAL: &str = "bot: { name: KrytenBot }\nllm:\n  providers:\n    main: { base_url: 'http://127.0.0.1:9/v1', model: m }\nchannels:\n  - name: lounge\n";

fn err(yaml: &str) -> String {
    Config::parse(yaml, "bot.yaml").expect_err("config should be refused").to_string()
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = Config::parse(MINIMAL, "bot.yaml").unwrap();
    let ch = &c.channels[0];
    assert_eq!(ch.providers, vec!["main"]);
    assert_eq!(ch.limits.per_user, WindowConfig { max: 3, window: Duration::from_secs(60) });
    assert_eq!(ch.limits.send_spacing, Duration::from_secs(1));
    assert_eq!(ch.response.max_length, 320);
    assert!(ch.triggers.mention.enabled && ch.triggers.pm_enabled && !ch.triggers.contextual.enabled);
    assert_eq!(c.nats.servers, vec!["nats://127.0.0.1:4222"]);
    assert_eq!(c.http.listen, "127.0.0.1:8080");
    assert_eq!(c.kryten.domain, "cytu.be");
}

#[test]
fn channel_overrides_defaults_field_by_field_in_nested_blocks() {
    let yaml = format!(
        "{MINIMAL}  - name: movies\n    limits: {{ per_user: {{ max: 7 }} }}\ndefaults:\n  limits: {{ per_user: {{ window: 2m }}, global_cooldown: 9s }}\n"
    );
    let c = Config::parse(&yaml, "bot.yaml").unwrap();
    let movies = c.channel("MOVIES").unwrap();
    assert_eq!(movies.limits.per_user, WindowConfig { max: 7, window: Duration::from_secs(120) });
    assert_eq!(movies.limits.global_cooldown, Duration::from_secs(9));
    let lounge = c.channel("lounge").unwrap();
    assert_eq!(lounge.limits.per_user, WindowConfig { max: 3, window: Duration::from_secs(120) });
}

#[test]
fn unknown_key_is_named_with_line_column_and_a_hint() {
    let e = err(&format!("{MINIMAL}    limits: {{ per_usr: {{ max: 1 }} }}\n"));
    assert!(e.starts_with("bot.yaml:7:"), "{e}");
    assert!(e.contains("channels[0].limits"), "{e}");
    assert!(e.contains("did you mean `per_user`"), "{e}");
}

#[test]
fn probability_out_of_range_is_refused_at_its_line() {
    let e = err(&format!("{MINIMAL}    triggers: {{ mention: {{ probability: 1.5 }} }}\n"));
    assert!(e.starts_with("bot.yaml:7:"), "{e}");
    assert!(e.contains("channels[0].triggers.mention.probability"), "{e}");
    assert!(e.contains("outside 0..=1"), "{e}");
}

#[test]
fn api_key_literal_is_refused_with_the_fix() {
    let e = err("bot: { name: B }\nllm:\n  providers:\n    main:\n      base_url: https://x/v1\n      model: m\n      api_key: sk-123\nchannels: [ { name: a } ]\n");
    assert!(e.contains("keys come from the environment: use api_key_env"), "{e}");
    assert!(e.starts_with("bot.yaml:7:"), "{e}");
    assert!(!e.contains("sk-123"), "the secret must not be echoed: {e}");
}

#[test]
fn bad_durations_regexes_and_lengths_are_refused() {
    assert!(err(&format!("{MINIMAL}    limits: {{ global_cooldown: soon }}\n")).contains("invalid duration `soon`"));
    assert!(err(&format!("{MINIMAL}    limits: {{ per_user: {{ window: 0s }} }}\n")).contains("longer than zero"));
    assert!(err(&format!("{MINIMAL}    response: {{ block_patterns: ['(unclosed'] }}\n")).contains("invalid regex"));
    assert!(err(&format!("{MINIMAL}    response: {{ max_length: 5 }}\n")).contains("minimum of 20"));
}

#[test]
fn cross_field_errors_name_their_line() {
    let e = err(&format!("{MINIMAL}  - name: Lounge\n"));
    assert!(e.contains("channel `Lounge` is listed twice"), "{e}");
    assert!(e.starts_with("bot.yaml:7:"), "{e}");
    let e = err(&format!("{MINIMAL}    provider: [main, backup]\n"));
    assert!(e.contains("unknown provider `backup` (defined: main)"), "{e}");
    assert!(e.starts_with("bot.yaml:7:"), "{e}");
}

#[test]
fn risky_settings_are_warned_about() {
    let yaml = format!(
        "{MINIMAL}    limits: {{ per_user: {{ max: 100 }}, per_channel: {{ max: 500 }}, global_cooldown: 0s, send_spacing: 0s }}\n    response: {{ max_length: 500 }}\n    triggers: {{ keywords: [ {{ words: [lol], probability: 1.0 }} ] }}\n"
    )
    .replace("model: m }", "model: m, api_key_env: SOME_KEY }");
    let c = Config::parse(&yaml, "bot.yaml").unwrap();
    let w = c.warnings(|_| false).join("\n");
    for needle in [
        "SOME_KEY is not set",
        "limits are effectively off",
        "send_spacing below 1s",
        "keyword `lol`",
        "max_length 500",
    ] {
        assert!(w.contains(needle), "{needle} missing in:\n{w}");
    }
    let quiet = Config::parse(MINIMAL, "bot.yaml").unwrap();
    assert!(quiet.warnings(|_| true).is_empty(), "{:?}", quiet.warnings(|_| true));
}

#[test]
fn no_channel_is_an_error() {
    assert!(err("bot: { name: B }\nchannels: []\n").contains("at least one channel"));
}

#[test]
fn syntax_errors_carry_a_location() {
    let e = err("bot: { name: B\nchannels: [\n");
    assert!(e.starts_with("bot.yaml:"), "{e}");
    assert!(matches!(Config::parse("bot: [", "x.yaml"), Err(ConfigError::Invalid { .. })));
}

#[test]
fn the_retry_schedule_doubles_honours_retry_after_and_bounds_the_deadline() {
    let c = Config::parse(MINIMAL, "bot.yaml").unwrap();
    let p = &c.llm.providers["main"];
    assert_eq!(p.retries, 2);
    assert_eq!(p.retry_delay(1, None), Some(RETRY_BACKOFF));
    assert_eq!(p.retry_delay(2, None), Some(RETRY_BACKOFF * 2));
    assert_eq!(p.retry_delay(3, None), None, "no retry past `retries`");
    assert_eq!(p.retry_delay(1, Some(Duration::from_secs(7))), Some(Duration::from_secs(7)));
    assert_eq!(p.retry_delay(1, Some(MAX_RETRY_AFTER + Duration::from_millis(1))), None);
    // Every attempt's timeout plus the longest allowed wait before each retry.
    assert_eq!(p.worst_case(), p.timeout * (3 + ADAPTATIONS) + MAX_RETRY_AFTER * 2);
}

#[test]
fn a_keyword_list_too_large_to_compile_is_a_config_error_not_a_panic() {
    // Distinct long words, enough to pass the regex engine's size limit.
    let words: Vec<String> = (0..20_000).map(|i| format!("\"w{i}{}\"", "x".repeat(40))).collect();
    let yaml = format!("{MINIMAL}defaults:\n  triggers:\n    keywords:\n      - words: [{}]\n", words.join(", "));
    let e = err(&yaml);
    assert!(e.contains("keywords[0].words") && e.contains("too many or too long words"), "{e}");
}

#[test]
fn provider_keys_for_the_field_parse_and_secrets_in_headers_are_refused() {
    let provider = |extra: &str| {
        format!(
            "bot: {{ name: B }}\nllm:\n  providers:\n    main: {{ base_url: 'https://x.test/v1', model: m{extra} }}\nchannels: [ {{ name: c }} ]\n"
        )
    };
    let c = Config::parse(
        &provider(", temperature: null, max_tokens_param: none, proxy: none, extra_query: { a: b }"),
        "t.yaml",
    )
    .unwrap();
    let p = &c.llm.providers["main"];
    assert_eq!((p.temperature, p.max_tokens_param, &p.proxy), (None, MaxTokensParam::None, &ProxySetting::Direct));
    assert_eq!(Config::parse(&provider(""), "t.yaml").unwrap().llm.providers["main"].temperature, Some(0.8));
    let e = err(&provider(", extra_headers: { Authorization: 'Bearer sk-1' }"));
    assert!(e.contains("extra_headers") && e.contains("extra_headers_env"), "{e}");
    let e = err(&provider(", extra_headers: { X-API-Key: k }"));
    assert!(e.contains("carries a secret"), "{e}");
    let e = err(&provider(", extra_headers: { 'bad header': v }"));
    assert!(e.contains("not a valid header name"), "{e}");
    let e = err(&provider(", proxy: 'socks5://127.0.0.1:1080'"));
    assert!(e.contains("a proxy is an http:// URL"), "{e}");
    let e = err(&provider(", max_tokens_param: max_toks"));
    assert!(e.contains("max_tokens_param"), "{e}");
    let e = err("bot: { name: B }\nllm:\n  providers:\n    main: { base_url: 'https://x.test/v1?api-version=1', model: m }\nchannels: [ { name: c } ]\n");
    assert!(e.contains("extra_query"), "{e}");
}

#[test]
fn templates_are_checked_where_they_are_written() {
    let yaml =
        format!("{MINIMAL}defaults:\n  prompts:\n    mention: \"[{{{{ user }}}} asks] {{{{ media.tittle }}}}\"\n");
    let e = err(&yaml);
    assert!(e.starts_with("bot.yaml:9:5: defaults.prompts.mention: template: unknown variable `media.tittle`"), "{e}");
    let yaml = format!(
        "{MINIMAL}    system_prompt: |\n      You are {{{{ bot.name }}}}.\n      {{% if user %}}never closed\n"
    );
    let e = err(&yaml);
    assert!(e.starts_with("bot.yaml:9:"), "the template's second line, below the key: {e}");
    assert!(e.contains("channels[0].system_prompt: template: syntax error"), "{e}");
    let yaml = format!("{MINIMAL}    timezone: Mars/Olympus\n");
    assert!(err(&yaml).contains("unknown time zone `Mars/Olympus`"), "{}", err(&yaml));
}

#[test]
fn a_system_prompt_file_is_read_through_the_callers_reader_and_checked_with_its_own_lines() {
    let yaml = format!("{MINIMAL}    system_prompt_file: persona.j2\n    timezone: Europe/Paris\n");
    let read = |p: &str| match p {
        "persona.j2" => Ok("Tu es {{ bot.name }}.\nIl est {{ now }}.\n".to_owned()),
        _ => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "not found")),
    };
    let c = Config::parse_with(&yaml, "bot.yaml", &read).unwrap();
    assert_eq!(c.channels[0].system_prompt, "Tu es {{ bot.name }}.\nIl est {{ now }}.\n");
    assert_eq!(c.channels[0].timezone, "Europe/Paris");
    let bad = |_: &str| Ok("line one\n{{ nobody }}\n".to_owned());
    let e = Config::parse_with(&yaml, "bot.yaml", &bad).unwrap_err().to_string();
    assert!(e.starts_with("persona.j2:2:1: channels[0].system_prompt_file: unknown variable `nobody`"), "{e}");
    let e = err(&yaml);
    assert!(e.contains("cannot read `persona.j2`"), "{e}");
    let both = format!("{MINIMAL}    system_prompt_file: persona.j2\n    system_prompt: hi\n");
    assert!(Config::parse_with(&both, "bot.yaml", &read).unwrap_err().to_string().contains("not both"));
}
