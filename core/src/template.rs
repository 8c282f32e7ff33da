//! Prompt templates (minijinja 2: Jinja2 syntax). Operators own the system prompt and the
//! per-trigger instructions; the engine fills in the variables of [`VARIABLES`].
//!
//! Every template is checked when the config is read: it must parse, use only known
//! variables (strict undefined: a typo is an error, not an empty string) and render
//! within a fuel limit, so no template can run away. A template that passed can still
//! fail at render time only by exhausting its fuel on unusual data; the engine then
//! says the built-in wording instead.

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// Instructions one render may execute (a loop over 20 names costs a few hundred).
const FUEL: u64 = 50_000;

/// Every variable a template may use, with what it holds (docs/prompts.md shows this
/// table).
pub const VARIABLES: &[(&str, &str)] = &[
    ("bot.name", "the bot's CyTube account name"),
    ("bot.aliases", "its other names (a list)"),
    ("channel", "the channel's name"),
    ("user", "whom the bot answers (empty for media changes and contextual replies)"),
    ("text", "the line answered (empty when none)"),
    ("trigger", "mention, keyword, pm, media_change, contextual or participation_check"),
    ("keyword", "the keyword that matched (keyword trigger; else empty)"),
    ("media.title", "what is playing (empty when unknown)"),
    ("media.duration", "its length, `3:33` (empty when unknown or live)"),
    ("media.position", "how far in, `1:06` (empty when unknown)"),
    ("media.next", "the next playlist entry's title (empty when unknown)"),
    ("users.count", "how many are here (a number; 0 when unknown)"),
    ("users.names", "up to 20 names of people here and not AFK, moderators first (a list)"),
    ("users.moderators", "up to 20 moderators here (a list)"),
    ("room", "the room's facts as one line, as the default prompts put them (empty when nothing is known)"),
    ("now", "the time, `14:05`, in the channel's timezone"),
    ("date", "the date, `2026-12-02`, in the channel's timezone"),
];

/// Names a template may call without declaring them (minijinja's global functions).
const FUNCTIONS: &[&str] = &["range", "dict", "namespace", "debug"];

/// Which template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `system_prompt` / `system_prompt_file`.
    System,
    /// `prompts.mention`.
    Mention,
    /// `prompts.keyword`.
    Keyword,
    /// `prompts.pm`.
    Pm,
    /// `prompts.media_change`.
    MediaChange,
    /// `prompts.contextual`.
    Contextual,
    /// `prompts.participation_check`.
    ParticipationCheck,
}

impl Kind {
    /// Every kind, in config order.
    pub const ALL: [Kind; 7] = [
        Kind::System,
        Kind::Mention,
        Kind::Keyword,
        Kind::Pm,
        Kind::MediaChange,
        Kind::Contextual,
        Kind::ParticipationCheck,
    ];

    /// The key under `prompts:` (`system_prompt` for the system prompt).
    pub fn key(self) -> &'static str {
        match self {
            Kind::System => "system_prompt",
            Kind::Mention => "mention",
            Kind::Keyword => "keyword",
            Kind::Pm => "pm",
            Kind::MediaChange => "media_change",
            Kind::Contextual => "contextual",
            Kind::ParticipationCheck => "participation_check",
        }
    }

    /// The built-in wording (today's prompts).
    pub fn default_source(self) -> &'static str {
        match self {
            Kind::System => "You are a friendly regular in this chat room. Reply in one short line.",
            Kind::Mention => "[{{ user }} is talking to you; reply to them]",
            Kind::Keyword => "[react to {{ user }}'s last line if you have something to add]",
            Kind::Pm => "[private message from {{ user }}; answer their last line privately]",
            Kind::MediaChange => "[The video changed to: {{ media.title }}] Say something short about it.",
            Kind::Contextual => "[Join the conversation with one short line.]",
            Kind::ParticipationCheck => {
                "[Would you naturally join this conversation right now? Answer only yes or no.]"
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The values a template sees.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Vars {
    /// `bot.*`
    pub bot: BotVars,
    /// `channel`
    pub channel: String,
    /// `user`
    pub user: String,
    /// `text`
    pub text: String,
    /// `trigger`
    pub trigger: &'static str,
    /// `keyword`
    pub keyword: String,
    /// `media.*`
    pub media: MediaVars,
    /// `users.*`
    pub users: UserVars,
    /// `room`
    pub room: String,
    /// `now`
    pub now: String,
    /// `date`
    pub date: String,
}

/// `bot.*`
#[derive(Debug, Clone, Default, Serialize)]
pub struct BotVars {
    /// `bot.name`
    pub name: String,
    /// `bot.aliases`
    pub aliases: Vec<String>,
}

/// `media.*`
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaVars {
    /// `media.title`
    pub title: String,
    /// `media.duration`
    pub duration: String,
    /// `media.position`
    pub position: String,
    /// `media.next`
    pub next: String,
}

/// `users.*`
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserVars {
    /// `users.count`
    pub count: usize,
    /// `users.names`
    pub names: Vec<String>,
    /// `users.moderators`
    pub moderators: Vec<String>,
}

/// What is wrong with a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// 1-based line within the template, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(50);
    // Chat prompts are not HTML.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(false);
    env
}

fn known(path: &str) -> bool {
    FUNCTIONS.contains(&path)
        || VARIABLES.iter().any(|(v, _)| *v == path || v.split_once('.').is_some_and(|(top, _)| top == path))
}

/// Checks one template: it parses, names only known variables, and renders with sample
/// values within the fuel limit.
pub fn check(source: &str) -> Result<(), TemplateError> {
    let mut env = environment();
    let err = |e: minijinja::Error| TemplateError {
        line: e.line(),
        message: e.detail().map_or_else(|| e.kind().to_string(), |d| format!("{}: {d}", e.kind())),
    };
    env.add_template_owned("t", source.to_owned()).map_err(err)?;
    let t = env.get_template("t").map_err(err)?;
    let mut unknown: Vec<String> = t.undeclared_variables(true).into_iter().filter(|v| !known(v)).collect();
    unknown.sort();
    if let Some(v) = unknown.first() {
        let line = source.lines().position(|l| l.contains(v.split('.').next().unwrap_or(v))).map(|i| i + 1);
        let names: Vec<&str> = VARIABLES.iter().map(|(n, _)| *n).collect();
        return Err(TemplateError { line, message: format!("unknown variable `{v}` (known: {})", names.join(", ")) });
    }
    t.render(sample()).map(|_| ()).map_err(err)
}

/// Values for the trial render of [`check`].
fn sample() -> Vars {
    Vars {
        bot: BotVars { name: "KrytenBot".into(), aliases: vec!["kryten".into()] },
        channel: "lounge".into(),
        user: "alice".into(),
        text: "kryten, what are we watching?".into(),
        trigger: "mention",
        keyword: "pizza".into(),
        media: MediaVars {
            title: "Rick Astley - Never Gonna Give You Up".into(),
            duration: "3:33".into(),
            position: "1:06".into(),
            next: "PSY - GANGNAM STYLE".into(),
        },
        users: UserVars {
            count: 12,
            names: (0..20).map(|i| format!("user{i}")).collect(),
            moderators: vec!["carol".into()],
        },
        room: "[Room now: …]".into(),
        now: "14:05".into(),
        date: "2026-12-02".into(),
    }
}

/// One channel's compiled templates (shared by channels with the same sources).
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    /// Per kind: the template names only values fixed for a channel (`bot`, `channel`).
    fixed: [bool; 7],
    /// Per kind: the template places the room's facts line itself (`room`).
    own_facts: [bool; 7],
}

impl Templates {
    /// Compiles `sources` (indexed by [`Kind`]); a source that does not compile (never
    /// after [`check`]) falls back to the built-in wording.
    pub fn new(sources: &[String; 7]) -> Templates {
        let mut env = environment();
        let (mut fixed, mut own_facts) = ([false; 7], [false; 7]);
        for kind in Kind::ALL {
            let name = kind.key();
            if env.add_template_owned(name, sources[kind.index()].clone()).is_err() {
                let _ = env.add_template(name, kind.default_source());
            }
            if let Ok(t) = env.get_template(name) {
                let names = t.undeclared_variables(false);
                fixed[kind.index()] = names.iter().all(|v| matches!(v.as_str(), "bot" | "channel"));
                own_facts[kind.index()] = names.contains("room");
            }
        }
        Templates { env, fixed, own_facts }
    }

    /// The system prompt rendered once for a channel, when it names only fixed values.
    pub fn fixed_system(&self, bot: &BotVars, channel: &str) -> Option<String> {
        self.fixed[Kind::System.index()].then(|| {
            let vars = Vars { bot: bot.clone(), channel: channel.to_owned(), ..Vars::default() };
            self.render(Kind::System, &vars)
        })
    }

    /// Renders `kind` (trimmed); the built-in wording if it fails.
    pub fn render(&self, kind: Kind, vars: &Vars) -> String {
        let rendered = self.env.get_template(kind.key()).and_then(|t| t.render(vars));
        match rendered {
            Ok(s) => s.trim().to_owned(),
            Err(_) => {
                let env = environment();
                env.render_str(kind.default_source(), vars).map(|s| s.trim().to_owned()).unwrap_or_default()
            }
        }
    }

    /// Whether the template of `kind` places the room's facts line (`{{ room }}`)
    /// itself; otherwise the engine puts it before the instruction.
    pub fn places_facts(&self, kind: Kind) -> bool {
        self.own_facts[kind.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_wording_passes_its_own_check() {
        for kind in Kind::ALL {
            assert_eq!(check(kind.default_source()), Ok(()), "{kind:?}");
        }
    }

    #[test]
    fn unknown_variables_and_syntax_errors_are_caught_with_their_line() {
        let e = check("Hello {{ user }}.\nNow playing: {{ media.tittle }}").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.starts_with("unknown variable `media.tittle`"), "{}", e.message);
        let e = check("line one\n{% if user %}never closed").unwrap_err();
        assert_eq!(e.line, Some(2), "{e:?}");
        assert!(e.message.contains("syntax error"), "{}", e.message);
        assert!(check("{{ nobody }}").unwrap_err().message.contains("unknown variable `nobody`"));
        assert_eq!(check("{% for n in users.names %}{{ n }}{% if not loop.last %}, {% endif %}{% endfor %}"), Ok(()));
        assert_eq!(check("{{ bot.name | upper }} {{ range(3) | list | length }}"), Ok(()));
    }

    #[test]
    fn a_runaway_template_is_stopped_by_its_fuel() {
        let e = check("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}").unwrap_err();
        assert!(e.message.contains("fuel"), "{}", e.message);
    }

    #[test]
    fn templates_render_their_variables_and_know_when_they_place_the_facts() {
        let mut sources: [String; 7] = Kind::ALL.map(|k| k.default_source().to_owned());
        sources[Kind::System.index()] = "Tu es {{ bot.name }} dans {{ channel }}.".into();
        sources[Kind::Mention.index()] = "{{ room }}\n{{ user }} te parle : {{ text }}".into();
        let bot = BotVars { name: "KrytenBot".into(), aliases: vec![] };
        let t = Templates::new(&sources);
        let vars = sample();
        assert_eq!(t.fixed_system(&bot, "salon").as_deref(), Some("Tu es KrytenBot dans salon."));
        assert_eq!(t.render(Kind::Mention, &vars), "[Room now: …]\nalice te parle : kryten, what are we watching?");
        assert!(t.places_facts(Kind::Mention) && !t.places_facts(Kind::Keyword));
        assert_eq!(t.render(Kind::Keyword, &vars), "[react to alice's last line if you have something to add]");
    }
}
