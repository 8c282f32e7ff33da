//! The report as one self-contained HTML page: per channel, an SVG timeline of chat
//! volume against bot replies, the counts, and every reply. No scripts, no external
//! assets; all corpus text is escaped.

use std::collections::BTreeMap;
use std::fmt::Write;

use html_escape::encode_text as esc;

use crate::report::{ChannelReport, Report};
use crate::text::clock;

const BINS: u64 = 60;

fn table(out: &mut String, title: &str, map: &BTreeMap<String, u64>) {
    if map.is_empty() {
        return;
    }
    let _ = write!(out, "<table><caption>{}</caption>", esc(title));
    let mut items: Vec<_> = map.iter().collect();
    items.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    for (k, v) in items {
        let _ = write!(out, "<tr><td>{}</td><td class=n>{v}</td></tr>", esc(k));
    }
    out.push_str("</table>");
}

/// Chat lines (grey bars) and bot messages (orange bars) per time bin.
fn timeline(out: &mut String, ch: &ChannelReport, minutes: u64) {
    let per_bin = minutes.div_ceil(BINS).max(1);
    let bins = minutes.div_ceil(per_bin).max(1);
    let mut chat = vec![0u64; bins as usize];
    let mut said = vec![0u64; bins as usize];
    for (&m, &(c, s)) in &ch.per_minute {
        let i = ((m / per_bin) as usize).min(bins as usize - 1);
        chat[i] += c;
        said[i] += s;
    }
    let max = chat.iter().chain(&said).copied().max().unwrap_or(0).max(1);
    let (w, h) = (720.0, 140.0);
    let bw = w / bins as f64;
    let _ = write!(
        out,
        "<svg viewBox=\"0 0 {w} {}\" width=\"{w}\" height=\"{}\" role=\"img\"><title>chat lines vs bot messages per {per_bin} min</title>",
        h + 20.0,
        h + 20.0
    );
    for i in 0..bins as usize {
        let x = i as f64 * bw;
        let ch_h = chat[i] as f64 / max as f64 * h;
        let bot_h = said[i] as f64 / max as f64 * h;
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{ch_h:.1}\" fill=\"#b8c0cc\"><title>{} chat lines</title></rect>",
            h - ch_h,
            (bw - 1.0).max(1.0),
            chat[i]
        );
        if said[i] > 0 {
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bot_h:.1}\" fill=\"#e8772e\"><title>{} bot messages</title></rect>",
                x + bw * 0.25,
                h - bot_h,
                (bw * 0.5).max(1.0),
                said[i]
            );
        }
    }
    let _ = write!(
        out,
        "<text x=\"0\" y=\"{}\" font-size=\"11\">0 min</text><text x=\"{w}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{minutes} min</text></svg>",
        h + 14.0,
        h + 14.0
    );
}

impl Report {
    /// The report as a standalone HTML page.
    pub fn to_html(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("<!doctype html><html lang=en><head><meta charset=utf-8><title>llm-chatbot replay</title><style>");
        out.push_str(
            "body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:60em;color:#222}\
             h2{border-bottom:2px solid #e8772e;padding-bottom:.2em}table{border-collapse:collapse;margin:.5em 1em .5em 0;display:inline-table;vertical-align:top}\
             caption{text-align:left;font-weight:600}td{padding:1px 8px;border-bottom:1px solid #eee}td.n{text-align:right}\
             .reply td{vertical-align:top}.cause{color:#666}.legend span{display:inline-block;width:1em;height:.8em;margin:0 .3em 0 1em}",
        );
        out.push_str("</style></head><body>");
        let _ = write!(
            out,
            "<h1>llm-chatbot replay</h1><p>{} events over {:.1} h ({}–{} UTC), seed {}, llm {}.</p>",
            self.events,
            self.hours(),
            clock(self.start),
            clock(self.end),
            self.seed,
            esc(&self.llm)
        );
        if !self.bad_lines.is_empty() {
            let _ = write!(out, "<p>{} bad line(s) skipped.</p>", self.bad_lines.len());
        }
        let minutes = (self.end.0.saturating_sub(self.start.0) / 60_000).max(1);
        for ch in &self.channels {
            let _ = write!(out, "<h2>{}</h2>", esc(&ch.name));
            let _ = write!(
                out,
                "<p class=legend><span style=\"background:#b8c0cc\"></span>chat lines<span style=\"background:#e8772e\"></span>bot messages · {} sent ({}/h), {} PM, {} fallback</p>",
                ch.said, ch.said_per_hour, ch.pms, ch.fallbacks
            );
            timeline(&mut out, ch, minutes);
            out.push_str("<div>");
            table(&mut out, "fired", &ch.fired);
            table(&mut out, "silenced by", &ch.silences);
            table(&mut out, "dropped", &ch.dropped);
            table(&mut out, "ignored", &ch.ignored);
            table(&mut out, "events", &ch.events);
            out.push_str("</div>");
            if !ch.commands.is_empty() {
                out.push_str("<table class=reply><caption>moderator commands</caption>");
                for c in &ch.commands {
                    let _ = write!(
                        out,
                        "<tr><td>{}</td><td>{}</td><td>{} → {}</td></tr>",
                        clock(c.at),
                        esc(&c.user),
                        esc(c.command),
                        esc(&c.changed)
                    );
                }
                out.push_str("</table>");
            }
            if !ch.replies.is_empty() {
                out.push_str("<table class=reply><caption>replies</caption>");
                for r in &ch.replies {
                    let what = r.to.as_ref().map_or_else(|| r.trigger.clone(), |to| format!("pm to {to}"));
                    let _ = write!(
                        out,
                        "<tr><td>{}</td><td>{}</td><td><div class=cause>{}</div>{}{}</td></tr>",
                        clock(r.at),
                        esc(&what),
                        esc(r.cause.as_deref().unwrap_or("")),
                        esc(&r.text),
                        if r.fallback { " <i>(fallback)</i>" } else { "" }
                    );
                }
                out.push_str("</table>");
            }
        }
        out.push_str("</body></html>\n");
        out
    }
}
