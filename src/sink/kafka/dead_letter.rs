//! The dead-letter file: trace revisions the broker refused for good, one JSON line each, so
//! that nothing accepted is silently lost and an operator can send them again.
//!
//! ```json
//! {"time":"2026-11-21T10:00:00.123Z","topic":"mlflow-traces","error":"Broker: Topic authorization failed",
//!  "key":"tr-5b8e…","headers":{"content-type":"application/json","encoding":"mlflow-json",…},
//!  "value_base64":"eyJpbmZvIjp7…"}
//! ```
//!
//! `value_base64` is the whole value (parts joined). Each line is fsynced before the revision
//! counts as handled.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::Serialize;

use super::message::Message;

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    topic: &'a str,
    error: &'a str,
    key: &'a str,
    headers: serde_json::Map<String, serde_json::Value>,
    value_base64: String,
}

/// Appends refused revisions to a JSON-lines file.
#[derive(Clone, Debug)]
pub struct DeadLetterFile {
    path: Arc<PathBuf>,
}

impl DeadLetterFile {
    /// Creates the file's directory.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self {
            path: Arc::new(path),
        })
    }

    /// Where lines go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `message` with why `topic` refused it, and syncs the file.
    ///
    /// # Errors
    ///
    /// When the file cannot be written or synced.
    pub fn write(&self, message: &Message, topic: &str, error: &str) -> std::io::Result<()> {
        let value: Vec<u8> = message.parts.concat();
        let line = Line {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            topic,
            error,
            key: &message.key,
            headers: message
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone().into()))
                .collect(),
            value_base64: base64::engine::general_purpose::STANDARD.encode(value),
        };
        let mut text = serde_json::to_vec(&line).expect("dead-letter lines serialize");
        text.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*self.path)?;
        file.write_all(&text)?;
        file.sync_data()
    }
}
