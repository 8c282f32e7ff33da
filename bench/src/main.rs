//! End-to-end benchmark of the release binary against a real nats-server and an instant
//! in-process LLM, all on loopback. Every loop is bounded in count and time, and every
//! process it starts is stopped when it ends.
//!
//! Usage: `e2e [BINARY] [RUNS] [KRYTEN_LLM]` (default `target/release/llm-chatbot`, 3
//! runs). With `KRYTEN_LLM` (the `kryten-llm` executable of a virtualenv, see `bench/run`)
//! the same harness drives the Python incumbent too, through its own config format, in
//! the same run, and the table has both columns and the ratio. Writes
//! `bench/results/latest.json` and `bench/results/latest.md`; medians over runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatbot_testkit::{config, free_port, http_get, Bot, FakeLlm, Nats};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn channels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("ch{i}")).collect()
}

fn bot_config(nats: &Nats, llm: &FakeLlm, names: &[String]) -> String {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    config(&nats.url(), &llm.base_url(), free_port(), &refs, "").replace(
        "per_user: { max: 100, window: 1m }, per_channel: { max: 100, window: 1m }",
        "per_user: { max: 1000000, window: 1m }, per_channel: { max: 1000000, window: 1m }, max_in_flight: 1000",
    )
}

/// kryten-llm's JSON config for the same job: same NATS, same fake LLM, the same names
/// counting as a mention, every limit, cooldown, spam rule and send delay out of the way.
fn kryten_config(nats: &Nats, llm: &FakeLlm, names: &[String], http_port: u16) -> String {
    json!({
        "nats": {"servers": [nats.url()]},
        "channels": names.iter().map(|c| json!({"domain": "cytu.be", "channel": c})).collect::<Vec<_>>(),
        "personality": {"character_name": "KrytenBot", "name_variations": ["kryten", "krytenbot"]},
        "llm_providers": {"local": {"name": "local", "type": "openai_compatible", "base_url": llm.base_url(),
                                    "api_key": "none", "model": "test-model", "max_retries": 0}},
        "default_provider": "local",
        "rate_limits": {"global_max_per_minute": 1_000_000, "global_max_per_hour": 1_000_000, "global_cooldown_seconds": 0,
                        "user_max_per_hour": 1_000_000, "user_cooldown_seconds": 0, "mention_cooldown_seconds": 0},
        "spam_detection": {"enabled": false},
        "validation": {"check_repetition": false},
        "metrics": {"enabled": true, "port": http_port, "host": "127.0.0.1"},
        "testing": {"log_responses": false},
        "chat_min_delay": 0,
        "chat_jitter": 0,
    })
    .to_string()
}

/// A bot under test: this project's binary, or kryten-llm driven through its own config.
#[derive(Clone)]
enum Target {
    Ours(String),
    Kryten(String),
}

/// A running bot and what it needs kept alive.
struct Running {
    bot: Bot,
    http_port: u16,
    _dir: tempfile::TempDir,
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Ours(_) => "llm-chatbot",
            Target::Kryten(_) => "kryten-llm 0.11.1",
        }
    }

    /// Starts the bot for `names` without waiting.
    fn spawn(&self, nats: &Nats, llm: &FakeLlm, names: &[String]) -> Running {
        let dir = tempfile::tempdir().unwrap();
        match self {
            Target::Ours(bin) => {
                let bot = Bot::spawn(bin, &bot_config(nats, llm, names), &[], &[]);
                let http_port = bot.http_port;
                Running { bot, http_port, _dir: dir }
            }
            Target::Kryten(exe) => {
                let http_port = free_port();
                let path = dir.path().join("config.json");
                std::fs::write(&path, kryten_config(nats, llm, names, http_port)).unwrap();
                let path = path.to_str().expect("utf-8 temp path").to_owned();
                let bot = Bot::spawn_command(exe, &["--config", &path, "--log-level", "INFO"], &[]);
                Running { bot, http_port, _dir: dir }
            }
        }
    }

    /// The log line that says it is subscribed and ready.
    fn ready_line(&self) -> &'static str {
        match self {
            Target::Ours(_) => "ready",
            Target::Kryten(_) => "LLM service started and ready",
        }
    }

    /// The channels it answers in: kryten-llm 0.11.1 sends every reply to its first
    /// configured channel (`service.py`: `self.config.channels[0]`), so mentions go there.
    fn answering<'a>(&self, names: &'a [String]) -> &'a [String] {
        match self {
            Target::Ours(_) => names,
            Target::Kryten(_) => &names[..1],
        }
    }

    fn start(&self, nats: &Nats, llm: &FakeLlm, names: &[String]) -> Running {
        let r = self.spawn(nats, llm, names);
        r.bot.wait_for(self.ready_line(), Duration::from_secs(120));
        r
    }
}

fn chat(channel: &str, user: &str, msg: &str, id: u64) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    format!(
        r#"{{"event_name": "chatMsg", "payload": {{"username": "{user}", "msg": "{msg}", "meta": {{}}, "time": {}}}, "channel": "{channel}", "domain": "cytu.be", "timestamp": "2026-01-15T10:30:00.000000+00:00", "correlation_id": "b{id:035}"}}"#,
        now + 1000
    )
    .into_bytes()
}

/// Receives say commands and records when each token arrived.
async fn collector(client: &async_nats::Client) -> Arc<Mutex<HashMap<String, Instant>>> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut sub = client.subscribe("kryten.robot.command").await.unwrap();
    client.flush().await.unwrap();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let at = Instant::now();
            if let Ok(v) = serde_json::from_slice::<Value>(&msg.payload) {
                if let Some(token) = v["args"]["message"].as_str().and_then(|m| m.split_whitespace().last()) {
                    s.lock().unwrap().insert(token.to_owned(), at);
                }
            }
        }
    });
    seen
}

async fn wait_token(seen: &Arc<Mutex<HashMap<String, Instant>>>, token: &str, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(t) = seen.lock().unwrap().get(token) {
            return Some(*t);
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    None
}

/// Start → "ready" (subscribed) wall time, and SIGTERM → exit when idle.
async fn start_and_stop(target: &Target, nats: &Nats, llm: &FakeLlm) -> (f64, f64, f64) {
    let t0 = Instant::now();
    let mut r = target.spawn(nats, llm, &channels(10));
    r.bot.wait_for(target.ready_line(), Duration::from_secs(120));
    let ready_ms = t0.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_kib(r.bot.pid().unwrap()) as f64 / 1024.0;
    let t1 = Instant::now();
    r.bot.signal("TERM");
    r.bot.wait_exit(Duration::from_secs(60));
    (ready_ms, t1.elapsed().as_secs_f64() * 1000.0, rss)
}

/// Mention → `say` latency over `n` mentions spread over 10 channels (instant LLM).
async fn latency(target: &Target, nats: &Nats, llm: &FakeLlm, n: u64) -> Value {
    let names = channels(10);
    let bot = target.start(nats, llm, &names);
    let answering = target.answering(&names);
    let client = nats.client().await;
    let seen = collector(&client).await;
    let mut lat = Vec::with_capacity(n as usize);
    let mut misses = 0;
    for i in 0..n {
        let ch = &answering[(i as usize) % answering.len()];
        let token = format!("tok{i}");
        let body = chat(ch, &format!("user{i}"), &format!("kryten {token}"), i);
        let sent = Instant::now();
        client.publish(format!("kryten.events.cytube.{ch}.chatmsg"), body.into()).await.unwrap();
        client.flush().await.unwrap();
        match wait_token(&seen, &token, Duration::from_secs(2)).await {
            Some(at) => {
                lat.push(at.duration_since(sent).as_secs_f64() * 1000.0);
                misses = 0;
            }
            None => {
                misses += 1;
                // Bounded: a bot that stopped answering is not waited for 1,000 times.
                if misses == 20 {
                    eprintln!("  {}: 20 mentions in a row unanswered; stopping at {i}", target.name());
                    break;
                }
            }
        }
    }
    // Of which the LLM round trip (our /metrics has it; mean over the run).
    let llm_mean_ms = match target {
        Target::Ours(_) => {
            let (_, metrics) = http_get(bot.http_port, "/metrics").await;
            let value = |name: &str| -> Option<f64> {
                metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            };
            value("llm_chatbot_llm_request_duration_seconds_sum ")
                .zip(value("llm_chatbot_llm_request_duration_seconds_count "))
                .map(|(sum, count)| sum / count * 1000.0)
        }
        Target::Kryten(_) => None,
    };
    drop(bot);
    lat.sort_by(|a, b| a.total_cmp(b));
    json!({"answered": lat.len(), "of": n, "p50_ms": percentile(&lat, 0.5), "p90_ms": percentile(&lat, 0.9),
           "p99_ms": percentile(&lat, 0.99), "max_ms": lat.last(), "llm_mean_ms": llm_mean_ms})
}

/// The highest ordinary-chat rate (events/s, over `n_channels`) at which a mention sent
/// during the flood is still answered within 10 ms.
async fn ingest(target: &Target, nats: &Nats, llm: &FakeLlm, n_channels: usize) -> Value {
    let names = channels(n_channels);
    let r = target.start(nats, llm, &names);
    let client = nats.client().await;
    let seen = collector(&client).await;
    let subjects: Vec<String> = names.iter().map(|ch| format!("kryten.events.cytube.{ch}.chatmsg")).collect();
    // Every filler line is a distinct event (own id, own time), as in a real room;
    // repeats would be dropped as duplicates and measure nothing.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 + 1000;
    let filler = |n: u64| -> (usize, Vec<u8>) {
        let c = (n as usize) % n_channels;
        let body = format!(
            r#"{{"event_name": "chatMsg", "payload": {{"username": "u{}", "msg": "just chatting about the weather", "meta": {{}}, "time": {}}}, "channel": "{}", "correlation_id": "f{n}"}}"#,
            n % 50,
            now_ms + n,
            names[c]
        );
        (c, body.into_bytes())
    };
    // Warm up: the first mention after start sets up the LLM connection (tens of ms);
    // sustained ingest is about a bot that has been running.
    let ch = &target.answering(&names)[0];
    client
        .publish(
            format!("kryten.events.cytube.{ch}.chatmsg"),
            chat(ch, "warmup", "kryten tokwarmup", 999_999_999).into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let _ = wait_token(&seen, "tokwarmup", Duration::from_secs(2)).await;
    let mut serial = 0u64;
    let mut best = 0u64;
    let mut steps = Vec::new();
    for rate in [1_000u64, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 200_000, 400_000] {
        let duration = Duration::from_secs(2);
        let start = Instant::now();
        let mut sent = 0u64;
        let mut worst = 0.0f64;
        let mut mention = 0u64;
        let mut next_mention = start;
        while start.elapsed() < duration {
            // Publish in small bursts to hold the target rate.
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                serial += 1;
                let (c, body) = filler(serial);
                client.publish(subjects[c].clone(), body.into()).await.unwrap();
                sent += 1;
            }
            if Instant::now() >= next_mention {
                // A new asker each time: one user mentioning the bot again and again
                // is what the loop guard is for.
                mention += 1;
                let token = format!("tokr{rate}m{mention}");
                let answering = target.answering(&names);
                let ch = &answering[(mention as usize) % answering.len()];
                let t = Instant::now();
                client
                    .publish(
                        format!("kryten.events.cytube.{ch}.chatmsg"),
                        chat(ch, &format!("asker{rate}x{mention}"), &format!("kryten {token}"), rate * 1_000 + mention)
                            .into(),
                    )
                    .await
                    .unwrap();
                client.flush().await.unwrap();
                let ms = wait_token(&seen, &token, Duration::from_millis(500))
                    .await
                    .map_or(f64::INFINITY, |at| at.duration_since(t).as_secs_f64() * 1000.0);
                worst = worst.max(ms);
                next_mention = Instant::now() + Duration::from_millis(100);
            }
            tokio::task::yield_now().await;
        }
        let achieved = sent as f64 / start.elapsed().as_secs_f64();
        steps.push(json!({"target": rate, "achieved": achieved.round(), "worst_mention_ms": worst}));
        if worst <= 10.0 && achieved >= rate as f64 * 0.9 {
            best = rate;
        } else {
            let logs = r.bot.logs();
            for l in logs.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(5) {
                eprintln!("  bot: {l}");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(r);
    json!({"channels": n_channels, "max_rate_with_mentions_under_10ms": best, "steps": steps})
}

/// RSS idle and after every channel's context is full (50 lines each).
async fn memory(target: &Target, nats: &Nats, llm: &FakeLlm, n_channels: usize) -> Value {
    let names = channels(n_channels);
    let r = target.start(nats, llm, &names);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = r.bot.pid().unwrap();
    let idle = rss_kib(pid);
    let client = nats.client().await;
    for line in 0..50u64 {
        for (c, ch) in names.iter().enumerate() {
            let text = format!("line {line} of a fairly ordinary chat message in channel {c}, nothing special");
            client
                .publish(
                    format!("kryten.events.cytube.{ch}.chatmsg"),
                    chat(ch, &format!("u{}", line % 7), &text, line * 10_000 + c as u64).into(),
                )
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let full = rss_kib(pid);
    drop(r);
    json!({"channels": n_channels, "idle_mib": idle as f64 / 1024.0, "full_context_mib": full as f64 / 1024.0})
}

/// /health over `conns` keep-alive connections for 2 s.
async fn health(target: &Target, nats: &Nats, llm: &FakeLlm, conns: usize) -> Value {
    use http_get_loop::run;
    let r = target.start(nats, llm, &channels(10));
    let results = run(r.http_port, conns, Duration::from_secs(2)).await;
    drop(r);
    let mut lat: Vec<f64> = results.iter().flatten().copied().collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    json!({"connections": conns, "rps": (lat.len() as f64 / 2.0).round(), "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99)})
}

mod http_get_loop {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The Content-Length of a response head (0 when absent).
    fn content_length(head: &[u8]) -> usize {
        head.split(|&b| b == b'\n')
            .find_map(|line| {
                let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
                name.eq_ignore_ascii_case(b"content-length")
                    .then(|| std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or(0)
    }

    /// Each connection sends GET /health back to back for `dur`; latencies in ms.
    pub async fn run(port: u16, conns: usize, dur: Duration) -> Vec<Vec<f64>> {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            tasks.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                s.set_nodelay(true).unwrap();
                let req = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
                let mut buf = vec![0u8; 64 * 1024];
                let mut lat = Vec::new();
                let start = Instant::now();
                while start.elapsed() < dur {
                    let t = Instant::now();
                    s.write_all(req).await.unwrap();
                    // Read one response: headers, then Content-Length bytes. Kept
                    // cheap (no copies, no allocation), so the client is not what is
                    // measured.
                    let mut got = 0;
                    let mut end = None;
                    while end.is_none_or(|e| got < e) {
                        let n = s.read(&mut buf[got..]).await.unwrap();
                        assert!(n > 0, "server closed");
                        got += n;
                        if end.is_none() {
                            if let Some(h) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                                end = Some(h + 4 + content_length(&buf[..h]));
                            }
                        }
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}

/// Every measurement for one target; medians over `runs`.
async fn suite(target: &Target, nats: &Nats, llm: &FakeLlm, runs: usize, memory_sizes: &[usize]) -> Value {
    let mut ready = Vec::new();
    let mut stop = Vec::new();
    let mut rss10 = Vec::new();
    let mut lat_runs = Vec::new();
    let mut health1 = Vec::new();
    let mut health8 = Vec::new();
    for run in 0..runs {
        eprintln!("{}: run {}/{runs}", target.name(), run + 1);
        if wanted("start") {
            let (r, s, m) = start_and_stop(target, nats, llm).await;
            ready.push(r);
            stop.push(s);
            rss10.push(m);
        }
        if wanted("latency") {
            lat_runs.push(latency(target, nats, llm, 1000).await);
        }
        if wanted("health") {
            health1.push(health(target, nats, llm, 1).await);
            health8.push(health(target, nats, llm, 8).await);
        }
    }
    let med = |runs: &[Value], key: &str| median(runs.iter().filter_map(|v| v[key].as_f64()).collect());
    let mut memory_rows = Vec::new();
    for &n in memory_sizes.iter().filter(|_| wanted("memory")) {
        eprintln!("{}: memory with {n} channels", target.name());
        memory_rows.push(memory(target, nats, llm, n).await);
    }
    let mut ingest_rows = Vec::new();
    for n in [10, 100].into_iter().filter(|_| wanted("ingest")) {
        eprintln!("{}: ingest over {n} channels", target.name());
        ingest_rows.push(ingest(target, nats, llm, n).await);
    }
    json!({
        "target": target.name(),
        "runs": runs,
        "start_to_ready_ms": median(ready),
        "sigterm_to_exit_idle_ms": median(stop),
        "rss_idle_10_channels_mib": median(rss10),
        "mention_to_say": {"p50_ms": med(&lat_runs, "p50_ms"), "p99_ms": med(&lat_runs, "p99_ms"), "max_ms": med(&lat_runs, "max_ms"),
                           "answered": med(&lat_runs, "answered"), "per_run": lat_runs},
        "health_one_connection": {"rps": med(&health1, "rps"), "p99_ms": med(&health1, "p99_ms"), "per_run": health1},
        "health_eight_connections": {"rps": med(&health8, "rps"), "p99_ms": med(&health8, "p99_ms"), "per_run": health8},
        "memory": memory_rows,
        "ingest": ingest_rows,
    })
}

/// Whether a part of the suite runs: all of them, unless `E2E_ONLY` names some
/// (`start,latency,health,memory,ingest`; for working on one figure, and then the
/// results files are not written).
fn wanted(part: &str) -> bool {
    std::env::var("E2E_ONLY").map_or(true, |only| only.split(',').any(|p| p.trim() == part))
}

/// `x` with `unit`, or `–` when not measured.
fn fmt(x: Option<f64>, digits: usize, unit: &str) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}{unit}"),
        _ => "–".into(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args.get(1).cloned().unwrap_or_else(|| "target/release/llm-chatbot".into());
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
    let incumbent = args.get(3).cloned();
    assert!(std::path::Path::new(&bin).exists(), "{bin} not found: build it with `cargo build --release`");
    let nats = Nats::start();
    let llm = FakeLlm::start().await;

    let ours = suite(&Target::Ours(bin.clone()), &nats, &llm, runs, &[1, 10, 100, 1000]).await;
    let theirs = match &incumbent {
        Some(exe) => Some(suite(&Target::Kryten(exe.clone()), &nats, &llm, runs, &[1, 10, 100, 1000]).await),
        None => None,
    };
    let results = json!({
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "llm-chatbot": ours,
        "kryten-llm": theirs,
    });
    if std::env::var_os("E2E_ONLY").is_some() {
        println!("{}", serde_json::to_string_pretty(&results).unwrap());
        return;
    }
    std::fs::create_dir_all("bench/results").unwrap();
    std::fs::write("bench/results/latest.json", serde_json::to_string_pretty(&results).unwrap()).unwrap();

    // One row per figure: ours, theirs, and how many times better ours is.
    let none = Value::Null;
    let t = theirs.as_ref().unwrap_or(&none);
    let mut md = String::from("| what | llm-chatbot | kryten-llm 0.11.1 | ratio |\n|---|---|---|---|\n");
    let mut row = |what: &str, o: Option<f64>, k: Option<f64>, digits: usize, unit: &str, lower_is_better: bool| {
        let ratio = match (o, k) {
            (Some(o), Some(k)) if o > 0.0 && k > 0.0 && o.is_finite() && k.is_finite() => {
                let r = if lower_is_better { k / o } else { o / k };
                format!("{r:.1}× {}", if r >= 1.0 { "better" } else { "worse" })
            }
            _ => "–".into(),
        };
        md.push_str(&format!("| {what} | {} | {} | {ratio} |\n", fmt(o, digits, unit), fmt(k, digits, unit)));
    };
    // A figure's place in the results: keys, and indexes into arrays.
    let f = |v: &Value, path: &[String]| -> Option<f64> {
        let mut cur = v;
        for p in path {
            cur = match p.parse::<usize>() {
                Ok(i) => &cur[i],
                Err(_) => &cur[p.as_str()],
            };
        }
        cur.as_f64()
    };
    let path = |p: &str| -> Vec<String> { p.split('/').map(str::to_owned).collect() };
    // (label, path, digits, unit, lower is better), in table order.
    let mut figures: Vec<(String, Vec<String>, usize, &str, bool)> = vec![
        ("start → subscribed (10 channels)".into(), path("start_to_ready_ms"), 0, " ms", true),
        ("mention → `say`, p50 (1,000 mentions, instant LLM)".into(), path("mention_to_say/p50_ms"), 2, " ms", true),
        ("mention → `say`, p99".into(), path("mention_to_say/p99_ms"), 2, " ms", true),
        ("mention → `say`, max".into(), path("mention_to_say/max_ms"), 1, " ms", true),
        ("mentions answered (of 1,000)".into(), path("mention_to_say/answered"), 0, "", false),
    ];
    for (i, n) in [10, 100].iter().enumerate() {
        let label = format!("ordinary chat over {n} channels with mentions < 10 ms");
        figures.push((label, path(&format!("ingest/{i}/max_rate_with_mentions_under_10ms")), 0, " ev/s", false));
    }
    for (i, n) in [1, 10, 100, 1000].iter().enumerate() {
        figures.push((format!("RSS, {n} channel(s) idle"), path(&format!("memory/{i}/idle_mib")), 1, " MiB", true));
        let label = format!("RSS, {n} channel(s), 50 lines each");
        figures.push((label, path(&format!("memory/{i}/full_context_mib")), 1, " MiB", true));
    }
    for (key, conns) in
        [("health_one_connection", "1 keep-alive connection"), ("health_eight_connections", "8 connections")]
    {
        figures.push((format!("/health, {conns}"), path(&format!("{key}/rps")), 0, " rps", false));
        figures.push((format!("/health p99, {conns}"), path(&format!("{key}/p99_ms")), 3, " ms", true));
    }
    figures.push(("SIGTERM → exit when idle".into(), path("sigterm_to_exit_idle_ms"), 1, " ms", true));
    for (what, p, digits, unit, lower) in &figures {
        row(what, f(&ours, p), f(t, p), *digits, unit, *lower);
    }
    md.push_str("| PMs answered by PM | yes | no (kryten-llm 0.11.1 does not handle PMs) | |\n");
    md.push_str("| several instances (leases, failover) | yes (`ha:`) | no | |\n");
    std::fs::write("bench/results/latest.md", &md).unwrap();
    println!("{md}");
}
