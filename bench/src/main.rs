//! End-to-end benchmark of the release binary against a real nats-server and an instant
//! in-process LLM, all on loopback. Every loop is bounded in count and time, and every
//! process it starts is stopped when it ends.
//!
//! Usage: `e2e [BINARY] [RUNS]` (default `target/release/llm-chatbot`, 3 runs). Writes
//! `bench/results/latest.json` and `bench/results/latest.md`; medians over runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatbot_testkit::{config, free_port, Bot, FakeLlm, Nats};
use futures_util::StreamExt;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

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
async fn start_and_stop(bin: &str, nats: &Nats, llm: &FakeLlm) -> (f64, f64, f64) {
    let cfg = bot_config(nats, llm, &channels(10));
    let t0 = Instant::now();
    let mut bot = Bot::spawn(bin, &cfg, &[], &[]);
    bot.wait_for("ready", T);
    let ready_ms = t0.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_kib(bot.pid().unwrap()) as f64 / 1024.0;
    let t1 = Instant::now();
    bot.signal("TERM");
    bot.wait_exit(T);
    (ready_ms, t1.elapsed().as_secs_f64() * 1000.0, rss)
}

/// Mention → `say` latency over `n` mentions spread over 10 channels (instant LLM).
async fn latency(bin: &str, nats: &Nats, llm: &FakeLlm, n: u64) -> Value {
    let names = channels(10);
    let bot = Bot::start(bin, &bot_config(nats, llm, &names), &[]);
    let client = nats.client().await;
    let seen = collector(&client).await;
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n {
        let ch = &names[(i % 10) as usize];
        let token = format!("tok{i}");
        let body = chat(ch, &format!("user{i}"), &format!("kryten {token}"), i);
        let sent = Instant::now();
        client.publish(format!("kryten.events.cytube.{ch}.chatmsg"), body.into()).await.unwrap();
        client.flush().await.unwrap();
        if let Some(at) = wait_token(&seen, &token, Duration::from_secs(2)).await {
            lat.push(at.duration_since(sent).as_secs_f64() * 1000.0);
        }
    }
    drop(bot);
    lat.sort_by(|a, b| a.total_cmp(b));
    json!({"answered": lat.len(), "of": n, "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99), "max_ms": lat.last()})
}

/// The highest ordinary-chat rate (events/s, over `n_channels`) at which a mention sent
/// during the flood is still answered within 10 ms.
async fn ingest(bin: &str, nats: &Nats, llm: &FakeLlm, n_channels: usize) -> Value {
    let names = channels(n_channels);
    let bot = Bot::start(bin, &bot_config(nats, llm, &names), &[]);
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
    let mut serial = 0u64;
    let mut best = 0u64;
    let mut steps = Vec::new();
    for rate in [10_000u64, 25_000, 50_000, 100_000, 200_000, 400_000] {
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
                mention += 1;
                let token = format!("r{rate}m{mention}");
                let ch = &names[(mention as usize) % n_channels];
                let t = Instant::now();
                client
                    .publish(
                        format!("kryten.events.cytube.{ch}.chatmsg"),
                        chat(ch, &format!("asker{mention}"), &format!("kryten {token}"), rate * 1_000 + mention).into(),
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
            let logs = bot.logs();
            for l in logs.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(5) {
                eprintln!("  bot: {l}");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(bot);
    json!({"channels": n_channels, "max_rate_with_mentions_under_10ms": best, "steps": steps})
}

/// RSS idle and after every channel's context is full (50 lines each).
async fn memory(bin: &str, nats: &Nats, llm: &FakeLlm, n_channels: usize) -> Value {
    let names = channels(n_channels);
    let bot = Bot::start(bin, &bot_config(nats, llm, &names), &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = bot.pid().unwrap();
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
    drop(bot);
    json!({"channels": n_channels, "idle_mib": idle as f64 / 1024.0, "full_context_mib": full as f64 / 1024.0})
}

/// /health over `conns` keep-alive connections for 2 s.
async fn health(bin: &str, nats: &Nats, llm: &FakeLlm, conns: usize) -> Value {
    use http_get_loop::run;
    let bot = Bot::start(bin, &bot_config(nats, llm, &channels(10)), &[]);
    let port = bot.http_port;
    let results = run(port, conns, Duration::from_secs(2)).await;
    drop(bot);
    let mut lat: Vec<f64> = results.iter().flatten().copied().collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    json!({"connections": conns, "rps": (lat.len() as f64 / 2.0).round(), "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99)})
}

mod http_get_loop {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
                    // Read one response: headers, then Content-Length bytes.
                    let mut got = 0;
                    loop {
                        let n = s.read(&mut buf[got..]).await.unwrap();
                        assert!(n > 0, "server closed");
                        got += n;
                        let text = String::from_utf8_lossy(&buf[..got]);
                        if let Some(h) = text.find("\r\n\r\n") {
                            let len: usize = text[..h]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if got >= h + 4 + len {
                                break;
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args.get(1).cloned().unwrap_or_else(|| "target/release/llm-chatbot".into());
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
    assert!(std::path::Path::new(&bin).exists(), "{bin} not found: build it with `cargo build --release`");
    let nats = Nats::start();
    let llm = FakeLlm::start().await;

    let mut ready = Vec::new();
    let mut stop = Vec::new();
    let mut rss10 = Vec::new();
    let mut lat_runs = Vec::new();
    let mut health_runs = Vec::new();
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        let (r, s, m) = start_and_stop(&bin, &nats, &llm).await;
        ready.push(r);
        stop.push(s);
        rss10.push(m);
        lat_runs.push(latency(&bin, &nats, &llm, 1000).await);
        health_runs.push(health(&bin, &nats, &llm, 1).await);
    }
    let med = |runs: &[Value], key: &str| median(runs.iter().filter_map(|v| v[key].as_f64()).collect());
    let mut memory_rows = Vec::new();
    for n in [1, 10, 100, 1000] {
        eprintln!("memory with {n} channels");
        memory_rows.push(memory(&bin, &nats, &llm, n).await);
    }
    let mut ingest_rows = Vec::new();
    for n in [10, 100] {
        eprintln!("ingest over {n} channels");
        ingest_rows.push(ingest(&bin, &nats, &llm, n).await);
    }
    let results = json!({
        "binary": bin,
        "runs": runs,
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "start_to_ready_ms": median(ready),
        "sigterm_to_exit_idle_ms": median(stop),
        "rss_idle_10_channels_mib": median(rss10),
        "mention_to_say": {"p50_ms": med(&lat_runs, "p50_ms"), "p99_ms": med(&lat_runs, "p99_ms"), "max_ms": med(&lat_runs, "max_ms"), "per_run": lat_runs},
        "health_one_connection": {"rps": med(&health_runs, "rps"), "p99_ms": med(&health_runs, "p99_ms"), "per_run": health_runs},
        "memory": memory_rows,
        "ingest": ingest_rows,
    });
    std::fs::create_dir_all("bench/results").unwrap();
    std::fs::write("bench/results/latest.json", serde_json::to_string_pretty(&results).unwrap()).unwrap();
    let mut md = String::from("| what | llm-chatbot |\n|---|---|\n");
    let mut row = |k: &str, v: String| md.push_str(&format!("| {k} | {v} |\n"));
    row(
        "start → subscribed (10 channels)",
        format!("{:.1} ms", results["start_to_ready_ms"].as_f64().unwrap_or(f64::NAN)),
    );
    row(
        "mention → `say`, instant LLM (1,000 mentions)",
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            results["mention_to_say"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
            results["mention_to_say"]["p99_ms"].as_f64().unwrap_or(f64::NAN)
        ),
    );
    for r in &ingest_rows {
        row(
            &format!("ordinary chat over {} channels, mentions < 10 ms", r["channels"]),
            format!("{} events/s", r["max_rate_with_mentions_under_10ms"]),
        );
    }
    for r in &memory_rows {
        row(
            &format!("RSS, {} channels idle / full context", r["channels"]),
            format!(
                "{:.1} / {:.1} MiB",
                r["idle_mib"].as_f64().unwrap_or(0.0),
                r["full_context_mib"].as_f64().unwrap_or(0.0)
            ),
        );
    }
    row(
        "/health, one keep-alive connection",
        format!(
            "{} rps, p99 {:.3} ms",
            results["health_one_connection"]["rps"],
            results["health_one_connection"]["p99_ms"].as_f64().unwrap_or(f64::NAN)
        ),
    );
    row(
        "SIGTERM → exit when idle",
        format!("{:.1} ms", results["sigterm_to_exit_idle_ms"].as_f64().unwrap_or(f64::NAN)),
    );
    std::fs::write("bench/results/latest.md", &md).unwrap();
    println!("{md}");
}
