//! Where the full event of each use goes: the `tracing` log (the default),
//! JSON lines on stdout, a JSON-lines file rotated by size, or nowhere.
//!
//! The writer thread formats a batch's events and hands them, as one buffer,
//! to a thread of the sink's own, so a slow disk or a stalled stdout pipe
//! never holds up a commit (and so a call). When that thread is too far
//! behind ([`CHANNEL`] buffers), the buffer is dropped and counted
//! ([`crate::Vault::audit_dropped`]); the counts in the store are exact
//! regardless. A line holds no secret: names, hosts, codes, the layer, the
//! version and the HMAC fingerprint.
//!
//! The file is created owner-only. When a line would take it past
//! `max_bytes`, it is renamed `PATH.1` (an existing `PATH.1` becomes
//! `PATH.2`, and so on; the oldest beyond `keep` is deleted) and a new file
//! is started. Rotation is by this process only: point each replica at a
//! file of its own.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::OffsetDateTime;

use super::UseEvent;
use crate::credentials::model::Layer;

/// Refusal events held for the sink between two writer rounds.
pub const BACKLOG: usize = 65_536;
/// Buffers waiting for the sink's thread before new ones are dropped.
pub const CHANNEL: usize = 256;
/// Default size at which the file sink rotates.
pub const DEFAULT_MAX_BYTES: u64 = 100 << 20;
/// Default number of rotated files kept.
pub const DEFAULT_KEEP: u32 = 5;

/// Where full use events go (see the module's documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AuditSink {
    /// A `tracing` event per use (target `latchkey::audit`), as the log
    /// shows it.
    #[default]
    Log,
    /// One JSON object per line on standard output.
    Stdout,
    /// One JSON object per line in a file rotated by size.
    File {
        /// The file.
        path: PathBuf,
        /// Rotate before a line would take it past this many bytes.
        max_bytes: u64,
        /// Rotated files kept (`PATH.1` … `PATH.keep`); 0 keeps none.
        keep: u32,
    },
    /// Nowhere: the counts in the store only.
    None,
}

impl AuditSink {
    /// Parse `log`, `stdout`, `none` or `file:PATH` (with the file's
    /// rotation settings).
    pub fn parse(s: &str, max_bytes: u64, keep: u32) -> Result<AuditSink, String> {
        match s {
            "log" => Ok(AuditSink::Log),
            "stdout" => Ok(AuditSink::Stdout),
            "none" => Ok(AuditSink::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => {
                    if max_bytes == 0 {
                        return Err("the audit sink's size limit must be more than 0 bytes".into());
                    }
                    Ok(AuditSink::File { path: path.into(), max_bytes, keep })
                }
                _ => Err(format!("audit sink `{s}`: one of log, stdout, none, file:PATH")),
            },
        }
    }
}

/// One line of the sink.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    action: &'static str,
    org: &'a str,
    credential: &'a str,
    version: Option<u64>,
    agent: Option<&'a str>,
    destination: Option<&'a str>,
    outcome: &'a str,
    layer: Option<&'static str>,
    fingerprint: Option<&'a str>,
}

pub(crate) enum ToThread {
    Lines(Vec<u8>, u64),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The writer thread's end of the sink.
pub(crate) enum Output {
    Log,
    Thread(std::sync::mpsc::SyncSender<ToThread>),
    None,
}

impl Output {
    /// Open the sink (create the file, start its thread).
    pub(crate) fn open(sink: &AuditSink) -> std::io::Result<Output> {
        let target: Box<dyn Target> = match sink {
            AuditSink::Log => return Ok(Output::Log),
            AuditSink::None => return Ok(Output::None),
            AuditSink::Stdout => Box::new(Stdout),
            AuditSink::File { path, max_bytes, keep } => Box::new(Rotating::open(path, *max_bytes, *keep)?),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL);
        std::thread::Builder::new().name("latchkey-audit-sink".into()).spawn(move || run(target, rx))?;
        Ok(Output::Thread(tx))
    }

    /// Hand events over; the number of events dropped.
    pub(crate) fn write<'a>(&mut self, events: impl Iterator<Item = (&'a UseEvent, OffsetDateTime)>) -> u64 {
        match self {
            Output::None => 0,
            Output::Log => {
                for (e, _) in events {
                    tracing::info!(
                        target: "latchkey::audit",
                        action = "use",
                        org = %e.org,
                        credential = %e.credential,
                        agent = e.agent.as_deref(),
                        destination = e.destination.as_deref(),
                        outcome = %e.outcome,
                        layer = e.layer.map(Layer::as_str),
                        version = e.version,
                        fingerprint = e.fingerprint.as_deref(),
                        "audit"
                    );
                }
                0
            }
            Output::Thread(tx) => {
                let mut buf = Vec::new();
                let mut n = 0;
                for (e, at) in events {
                    let line = Line {
                        at,
                        action: "use",
                        org: &e.org,
                        credential: &e.credential,
                        version: e.version,
                        agent: e.agent.as_deref(),
                        destination: e.destination.as_deref(),
                        outcome: &e.outcome,
                        layer: e.layer.map(Layer::as_str),
                        fingerprint: e.fingerprint.as_deref(),
                    };
                    // Strings and numbers only: serialising cannot fail.
                    if serde_json::to_writer(&mut buf, &line).is_ok() {
                        buf.push(b'\n');
                        n += 1;
                    }
                }
                match tx.try_send(ToThread::Lines(buf, n)) {
                    Ok(()) => 0,
                    Err(_) => n,
                }
            }
        }
    }

    /// Wait until everything handed over is written and flushed (on the
    /// writer's thread: it may block).
    pub(crate) fn flush(&mut self) {
        if let Output::Thread(tx) = self {
            let (done, wait) = tokio::sync::oneshot::channel();
            // A full channel: wait for room rather than skip the flush.
            if tx.send(ToThread::Flush(done)).is_ok() {
                let _ = wait.blocking_recv();
            }
        }
    }
}

trait Target: Send {
    /// Write one buffer of whole lines.
    fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
}

struct Stdout;

impl Target for Stdout {
    fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()> {
        std::io::stdout().lock().write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

/// A file rotated by size.
struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: std::io::BufWriter<std::fs::File>,
    size: u64,
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

impl Rotating {
    fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Rotating> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Rotating { path: path.to_path_buf(), max_bytes, keep, file: std::io::BufWriter::new(file), size })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = std::io::BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

impl Target for Rotating {
    fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()> {
        for line in buf.split_inclusive(|b| *b == b'\n') {
            let len = line.len() as u64;
            if self.size > 0 && self.size + len > self.max_bytes {
                self.rotate()?;
            }
            self.file.write_all(line)?;
            self.size += len;
        }
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn run(mut target: Box<dyn Target>, rx: std::sync::mpsc::Receiver<ToThread>) {
    let mut failing = false;
    let mut report = |r: std::io::Result<()>, lost: u64| match r {
        Ok(()) => failing = false,
        Err(e) => {
            if !failing {
                tracing::error!(error = %e, lines = lost, "the audit sink cannot write; use events are being lost from it (the counts in the store are exact)");
            }
            failing = true;
        }
    };
    while let Ok(msg) = rx.recv() {
        match msg {
            ToThread::Lines(buf, n) => {
                let r = target.write_lines(&buf);
                report(r, n);
                // One buffer is one writer round (a batch): flushing after
                // each is one write per batch, and no line is kept back.
                let r = target.flush();
                report(r, 0);
            }
            ToThread::Flush(done) => {
                let r = target.flush();
                report(r, 0);
                let _ = done.send(());
            }
        }
    }
    let _ = target.flush();
}
