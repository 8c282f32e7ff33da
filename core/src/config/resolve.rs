//! Stage two: layers each channel over `defaults` over the built-in defaults and turns
//! the raw model into the validated [`Config`], with the cross-field checks serde cannot
//! do (known providers, unique channel names, non-empty groups), each located in the file.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::locate::Locator;
use super::raw::*;
use super::*;

/// Reads a file a config names (`system_prompt_file`), by the path as written; the
/// caller resolves it (relative to the config file). Core does no I/O itself.
pub type ReadFile<'a> = &'a dyn Fn(&str) -> std::io::Result<String>;

impl Config {
    /// Parses and validates YAML text. `origin` names the text in errors (the file path).
    /// A config naming a `system_prompt_file` needs [`Config::parse_with`].
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let none = |_: &str| Err(std::io::Error::other("no file can be read here: load the config from a file"));
        Config::parse_with(text, origin, &none)
    }

    /// [`Config::parse`], reading the files the config names with `read`.
    pub fn parse_with(text: &str, origin: &str, read: ReadFile) -> Result<Config, ConfigError> {
        let at = Locator { text, origin };
        let raw: RawConfig =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| at.yaml(e))?;
        let builtin_at = Locator { text: BUILTIN_DEFAULTS, origin: "<built-in defaults>" };
        let builtin: RawChannel =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(BUILTIN_DEFAULTS))
                .map_err(|e| builtin_at.yaml(e))?;

        if raw.bot.name.trim().is_empty() {
            return Err(at.key("bot.name", "name", "", 0, "the bot's account name must not be empty"));
        }
        if raw.defaults.name.is_some() {
            return Err(at.key("defaults.name", "name", "", 0, "a name belongs to a channel, not to defaults"));
        }
        let nats = resolve_nats(raw.nats, &at)?;
        let llm = resolve_llm(raw.llm, &at)?;
        if raw.channels.is_empty() {
            return Err(ConfigError::Unlocated {
                file: origin.into(),
                path: "channels".into(),
                message: "at least one channel is required".into(),
            });
        }
        let defaults = prepare_prompts(raw.defaults, "defaults", &at, read)?.over(builtin);
        let mut seen = BTreeSet::new();
        let mut names: Vec<String> = vec![raw.bot.name.clone()];
        let mut channels = Vec::with_capacity(raw.channels.len());
        for (i, ch) in raw.channels.into_iter().enumerate() {
            let path = format!("channels[{i}]");
            let Some(name) = ch.name.clone().filter(|n| !n.trim().is_empty()) else {
                return Err(ConfigError::Unlocated {
                    file: origin.into(),
                    path: format!("{path}.name"),
                    message: "every channel needs a name".into(),
                });
            };
            if !seen.insert(name.to_lowercase()) {
                // Lines before this one that also show `name: …<name>…`.
                let nth = names.iter().filter(|n| n.contains(name.as_str())).count();
                return Err(at.key(
                    &format!("{path}.name"),
                    "name",
                    &name,
                    nth,
                    &format!("channel `{name}` is listed twice"),
                ));
            }
            names.push(name.clone());
            let ch = prepare_prompts(ch, &path, &at, read)?;
            let merged = ch.over(defaults.clone());
            channels.push(resolve_channel(name, merged, &path, &llm, &at)?);
        }
        let ha = HaConfig {
            enabled: raw.ha.enabled,
            bucket: raw.ha.bucket.0,
            lease_ttl: raw.ha.lease_ttl.0,
            instance: raw.ha.instance.unwrap_or_default(),
            replicas: raw.ha.replicas.map(|r| r.0),
        };
        let moderation = ModerationConfig {
            enabled: raw.moderation.enabled,
            prefix: raw.moderation.prefix.0,
            min_rank: raw.moderation.min_rank.0,
        };
        let config = Config {
            bot: raw.bot,
            nats,
            kryten: raw.kryten,
            http: raw.http,
            llm,
            channels,
            dry_run: raw.dry_run,
            seed: raw.seed,
            ha,
            moderation,
        };
        check_patterns(&config, &at)?;
        Ok(config)
    }
}

fn resolve_nats(raw: RawNats, at: &Locator) -> Result<NatsConfig, ConfigError> {
    if raw.servers.is_empty() {
        return Err(at.key("nats.servers", "servers", "", 0, "at least one NATS server URL is required"));
    }
    Ok(NatsConfig {
        servers: raw.servers,
        user: raw.user,
        password_env: raw.password_env,
        token_env: raw.token_env,
        creds_file: raw.creds_file,
        tls: raw.tls,
        connect_timeout: raw.connect_timeout.0,
        subjects: raw.subjects,
        commands: raw.commands,
        outbound_queue: raw.outbound_queue,
    })
}

fn resolve_llm(raw: RawLlm, at: &Locator) -> Result<LlmConfig, ConfigError> {
    let mut providers = BTreeMap::new();
    for (name, p) in raw.providers {
        if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
            return Err(at.key(
                &format!("llm.providers.{name}.base_url"),
                "base_url",
                &p.base_url,
                0,
                "base_url must start with http:// or https://",
            ));
        }
        check_headers(&name, &p, at)?;
        let proxy = match p.proxy.as_deref().map(str::trim) {
            None => ProxySetting::FromEnv,
            Some("none") => ProxySetting::Direct,
            Some(url) if url.starts_with("http://") && url.len() > "http://".len() => ProxySetting::Url(url.to_owned()),
            Some(url) => {
                return Err(at.key(
                    &format!("llm.providers.{name}.proxy"),
                    "proxy",
                    "",
                    0,
                    &format!("`{url}`: a proxy is an http:// URL (HTTPS goes through it with CONNECT), or `none`"),
                ))
            }
        };
        if p.base_url.contains('?') {
            return Err(at.key(
                &format!("llm.providers.{name}.base_url"),
                "base_url",
                "",
                0,
                "base_url must not carry a query: put its parameters in extra_query",
            ));
        }
        providers.insert(
            name,
            ProviderConfig {
                base_url: p.base_url.trim_end_matches('/').to_owned(),
                api_key_env: p.api_key_env,
                model: p.model,
                temperature: p.temperature,
                max_tokens: p.max_tokens,
                max_tokens_param: p.max_tokens_param,
                extra_body: p.extra_body,
                extra_headers: p.extra_headers,
                extra_headers_env: p.extra_headers_env,
                extra_query: p.extra_query,
                api_key_header: p.api_key_header,
                ca_file: p.ca_file,
                proxy,
                timeout: p.timeout.0,
                retries: p.retries,
                price_per_million: p.price_per_million,
                breaker: p.breaker,
            },
        );
    }
    Ok(LlmConfig { providers, fallback_responses: raw.fallback_responses, budget: raw.budget })
}

/// Checks one layer's templates (each where it is written: this layer's keys, or its
/// `system_prompt_file`) and reads its `system_prompt_file` into `system_prompt`.
fn prepare_prompts(mut raw: RawChannel, path: &str, at: &Locator, read: ReadFile) -> Result<RawChannel, ConfigError> {
    use crate::template::check;
    if let Some(file) = raw.system_prompt_file.clone() {
        if raw.system_prompt.is_some() {
            return Err(at.key(
                &format!("{path}.system_prompt_file"),
                "system_prompt_file",
                &file,
                0,
                "set system_prompt or system_prompt_file, not both",
            ));
        }
        let text = read(&file).map_err(|e| {
            at.key(
                &format!("{path}.system_prompt_file"),
                "system_prompt_file",
                &file,
                0,
                &format!("cannot read `{file}`: {e}"),
            )
        })?;
        if let Err(e) = check(&text) {
            return Err(ConfigError::Invalid {
                file: file.clone(),
                line: e.line.unwrap_or(1),
                column: 1,
                path: format!("{path}.system_prompt_file"),
                message: e.message,
            });
        }
        raw.system_prompt = Some(text);
    } else if let Some(text) = &raw.system_prompt {
        check(text).map_err(|e| template_error(at, &format!("{path}.system_prompt"), "system_prompt", text, e))?;
    }
    if let Some(p) = &raw.prompts {
        let all = [
            ("mention", &p.mention),
            ("keyword", &p.keyword),
            ("pm", &p.pm),
            ("media_change", &p.media_change),
            ("contextual", &p.contextual),
            ("participation_check", &p.participation_check),
        ];
        for (key, text) in all {
            if let Some(text) = text {
                let full = format!("{path}.prompts.{key}");
                check(text).map_err(|e| template_error(at, &full, key, text, e))?;
            }
        }
    }
    Ok(raw)
}

/// A template error at its place in the YAML: the line of `key:` whose value holds the
/// template (inline or as a block scalar), moved down to the template's own line.
fn template_error(at: &Locator, path: &str, key: &str, text: &str, e: crate::template::TemplateError) -> ConfigError {
    let snippet: String = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().chars().take(24).collect();
    let lines: Vec<&str> = at.text.lines().collect();
    let found = lines.iter().enumerate().find_map(|(i, line)| {
        let col = line.find(&format!("{key}:"))?;
        let rest = line[col + key.len() + 1..].trim();
        let quoted = |l: &str| l.contains(&snippet) || l.contains(&snippet.replace('"', "\\\""));
        if quoted(rest) {
            Some((i, col, 0))
        } else if rest.starts_with(['|', '>']) && lines.get(i + 1).is_some_and(|l| quoted(l)) {
            Some((i, col, 1))
        } else {
            None
        }
    });
    let message = format!("template: {}", e.message);
    match found {
        Some((i, col, block)) => ConfigError::Invalid {
            file: at.origin.into(),
            line: i + 1 + block + e.line.unwrap_or(1).saturating_sub(1),
            column: col + 1,
            path: path.into(),
            message,
        },
        None => ConfigError::Unlocated { file: at.origin.into(), path: path.into(), message },
    }
}

/// Takes a field that the built-in defaults always provide.
fn need<T>(v: Option<T>, path: &str, origin: &str) -> Result<T, ConfigError> {
    v.ok_or_else(|| ConfigError::Unlocated {
        file: origin.into(),
        path: path.into(),
        message: "missing value (and no built-in default)".into(),
    })
}

fn resolve_channel(
    name: String,
    raw: RawChannel,
    path: &str,
    llm: &LlmConfig,
    at: &Locator,
) -> Result<ChannelConfig, ConfigError> {
    let o = at.origin;
    let providers = need(raw.provider, &format!("{path}.provider"), o)?.0;
    for p in &providers {
        if !llm.providers.contains_key(p) {
            let known: Vec<_> = llm.providers.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "no providers are defined under llm.providers".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            return Err(at.key(
                &format!("{path}.provider"),
                "provider",
                p,
                0,
                &format!("unknown provider `{p}` ({hint})"),
            ));
        }
    }
    let ctx = need(raw.context, &format!("{path}.context"), o)?;
    let tr = need(raw.triggers, &format!("{path}.triggers"), o)?;
    let mention = need(tr.mention, &format!("{path}.triggers.mention"), o)?;
    let contextual = need(tr.contextual, &format!("{path}.triggers.contextual"), o)?;
    let media = need(tr.media_change, &format!("{path}.triggers.media_change"), o)?;
    let pm = need(tr.pm, &format!("{path}.triggers.pm"), o)?;
    let keywords = need(tr.keywords, &format!("{path}.triggers.keywords"), o)?;
    for (k, kw) in keywords.iter().enumerate() {
        if kw.words.iter().all(|w| w.trim().is_empty()) {
            return Err(at.key(
                &format!("{path}.triggers.keywords[{k}].words"),
                "words",
                "",
                0,
                "a keyword group needs at least one word",
            ));
        }
    }
    let lim = need(raw.limits, &format!("{path}.limits"), o)?;
    let window = |w: Option<RawWindow>, p: &str| -> Result<WindowConfig, ConfigError> {
        let w = need(w, p, o)?;
        Ok(WindowConfig {
            max: need(w.max, &format!("{p}.max"), o)?.get(),
            window: need(w.window, &format!("{p}.window"), o)?.0,
        })
    };
    let resp = need(raw.response, &format!("{path}.response"), o)?;
    Ok(ChannelConfig {
        name,
        providers,
        system_prompt: need(raw.system_prompt, &format!("{path}.system_prompt"), o)?,
        system_prompt_file: raw.system_prompt_file,
        prompts: raw
            .prompts
            .map(|p| PromptsConfig {
                mention: p.mention,
                keyword: p.keyword,
                pm: p.pm,
                media_change: p.media_change,
                contextual: p.contextual,
                participation_check: p.participation_check,
            })
            .unwrap_or_default(),
        timezone: need(raw.timezone, &format!("{path}.timezone"), o)?.0,
        context: ContextConfig {
            max_messages: need(ctx.max_messages, &format!("{path}.context.max_messages"), o)?.get(),
            max_age: need(ctx.max_age, &format!("{path}.context.max_age"), o)?.0,
        },
        triggers: TriggersConfig {
            mention: MentionConfig {
                enabled: need(mention.enabled, "mention.enabled", o)?,
                probability: need(mention.probability, "mention.probability", o)?.0,
                cooldown: need(mention.cooldown, "mention.cooldown", o)?.0,
            },
            keywords: keywords
                .into_iter()
                .map(|k| KeywordConfig {
                    words: k.words.into_iter().filter(|w| !w.trim().is_empty()).collect(),
                    probability: k.probability.map_or(1.0, |p| p.0),
                    cooldown: k.cooldown.map_or(Duration::ZERO, |d| d.0),
                })
                .collect(),
            contextual: ContextualConfig {
                enabled: need(contextual.enabled, "contextual.enabled", o)?,
                every: need(contextual.every, "contextual.every", o)?.0,
                min_new_messages: need(contextual.min_new_messages, "contextual.min_new_messages", o)?,
                probability: need(contextual.probability, "contextual.probability", o)?.0,
            },
            pm_enabled: need(pm.enabled, "pm.enabled", o)?,
            media_change: MediaChangeConfig {
                enabled: need(media.enabled, "media_change.enabled", o)?,
                probability: need(media.probability, "media_change.probability", o)?.0,
            },
        },
        limits: LimitsConfig {
            per_user: window(lim.per_user, &format!("{path}.limits.per_user"))?,
            per_channel: window(lim.per_channel, &format!("{path}.limits.per_channel"))?,
            global_cooldown: need(lim.global_cooldown, "limits.global_cooldown", o)?.0,
            media_change_cooldown: need(lim.media_change_cooldown, "limits.media_change_cooldown", o)?.0,
            max_in_flight: need(lim.max_in_flight, "limits.max_in_flight", o)?.get(),
            send_spacing: need(lim.send_spacing, "limits.send_spacing", o)?.0,
        },
        response: ResponseConfig {
            max_length: need(resp.max_length, "response.max_length", o)?.0,
            max_parts: need(resp.max_parts, "response.max_parts", o)?.get(),
            strip_markdown: need(resp.strip_markdown, "response.strip_markdown", o)?,
            block_patterns: need(resp.block_patterns, "response.block_patterns", o)?,
            block_keywords: need(resp.block_keywords, "response.block_keywords", o)?,
            dedupe_window: need(resp.dedupe_window, "response.dedupe_window", o)?,
        },
        loop_guard: {
            let g = need(raw.loop_guard, &format!("{path}.loop_guard"), o)?;
            LoopGuardConfig {
                max_exchanges: need(g.max_exchanges, "loop_guard.max_exchanges", o)?.get(),
                window: need(g.window, "loop_guard.window", o)?.0,
                backoff: need(g.backoff, "loop_guard.backoff", o)?.0,
                quick_reply: need(g.quick_reply, "loop_guard.quick_reply", o)?.0,
                typing_speed: need(g.typing_speed, "loop_guard.typing_speed", o)?.get(),
            }
        },
        penalty: {
            let p = need(raw.penalty, &format!("{path}.penalty"), o)?;
            PenaltyConfig { base: need(p.base, "penalty.base", o)?.0, max: need(p.max, "penalty.max", o)?.0 }
        },
        budget: {
            let b = need(raw.budget, &format!("{path}.budget"), o)?;
            BudgetConfig {
                tokens_per_hour: need(b.tokens_per_hour, "budget.tokens_per_hour", o)?,
                tokens_per_day: need(b.tokens_per_day, "budget.tokens_per_day", o)?,
                include_pms: need(b.include_pms, "budget.include_pms", o)?,
            }
        },
        ignore_users: need(raw.ignore_users, &format!("{path}.ignore_users"), o)?
            .into_iter()
            .map(|u| u.to_lowercase())
            .collect(),
    })
}

/// Compiles every word list the engine will compile (the bot's names, each keyword group,
/// each block list), so that one too large for the regex engine is refused here with its
/// key, and a running engine (a reload included) never meets it. Each distinct list is
/// compiled once: channels mostly share `defaults`.
fn check_patterns(config: &Config, at: &Locator) -> Result<(), ConfigError> {
    use crate::trigger::{bot_names, whole_words_regex};
    let mut done: BTreeSet<(&[String], bool)> = BTreeSet::new();
    let too_large = |path: &str, key: &str, e: regex::Error| {
        at.key(path, key, "", 0, &format!("too many or too long words for one pattern ({e}); split the list"))
    };
    let names: Vec<String> = bot_names(&config.bot).map(str::to_owned).collect();
    whole_words_regex(names.iter().map(String::as_str), true).map_err(|e| too_large("bot.aliases", "aliases", e))?;
    for (i, ch) in config.channels.iter().enumerate() {
        for (k, kw) in ch.triggers.keywords.iter().enumerate() {
            if done.insert((&kw.words, false)) {
                whole_words_regex(kw.words.iter().map(String::as_str), false)
                    .map_err(|e| too_large(&format!("channels[{i}].triggers.keywords[{k}].words"), "words", e))?;
            }
        }
        let block = &ch.response.block_keywords;
        if done.insert((block, true)) {
            whole_words_regex(block.iter().map(String::as_str), false)
                .map_err(|e| too_large(&format!("channels[{i}].response.block_keywords"), "block_keywords", e))?;
        }
    }
    Ok(())
}

/// Headers that carry a secret: never written in the file.
const SECRET_HEADERS: &[&str] = &["authorization", "api-key", "x-api-key", "proxy-authorization"];

/// Header names and values a request can carry (RFC 9110 tokens; visible ASCII values),
/// and no secret written in the file.
fn check_headers(provider: &str, p: &RawProvider, at: &Locator) -> Result<(), ConfigError> {
    let path = |key: &str| format!("llm.providers.{provider}.{key}");
    let is_token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let names = p
        .extra_headers
        .keys()
        .map(|n| ("extra_headers", n))
        .chain(p.extra_headers_env.keys().map(|n| ("extra_headers_env", n)))
        .chain(p.api_key_header.iter().map(|n| ("api_key_header", n)));
    for (key, name) in names {
        if !is_token(name) {
            return Err(at.key(&path(key), key, "", 0, &format!("`{name}` is not a valid header name")));
        }
    }
    for (name, value) in &p.extra_headers {
        let problem = if SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            format!("`{name}` carries a secret: name an environment variable in extra_headers_env instead")
        } else if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            format!("the value of `{name}` must be printable ASCII")
        } else {
            continue;
        };
        return Err(at.key(&path("extra_headers"), name, "", 0, &problem));
    }
    Ok(())
}
