//! The Unix-socket API: one JSON object per line (see [`wire`] for the format).
//!
//! **Owns** the socket file (created mode 0660, group `api.group`, removed at shutdown), the
//! accept thread and one thread per connection (at most `api.max_clients`). A connection
//! thread reads a line (at most `api.max_request_bytes`; an idle connection is closed after
//! `api.idle_timeout_s`), asks the engine through its bounded request channel, and writes
//! the reply with a write timeout, so a client that never reads is disconnected and never
//! holds anything up: the engine does not wait for clients.

pub mod client;
pub mod peer;
pub mod wire;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::config::ApiConfig;
use crate::engine::{AskError, EngineHandle};
use crate::prompts::{PromptError, Question};
use wire::{ErrorCode, Op, WireError};

/// How long a connection waits for the engine's answer.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The error code for an engine error.
pub(crate) fn error_code(e: &AskError) -> ErrorCode {
    match e {
        AskError::NoData => ErrorCode::NoData,
        AskError::UnknownPreset { .. } => ErrorCode::UnknownPreset,
        AskError::Model(_) => ErrorCode::ModelError,
        AskError::Busy => ErrorCode::Busy,
        AskError::Timeout(_) => ErrorCode::Timeout,
    }
}

fn prompt_error(e: &PromptError) -> WireError {
    let code = match e {
        PromptError::NoTemplate { .. } => ErrorCode::NoTemplate,
        _ => ErrorCode::BadSlots,
    };
    WireError {
        code,
        message: e.to_string(),
    }
}

/// Settings a connection thread needs.
#[derive(Debug)]
struct Shared {
    engine: EngineHandle,
    cfg: ApiConfig,
    group: Option<u32>,
    own_uid: u32,
    clients: AtomicUsize,
    stopping: AtomicBool,
    default_every: Duration,
}

/// The running server.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds the socket and starts accepting. `default_every` is the subscription interval
    /// when a client gives none.
    pub fn start(
        cfg: &ApiConfig,
        engine: EngineHandle,
        default_every: Duration,
    ) -> anyhow::Result<Self> {
        let path = cfg.socket.clone();
        let group = match &cfg.group {
            Some(name) => Some(
                nix::unistd::Group::from_name(name)
                    .with_context(|| format!("looking up api.group {name:?}"))?
                    .with_context(|| format!("config key `api.group` = {name:?}: no such group"))?
                    .gid
                    .as_raw(),
            ),
            None => None,
        };
        let listener = bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&path, None, Some(gid))
                .with_context(|| format!("giving {} to group {gid}", path.display()))?;
        }
        let shared = Arc::new(Shared {
            engine,
            cfg: cfg.clone(),
            group,
            own_uid: nix::unistd::getuid().as_raw(),
            clients: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            default_every,
        });
        let accept_shared = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))
            .context("starting the API thread")?;
        tracing::info!(socket = %path.display(), "API listening");
        Ok(Server {
            path,
            shared,
            accept: Some(accept),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting and removes the socket file. Open connections end with the process
    /// (or at their next request, which gets `busy`).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The accept thread polls the flag at least every ACCEPT_POLL: no connection of our
        // own is needed to wake it (one could block on a full backlog).
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.shutdown();
        }
    }
}

/// Binds `path`, creating its directory; a stale socket file (nobody listening) is replaced,
/// a live one is an error.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
            .with_context(|| format!("setting mode 0750 on {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is in use: another tspm-edge serve is running (api.socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding the API socket {}", path.display()))
}

/// How long the accept thread waits for a connection before it looks at the stop flag again.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// Waits until `listener` has a connection to accept (`Ok(true)`) or `ACCEPT_POLL` passed.
fn wait_readable(listener: &UnixListener) -> std::io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(ACCEPT_POLL).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    // Non-blocking, so a connection that went away between poll() and accept() cannot
    // leave the thread blocked where it never sees the stop flag.
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::warn!(error = %e, "could not make the API socket non-blocking");
    }
    while !shared.stopping.load(Ordering::SeqCst) {
        match wait_readable(listener) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for API connections failed");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        }
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Connections block (with their own timeouts); only the listener polls.
        if let Err(e) = stream.set_nonblocking(false) {
            tracing::warn!(error = %e, "could not make an API connection blocking");
            continue;
        }
        let _ = stream.set_write_timeout(Some(shared.cfg.write_timeout));
        let id = None;
        if shared.clients.load(Ordering::SeqCst) >= shared.cfg.max_clients {
            let _ = send(
                &mut stream,
                &wire::error_line(
                    &id,
                    &WireError {
                        code: ErrorCode::TooManyClients,
                        message: format!(
                            "{} clients are connected (api.max_clients); try again later",
                            shared.cfg.max_clients
                        ),
                    },
                ),
            );
            continue;
        }
        match peer::peer(&stream) {
            Ok(p)
                if peer::allowed(p, shared.own_uid, shared.group, || {
                    peer::supplementary_groups(p.pid)
                }) => {}
            other => {
                tracing::warn!(peer = ?other, "connection refused: not root, our user or api.group");
                let _ = send(
                    &mut stream,
                    &wire::error_line(
                        &id,
                        &WireError {
                            code: ErrorCode::Forbidden,
                            message: "not allowed: connect as root, the daemon's user or a \
                                      member of api.group"
                                .into(),
                        },
                    ),
                );
                continue;
            }
        }
        shared.clients.fetch_add(1, Ordering::SeqCst);
        let conn_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &conn_shared) {
                    tracing::debug!(error = %e, "connection ended");
                }
                conn_shared.clients.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn send(stream: &mut UnixStream, line: &str) -> std::io::Result<()> {
    stream.write_all(line.as_bytes())?;
    stream.write_all(b"\n")?;
    stream.flush()
}

/// What reading one line gave.
enum Line {
    Eof,
    Request(Vec<u8>),
    TooLong,
}

/// Reads up to `max` bytes of one line; a longer line is consumed to its end and reported.
fn read_line(
    reader: &mut BufReader<UnixStream>,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(max as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Line::Request(std::mem::take(buf)));
    }
    if buf.len() <= max {
        // End of stream without a newline: the last request.
        return Ok(Line::Request(std::mem::take(buf)));
    }
    // Skip the rest of the oversized line, in bounded reads.
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(Line::TooLong);
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(Line::TooLong);
            }
            None => {
                let len = available.len();
                reader.consume(len);
            }
        }
    }
}

fn serve_connection(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(shared.cfg.idle_timeout))?;
    stream.set_write_timeout(Some(shared.cfg.write_timeout))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        let line = match read_line(&mut reader, shared.cfg.max_request_bytes, &mut buf)? {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                send(
                    &mut writer,
                    &wire::error_line(
                        &None,
                        &WireError {
                            code: ErrorCode::TooLong,
                            message: format!(
                                "request longer than {} bytes (api.max_request_bytes)",
                                shared.cfg.max_request_bytes
                            ),
                        },
                    ),
                )?;
                continue;
            }
            Line::Request(line) => line,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            let error = WireError {
                code: ErrorCode::Busy,
                message: "the daemon is stopping".into(),
            };
            send(&mut writer, &wire::error_line(&None, &error))?;
            return Ok(());
        }
        let (id, op) = match wire::parse_request(&line) {
            Ok(parsed) => parsed,
            Err(rejected) => {
                send(
                    &mut writer,
                    &wire::error_line(&rejected.id, &rejected.error),
                )?;
                continue;
            }
        };
        if let Op::Subscribe { every_s, on_change } = op {
            let every = every_s.map_or(shared.default_every, Duration::from_secs_f64);
            return subscribe(&mut writer, shared, &id, every, on_change);
        }
        let reply = handle(shared, &id, op);
        send(&mut writer, &reply)?;
    }
}

fn handle(shared: &Shared, id: &Option<Value>, op: Op) -> String {
    let engine = &shared.engine;
    let answer = |result: Result<crate::engine::Answer, AskError>| match result {
        Ok(a) => wire::ok_line(
            id,
            "answer",
            serde_json::to_value(wire::answer(&a)).unwrap_or(Value::Null),
        ),
        Err(e) => wire::error_line(
            id,
            &WireError {
                code: error_code(&e),
                message: e.to_string(),
            },
        ),
    };
    match op {
        Op::AskText(text) => match Question::parse_free_text(&text) {
            Ok(q) => answer(engine.ask(q, ENGINE_TIMEOUT)),
            Err(e) => wire::error_line(id, &prompt_error(&e)),
        },
        Op::AskTemplate { template, values } => match Question::from_template(&template, &values) {
            Ok(q) => answer(engine.ask(q, ENGINE_TIMEOUT)),
            Err(e) => wire::error_line(id, &prompt_error(&e)),
        },
        Op::AskPreset(preset) => answer(engine.ask_preset(&preset, ENGINE_TIMEOUT)),
        Op::Presets => wire::ok_line(id, "presets", wire::presets(engine.presets())),
        Op::Templates => wire::ok_line(id, "templates", wire::templates()),
        Op::Status => match engine.status(ENGINE_TIMEOUT) {
            Ok(s) => wire::ok_line(id, "status", wire::status(&s)),
            Err(e) => wire::error_line(
                id,
                &WireError {
                    code: error_code(&e),
                    message: e.to_string(),
                },
            ),
        },
        Op::Subscribe { .. } => wire::error_line(
            id,
            &WireError {
                code: ErrorCode::BadRequest,
                message: "subscribe is handled by the connection".into(),
            },
        ),
    }
}

/// Acknowledges, then writes preset answers as the engine pushes them until the client goes
/// away (a failed or timed-out write) or the daemon stops.
fn subscribe(
    writer: &mut UnixStream,
    shared: &Shared,
    id: &Option<Value>,
    every: Duration,
    on_change: bool,
) -> std::io::Result<()> {
    let rx = match shared.engine.subscribe(every, on_change) {
        Ok(rx) => rx,
        Err(e) => {
            let error = WireError {
                code: error_code(&e),
                message: e.to_string(),
            };
            return send(writer, &wire::error_line(id, &error));
        }
    };
    send(
        writer,
        &wire::ok_line(
            id,
            "subscribed",
            serde_json::json!({"every_s": every.as_secs_f64(), "on_change": on_change}),
        ),
    )?;
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(answers) => send(writer, &wire::event_line(&answers))?,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let error = WireError {
                    code: ErrorCode::Busy,
                    message: "the engine ended the subscription (too many subscribers, or \
                              stopping)"
                        .into(),
                };
                return send(writer, &wire::error_line(id, &error));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn config(dir: &Path) -> ApiConfig {
        ApiConfig {
            socket: dir.join("api.sock"),
            group: None,
            max_clients: 2,
            max_request_bytes: 1024,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn stop_returns_with_silent_clients_and_unaccepted_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _requests) = EngineHandle::unanswered(4);
        let server = Server::start(&config(dir.path()), engine, Duration::from_secs(5)).unwrap();
        let path = server.path().to_path_buf();
        // Two clients that connect and never send (max_clients), then more that are refused
        // or wait in the backlog.
        let silent: Vec<UnixStream> = (0..6)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        server.stop();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stop took {:?}",
            started.elapsed()
        );
        assert!(!path.exists(), "the socket file is removed");
        assert!(
            UnixStream::connect(&path).is_err(),
            "nobody listens any more"
        );
        drop(silent);
    }

    #[test]
    fn a_connection_is_served_after_the_listener_polls() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _requests) = EngineHandle::unanswered(4);
        let server = Server::start(&config(dir.path()), engine, Duration::from_secs(5)).unwrap();
        // The accept thread sleeps in poll(); a request must still be read and answered
        // (here: a malformed one, which needs no engine).
        std::thread::sleep(Duration::from_millis(250));
        let mut s = UnixStream::connect(server.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"{not json\n").unwrap();
        let mut reply = String::new();
        BufReader::new(&s).read_line(&mut reply).unwrap();
        assert!(reply.contains("bad_request"), "{reply}");
        server.stop();
    }
}
