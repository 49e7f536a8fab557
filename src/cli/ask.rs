//! `tspm-edge ask` and `tspm-edge status`: the socket client. Human output by default,
//! `--json` prints the daemon's reply lines as they are.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::client::Client;
use crate::config::Config;

/// Arguments of `ask`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The question, free text ("is the violin louder than the piano") or a MUSIC-AVQA
    /// template with `--value`s.
    #[arg(conflicts_with_all = ["preset", "presets", "templates", "subscribe"])]
    pub question: Option<String>,
    /// Slot values when QUESTION is a template with `<Object>`-style slots, in order.
    #[arg(long = "value", requires = "question")]
    pub values: Vec<String>,
    /// Ask a configured preset by id.
    #[arg(long, conflicts_with_all = ["presets", "templates", "subscribe"])]
    pub preset: Option<String>,
    /// List the configured presets.
    #[arg(long)]
    pub presets: bool,
    /// List the 33 templates and the known slot values.
    #[arg(long)]
    pub templates: bool,
    /// Stay connected and print the presets' answers as the daemon pushes them.
    #[arg(long)]
    pub subscribe: bool,
    /// With `--subscribe`: seconds between pushes (default: presets.interval_s).
    #[arg(long, requires = "subscribe", value_name = "SECONDS")]
    pub every: Option<f64>,
    /// With `--subscribe`: push only when an answer changes.
    #[arg(long, requires = "subscribe")]
    pub on_change: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// Where and how to connect.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// The daemon's socket (default: api.socket from the configuration).
    #[arg(long, env = "TSPM_EDGE_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the daemon's JSON reply lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up waiting for a reply after this many seconds.
    #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
    pub timeout_s: f64,
}

impl Conn {
    fn connect(&self, cfg: &Config, subscribe: bool) -> anyhow::Result<Client> {
        let path = self
            .socket
            .clone()
            .unwrap_or_else(|| cfg.api.socket.clone());
        let timeout = (!subscribe).then(|| Duration::from_secs_f64(self.timeout_s.max(0.1)));
        Client::connect(&path, timeout)
    }
}

/// Runs `ask`.
pub fn run(cfg: &Config, args: Args) -> anyhow::Result<()> {
    let request = if let Some(q) = &args.question {
        if args.values.is_empty() && !q.contains('<') {
            json!({"v": 1, "op": "ask", "question": q})
        } else {
            json!({"v": 1, "op": "ask", "template": q, "values": args.values})
        }
    } else if let Some(p) = &args.preset {
        json!({"v": 1, "op": "ask", "preset": p})
    } else if args.presets {
        json!({"v": 1, "op": "presets"})
    } else if args.templates {
        json!({"v": 1, "op": "templates"})
    } else if args.subscribe {
        let mut r = json!({"v": 1, "op": "subscribe", "on_change": args.on_change});
        if let Some(every) = args.every {
            r["every_s"] = every.into();
        }
        r
    } else {
        anyhow::bail!(
            "nothing to ask: give a QUESTION, --preset ID, --presets, --templates or --subscribe"
        );
    };
    let mut client = args.conn.connect(cfg, args.subscribe)?;
    let reply = client.call(&request)?;
    print_reply(&reply, args.conn.json)?;
    if args.subscribe {
        loop {
            let event = client.recv()?;
            if args.conn.json {
                println!("{event}");
            } else if let Some(answers) = event["answers"].as_array() {
                print_preset_answers(answers);
            } else {
                print_reply(&event, false)?;
            }
        }
    }
    Ok(())
}

/// Runs `status`.
pub fn run_status(cfg: &Config, args: StatusArgs) -> anyhow::Result<()> {
    let mut client = args.conn.connect(cfg, false)?;
    let reply = client.call(&json!({"v": 1, "op": "status"}))?;
    print_reply(&reply, args.conn.json).map(drop)
}

/// Prints a reply; an error reply becomes an error (exit status 1) with the daemon's code.
fn print_reply(reply: &Value, json: bool) -> anyhow::Result<&Value> {
    if json {
        println!("{reply}");
    }
    if reply["ok"] != true {
        let code = reply["error"]["code"].as_str().unwrap_or("?");
        let message = reply["error"]["message"].as_str().unwrap_or("");
        anyhow::bail!("the daemon answered {code}: {message}");
    }
    if json {
        return Ok(reply);
    }
    if let Some(a) = reply.get("answer") {
        print_answer(a);
    } else if let Some(p) = reply.get("presets").and_then(Value::as_array) {
        for preset in p {
            println!(
                "{:<12} {}",
                preset["id"].as_str().unwrap_or(""),
                preset["question"].as_str().unwrap_or("")
            );
        }
    } else if let Some(t) = reply.get("templates") {
        for template in t["templates"].as_array().into_iter().flatten() {
            println!(
                "{:>2}  {:<28} {}",
                template["id"],
                template["type"].as_str().unwrap_or(""),
                template["text"].as_str().unwrap_or("")
            );
        }
        for (slot, values) in t["values"].as_object().into_iter().flatten() {
            let values: Vec<&str> = values
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!("{slot}: {}", values.join(", "));
        }
    } else if let Some(s) = reply.get("status") {
        print_status(s);
    } else if let Some(s) = reply.get("subscribed") {
        println!(
            "subscribed: every {} s{}",
            s["every_s"],
            if s["on_change"] == true {
                ", on change"
            } else {
                ""
            }
        );
    }
    Ok(reply)
}

fn print_answer(a: &Value) {
    println!("Q: {}", a["question"].as_str().unwrap_or(""));
    println!(
        "A: {} ({:.1} %)",
        a["answer"].as_str().unwrap_or(""),
        a["probability"].as_f64().unwrap_or(0.0) * 100.0
    );
    let top: Vec<String> = a["top"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{} {:.1} %",
                t[0].as_str().unwrap_or(""),
                t[1].as_f64().unwrap_or(0.0) * 100.0
            )
        })
        .collect();
    println!("   top-3: {}", top.join(", "));
    println!(
        "   looked at seconds {} of window {}..={} ({} s, head {})",
        a["selected_seconds"],
        a["window_s"][0],
        a["window_s"][1],
        a["window_len"],
        a["head"].as_str().unwrap_or("")
    );
}

fn print_preset_answers(answers: &[Value]) {
    for a in answers {
        let id = a["id"].as_str().unwrap_or("");
        if a["ok"] == true {
            let ans = &a["answer"];
            println!(
                "{id}: {} ({:.1} %)  {}",
                ans["answer"].as_str().unwrap_or(""),
                ans["probability"].as_f64().unwrap_or(0.0) * 100.0,
                ans["question"].as_str().unwrap_or("")
            );
        } else {
            println!(
                "{id}: error {}",
                a["error"]["message"].as_str().unwrap_or("")
            );
        }
    }
}

fn print_status(s: &Value) {
    let w = &s["window"];
    println!(
        "tspm-edge {}: up {:.0} s, {} segments ({} failed), window {}/{} s (missing audio {}, video {}), lag {:.0} ms, {:.1} ms/segment (max {:.1})",
        s["version"].as_str().unwrap_or(""),
        s["uptime_s"].as_f64().unwrap_or(0.0),
        s["segments"],
        s["segment_errors"],
        w["filled_s"],
        w["capacity_s"],
        w["missing_audio_s"],
        w["missing_video_s"],
        s["lag_ms"].as_f64().unwrap_or(0.0),
        s["segment_ms"]["mean"].as_f64().unwrap_or(0.0),
        s["segment_ms"]["max"].as_f64().unwrap_or(0.0),
    );
    for src in s["sources"].as_array().into_iter().flatten() {
        println!(
            "  source {:<6} {:<12} for {:.0} s, {} reconnects, dropped {} audio / {} frames{}",
            src["name"].as_str().unwrap_or(""),
            src["state"].as_str().unwrap_or(""),
            src["state_for_s"].as_f64().unwrap_or(0.0),
            src["reconnects"],
            src["dropped_audio_chunks"],
            src["dropped_video_frames"],
            src["last_error"]
                .as_str()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    for m in s["models"].as_array().into_iter().flatten() {
        println!(
            "  model {:<26} {}  {}",
            m["id"].as_str().unwrap_or(""),
            &m["sha256"].as_str().unwrap_or("")[..12.min(m["sha256"].as_str().unwrap_or("").len())],
            m["reason"].as_str().unwrap_or("")
        );
    }
    if let Some(e) = s["last_error"].as_str() {
        println!("  last error: {e}");
    }
}
