//! The report for a terminal: aligned, one section per channel, every reply listed.

use std::collections::BTreeMap;
use std::fmt::Write;

use chatbot_core::Millis;

use crate::report::{ChannelReport, Compare, Report};

/// `HH:MM:SS` (UTC) of a virtual time.
pub(crate) fn clock(at: Millis) -> String {
    let s = at.to_string();
    s[..8].to_string()
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    let mut items: Vec<(&String, &u64)> = map.iter().collect();
    items.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    items.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(" · ")
}

fn row(out: &mut String, label: &str, value: impl AsRef<str>) {
    let _ = writeln!(out, "  {label:<12} {}", value.as_ref());
}

fn one_line(s: &str, max: usize) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= max {
        s
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

fn tally(t: &crate::live::Tally) -> String {
    format!("{:.1} % ({} of {})", t.share() * 100.0, t.agree, t.events)
}

/// How the replay compares with the recorded live session, and what changed.
fn live_section(out: &mut String, live: &crate::live::LiveComparison, before_start: u64) {
    let _ = writeln!(
        out,
        "live session: {} bot session(s), seed {}; LLM answers {} recorded, {} invented",
        live.sessions,
        if live.recorded_seed { "as recorded" } else { "from --seed" },
        live.answers.recorded,
        live.answers.invented
    );
    if before_start > 0 {
        let _ = writeln!(out, "  {before_start} events before the bot started, not replayed");
    }
    row(out, "agreement", tally(&live.events));
    row(out, "deterministic", tally(&live.deterministic));
    row(out, "probabilistic", tally(&live.probabilistic));
    for (ch, (was, now)) in &live.contextual {
        if was + now > 0 {
            row(out, "contextual", format!("{ch}: {was} live, {now} in replay"));
        }
    }
    if !live.changes.is_empty() {
        let _ = writeln!(out, "  changed ({}):", live.changes.len() as u64 + live.more_changes);
        for c in &live.changes {
            let who = c.line.as_deref().or(c.user.as_deref()).unwrap_or(&c.correlation_id);
            let _ = writeln!(
                out,
                "    {} {} {} [{}] \"{}\"\n      live: {}\n      now:  {}",
                clock(Millis(c.at)),
                c.channel,
                c.correlation_id,
                c.trigger.as_deref().unwrap_or("-"),
                one_line(who, 80),
                one_line(&c.live, 100),
                one_line(&c.replay, 100)
            );
        }
        if live.more_changes > 0 {
            let _ = writeln!(out, "    … and {} more (all in --format json)", live.more_changes);
        }
    }
}

impl Report {
    /// The report as aligned text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "llm-chatbot replay: {} events over {:.1} h ({}–{} UTC), seed {}, llm {}",
            self.events,
            self.hours(),
            clock(self.start),
            clock(self.end),
            self.seed,
            self.llm
        );
        if self.unrouted > 0 {
            let _ = writeln!(out, "events for unconfigured channels or unparseable: {}", self.unrouted);
        }
        if let Some(live) = &self.live {
            live_section(&mut out, live, self.before_start);
        }
        if !self.bad_lines.is_empty() {
            let _ = writeln!(out, "bad lines skipped: {}", self.bad_lines.len());
            for b in self.bad_lines.iter().take(10) {
                let _ = writeln!(out, "  {}", one_line(b, 100));
            }
        }
        for ch in &self.channels {
            out.push('\n');
            channel(&mut out, ch);
        }
        out
    }
}

fn channel(out: &mut String, ch: &ChannelReport) {
    let _ = writeln!(out, "== {} {}", ch.name, "=".repeat(60usize.saturating_sub(ch.name.len())));
    row(out, "events", counts(&ch.events));
    row(out, "ignored", counts(&ch.ignored));
    row(out, "fired", counts(&ch.fired));
    let suppressed: Vec<String> =
        ch.suppressed.iter().map(|(trigger, reasons)| format!("{trigger}: {}", counts(reasons))).collect();
    row(out, "suppressed", if suppressed.is_empty() { "-".into() } else { suppressed.join(" | ") });
    row(out, "silences", counts(&ch.silences));
    row(out, "dropped", counts(&ch.dropped));
    row(out, "sent", format!("{} chat ({}/h) · {} PM · {} fallback", ch.said, ch.said_per_hour, ch.pms, ch.fallbacks));
    let answers: Vec<String> = ch.llm_answers.iter().map(|(p, r)| format!("{p}: {}", counts(r))).collect();
    row(
        out,
        "llm",
        format!(
            "{} calls ({}) · {} · ~{} tokens in{}, ~{} out (~{}/h, cost {:.4})",
            ch.llm_calls.values().sum::<u64>(),
            counts(&ch.llm_calls),
            if answers.is_empty() { "-".into() } else { answers.join(" | ") },
            ch.input_tokens,
            if ch.cached_input_tokens > 0 { format!(" ({} cached)", ch.cached_input_tokens) } else { String::new() },
            ch.output_tokens,
            ch.tokens_per_hour,
            ch.cost
        ),
    );
    if let Some(reuse) = ch.prefix_reuse {
        let tokens = ch.prefix_reuse_tokens.map_or(String::new(), |t| format!(", {t:.2} by cached tokens"));
        row(
            out,
            "prompt cache",
            format!("prefix reuse {reuse:.2} (median, by characters{tokens}) · caching saves ~{:.4}", ch.cache_savings),
        );
    }
    let users: Vec<String> = ch.top_users.iter().map(|(u, n)| format!("{u} {n}")).collect();
    row(out, "top users", if users.is_empty() { "-".into() } else { users.join(" · ") });
    if !ch.commands.is_empty() {
        let _ = writeln!(out, "  moderator commands");
        for c in &ch.commands {
            let _ = writeln!(out, "    {}  {:<13} {} → {}", clock(c.at), c.user, c.command, c.changed);
        }
    }
    if !ch.replies.is_empty() {
        let _ = writeln!(out, "  replies");
        for r in &ch.replies {
            let what = match &r.to {
                Some(to) => format!("pm to {to}"),
                None => r.trigger.clone(),
            };
            let tag = if r.fallback { " (fallback)" } else { "" };
            let _ =
                writeln!(out, "    {}  {:<13} {}", clock(r.at), what, one_line(r.cause.as_deref().unwrap_or("-"), 90));
            let _ = writeln!(out, "    {:8}  {:<13} → {}{tag}", "", "", one_line(&r.text, 120));
        }
    }
}

impl Compare {
    /// Both configs side by side, per channel, with the differences.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "llm-chatbot replay --compare: {} events over {:.1} h, seed {}",
            self.a.events,
            self.a.hours(),
            self.a.seed
        );
        let _ = writeln!(out, "  A = {}\n  B = {}", self.a_label, self.b_label);
        for a in &self.a.channels {
            let b = self.b.channels.iter().find(|c| c.name.eq_ignore_ascii_case(&a.name));
            let empty = ChannelReport::default();
            let b = b.unwrap_or(&empty);
            let _ = writeln!(out, "\n== {} {}", a.name, "=".repeat(60usize.saturating_sub(a.name.len())));
            let _ = writeln!(out, "  {:<34} {:>8} {:>8} {:>8}", "", "A", "B", "B-A");
            let mut line = |label: String, x: u64, y: u64| {
                if x != 0 || y != 0 {
                    let _ = writeln!(out, "  {label:<34} {x:>8} {y:>8} {:>+8}", y as i64 - x as i64);
                }
            };
            line("chat messages sent".into(), a.said, b.said);
            line("PMs sent".into(), a.pms, b.pms);
            line("fallback lines".into(), a.fallbacks, b.fallbacks);
            for key in keys(&a.fired, &b.fired) {
                line(format!("fired: {key}"), get(&a.fired, &key), get(&b.fired, &key));
            }
            for key in keys(&a.silences, &b.silences) {
                line(format!("silenced by {key}"), get(&a.silences, &key), get(&b.silences, &key));
            }
            for key in keys(&a.dropped, &b.dropped) {
                line(format!("dropped: {key}"), get(&a.dropped, &key), get(&b.dropped, &key));
            }
            line("tokens (in + out)".into(), a.input_tokens + a.output_tokens, b.input_tokens + b.output_tokens);
        }
        out
    }
}

fn keys(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> Vec<String> {
    let mut k: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
    k.sort();
    k.dedup();
    k
}

fn get(m: &BTreeMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}
