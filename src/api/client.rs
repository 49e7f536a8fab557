//! The client side of the socket, for `tspm-edge ask` and `status`: connect, send one request
//! line, read reply lines.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to `path`; replies must come within `timeout` (`None`: wait forever, for
    /// subscriptions).
    pub fn connect(path: &Path, timeout: Option<Duration>) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(path).with_context(|| {
            format!(
                "connecting to {} (is `tspm-edge serve` running? the path is api.socket, or \
                 TSPM_EDGE_SOCKET / --socket)",
                path.display()
            )
        })?;
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Client {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request object.
    pub fn send(&mut self, request: &Value) -> anyhow::Result<()> {
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .context("sending the request")?;
        Ok(())
    }

    /// Reads one reply line as JSON.
    pub fn recv(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("reading the daemon's reply")?;
        if n == 0 {
            anyhow::bail!("the daemon closed the connection without a reply");
        }
        serde_json::from_str(&line).with_context(|| format!("the daemon's reply {line:?}"))
    }

    /// Sends `request` and reads its reply.
    pub fn call(&mut self, request: &Value) -> anyhow::Result<Value> {
        self.send(request)?;
        self.recv()
    }
}
