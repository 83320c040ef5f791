//! How strait's processes log: a [`crate::check_log_filter`] filter, and
//! `STRAIT_LOG_FORMAT`: `text` (the default, human-readable lines) or `json`
//! (one JSON object a line, with `timestamp`, `level`, `fields` and span
//! context, for log pipelines), both through tracing-subscriber.

use tracing_subscriber::fmt::MakeWriter;

/// The variable that picks the format, for every strait process.
pub const LOG_FORMAT: &str = "STRAIT_LOG_FORMAT";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// `text` or `json`; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// How text lines look.
#[derive(Clone, Copy, Debug)]
pub struct TextStyle {
    /// Colours, for a terminal.
    pub ansi: bool,
    /// The module each event comes from.
    pub target: bool,
}

/// Installs the process' subscriber: events `filter` lets through, written
/// to `writer` as `format` (text in `style`).
pub fn init<W>(filter: &str, format: LogFormat, writer: W, style: TextStyle) -> Result<(), String>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    crate::check_log_filter(filter)?;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(style.ansi).with_target(style.target).try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_name_themselves() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(LogFormat::parse(format.as_str()), Ok(format));
        }
        assert!(LogFormat::parse("yaml").is_err());
    }

    #[test]
    fn json_lines_are_json() {
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let written = lines.clone();
        let style = TextStyle {
            ansi: false,
            target: false,
        };
        init("info", LogFormat::Json, move || written.clone(), style).unwrap();
        tracing::info!(identity = "spiffe://cluster.local/ns/a/sa/b", "certificate obtained");
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["level"], "INFO", "{text}");
        assert_eq!(line["fields"]["message"], "certificate obtained");
        assert_eq!(line["fields"]["identity"], "spiffe://cluster.local/ns/a/sa/b");
    }
}
