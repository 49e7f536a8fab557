//! `tspm-edge soak`: the daemon's figures, measured on the real binary — time to READY,
//! `ask` round-trip latency with concurrent clients while capture runs, dropped segments at
//! real-time rate, and RSS over an accelerated run of many windows.
//!
//! It starts `serve` (this same executable) as a child process with a generated config in a
//! temporary directory (the model directory, the three precisions and `auto`'s speed-up rule
//! of its own config), talks to it over the real socket and reads systemd's notify protocol
//! from a datagram socket of its own, so what it prints is what a deployment sees.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::api::client::Client;
use crate::config::Config;

/// Arguments of `soak`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds of the real-time phase (test sources at their own pace).
    #[arg(long, default_value_t = 60.0)]
    pub realtime_s: f64,
    /// Concurrent clients asking during the real-time phase.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Questions each client asks (one every 200 ms).
    #[arg(long, default_value_t = 30)]
    pub asks: usize,
    /// Segments of the accelerated phase (3600 = an hour of capture); 0 skips it.
    #[arg(long, default_value_t = 3600)]
    pub segments: u64,
    /// Window length in seconds for both phases.
    #[arg(long, default_value_t = 60)]
    pub window_s: usize,
}

/// Ten questions from different templates, so that answers are not all served by the cache.
const QUESTIONS: [&str; 10] = [
    "How many instruments are sounding in the video?",
    "Is the violin louder than the piano?",
    "Is there a voiceover?",
    "Is the cello in the video always playing?",
    "Where is the loudest instrument?",
    "Is the flute playing longer than the violin?",
    "How many types of musical instruments sound in the video?",
    "Is there a piano in the entire video?",
    "Is this sound from the instrument in the video?",
    "Where is the first sounding instrument?",
];

struct Served {
    child: Child,
    /// Holds the config and sockets until the child is gone.
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    cfg: &Config,
    window_s: usize,
    extra: &str,
    accelerated: bool,
) -> anyhow::Result<(Served, UnixDatagram, Instant)> {
    let dir = tempfile::tempdir().context("making a temporary directory")?;
    let socket = dir.path().join("api.sock");
    let notify = dir.path().join("notify.sock");
    let config = dir.path().join("tspm-edge.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\ndir = {:?}\naudio_precision = {:?}\nvisual_precision = {:?}\n\
             head_precision = {:?}\nauto_fp32_min_speedup = {}\n[window]\nseconds = {window_s}\n\
             [api]\nsocket = {:?}\nmax_clients = 64\n{extra}",
            cfg.models.dir.display().to_string(),
            cfg.models.audio_precision.as_str(),
            cfg.models.visual_precision.as_str(),
            cfg.models.head_precision.as_str(),
            cfg.models.auto_fp32_min_speedup,
            socket.display().to_string()
        ),
    )?;
    let listener = UnixDatagram::bind(&notify).context("binding the notify socket")?;
    listener.set_read_timeout(Some(Duration::from_secs(120)))?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--config").arg(&config).arg("serve");
    if accelerated {
        cmd.arg("--accelerated");
    }
    let started = Instant::now();
    let child = cmd
        .env("NOTIFY_SOCKET", &notify)
        .env_remove("TSPM_MODEL_DIR")
        .env_remove("TSPM_EDGE_SOCKET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting tspm-edge serve")?;
    Ok((
        Served {
            child,
            _dir: dir,
            socket,
        },
        listener,
        started,
    ))
}

/// Waits for READY=1 on the notify socket; returns when it came.
fn wait_ready(listener: &UnixDatagram) -> anyhow::Result<Instant> {
    let mut buf = [0u8; 4096];
    loop {
        let n = listener
            .recv(&mut buf)
            .context("waiting for READY=1 from serve")?;
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            return Ok(Instant::now());
        }
    }
}

fn call(socket: &Path, request: &Value) -> anyhow::Result<Value> {
    Client::connect(socket, Some(Duration::from_secs(30)))?.call(request)
}

fn status(socket: &Path) -> anyhow::Result<Value> {
    let reply = call(socket, &json!({"op": "status"}))?;
    Ok(reply["status"].clone())
}

fn terminate(mut c: Served) -> anyhow::Result<Duration> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(c.child.id())?);
    let sent = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let status = c.child.wait()?;
    let took = sent.elapsed();
    if !status.success() {
        anyhow::bail!("serve exited with {status} after SIGTERM");
    }
    Ok(took)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `soak`.
pub fn run(cfg: &Config, args: Args) -> anyhow::Result<()> {
    println!(
        "== real time: live test sources, {} s window",
        args.window_s
    );
    let (child, notify, started) = spawn(cfg, args.window_s, "", false)?;
    let ready = wait_ready(&notify)?;
    let ready_s = (ready - started).as_secs_f64();
    println!("READY {ready_s:.2} s after start (models loaded, warmed up, capture playing)");
    // Let a few seconds into the window before the clients come.
    std::thread::sleep(Duration::from_secs(5));
    let socket = child.socket.clone();
    let before = status(&socket)?;
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            let socket = socket.clone();
            let asks = args.asks;
            // (round, ms) per ask: round 0 is each client's first question, which the daemon has
            // not seen before (the text encoder runs for it).
            std::thread::spawn(move || -> anyhow::Result<Vec<(usize, f64)>> {
                let mut client = Client::connect(&socket, Some(Duration::from_secs(30)))?;
                let mut ms = Vec::with_capacity(asks);
                for k in 0..asks {
                    let q = QUESTIONS[(i + k) % QUESTIONS.len()];
                    let t = Instant::now();
                    let reply = client.call(&json!({"op": "ask", "question": q}))?;
                    ms.push((k, t.elapsed().as_secs_f64() * 1e3));
                    if reply["ok"] != true {
                        anyhow::bail!("ask failed: {reply}");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(ms)
            })
        })
        .collect();
    let mut rounds = Vec::new();
    for c in clients {
        rounds.extend(
            c.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    let mut latencies: Vec<f64> = rounds.iter().map(|r| r.1).collect();
    latencies.sort_by(f64::total_cmp);
    let mut seen: Vec<f64> = rounds.iter().filter(|r| r.0 > 0).map(|r| r.1).collect();
    seen.sort_by(f64::total_cmp);
    let mut novel: Vec<f64> = rounds.iter().filter(|r| r.0 == 0).map(|r| r.1).collect();
    novel.sort_by(f64::total_cmp);
    println!(
        "ask round trip, {} clients x {} questions ({} distinct), while capture runs: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.clients,
        args.asks,
        QUESTIONS.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  of which the first round ({} asks, all {} questions new to the daemon at once): p50 {:.1} ms, max {:.1} ms; \
         later rounds (questions seen before; each new second still runs the head): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        novel.len(),
        args.clients.min(QUESTIONS.len()),
        percentile(&novel, 0.5),
        novel.last().copied().unwrap_or(f64::NAN),
        percentile(&seen, 0.5),
        percentile(&seen, 0.9),
        percentile(&seen, 0.99),
        seen.last().copied().unwrap_or(f64::NAN)
    );
    let elapsed = ready.elapsed().as_secs_f64();
    if elapsed < args.realtime_s {
        std::thread::sleep(Duration::from_secs_f64(args.realtime_s - elapsed));
    }
    let after = status(&socket)?;
    let drops = |s: &Value| {
        s["dropped"]["audio_chunks"].as_u64().unwrap_or(0)
            + s["dropped"]["video_frames"].as_u64().unwrap_or(0)
    };
    println!(
        "real time: {} segments in {:.0} s, {} capture items dropped ({} during the asks), \
         {:.1} ms/segment (max {:.1}), lag {:.0} ms, RSS {} kB",
        after["segments"],
        ready.elapsed().as_secs_f64(),
        drops(&after),
        drops(&after) - drops(&before),
        after["segment_ms"]["mean"].as_f64().unwrap_or(0.0),
        after["segment_ms"]["max"].as_f64().unwrap_or(0.0),
        after["lag_ms"].as_f64().unwrap_or(0.0),
        after["rss_kb"]
    );
    let took = terminate(child)?;
    println!("SIGTERM -> clean exit in {:.2} s", took.as_secs_f64());

    if args.segments == 0 {
        return Ok(());
    }
    println!(
        "\n== accelerated: non-live test sources as fast as the engine, {} segments",
        args.segments
    );
    let extra = "[capture]\naudio = \"audiotestsrc is-live=false wave=pink-noise\"\n\
                 video = \"videotestsrc is-live=false pattern=ball\"\n";
    let (child, notify, _) = spawn(cfg, args.window_s, extra, true)?;
    wait_ready(&notify)?;
    let t0 = Instant::now();
    let step = (args.segments / 10).max(1);
    let mut next = step;
    let mut samples: Vec<(u64, u64)> = Vec::new();
    loop {
        let s = status(&child.socket)?;
        let segments = s["segments"].as_u64().unwrap_or(0);
        if segments >= next {
            let rss = s["rss_kb"].as_u64().unwrap_or(0);
            // The heap's live bytes (jemalloc builds): a leak shows here before RSS.
            let heap = s["heap_kb"].as_u64().map_or_else(String::new, |h| {
                format!("  heap {:>6.1} MB", h as f64 / 1024.0)
            });
            println!(
                "{segments:>6} segments  RSS {:>7.1} MB{heap}  ({:.0} s, {:.1} ms/segment)",
                rss as f64 / 1024.0,
                t0.elapsed().as_secs_f64(),
                s["segment_ms"]["mean"].as_f64().unwrap_or(0.0)
            );
            samples.push((segments, rss));
            next += step;
            if segments >= args.segments {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    terminate(child)?;
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
        println!(
            "RSS after {} segments {:.1} MB, after {} segments {:.1} MB (growth {:+.1} MB), peak {:.1} MB",
            first.0,
            first.1 as f64 / 1024.0,
            last.0,
            last.1 as f64 / 1024.0,
            (last.1 as f64 - first.1 as f64) / 1024.0,
            peak as f64 / 1024.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_soak_question_fits_a_template() {
        for q in QUESTIONS {
            crate::prompts::Question::parse_free_text(q).unwrap();
        }
    }
}
