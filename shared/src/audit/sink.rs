//! The optional copy of the audit log for log shippers: every sealed entry as
//! one JSON line, in chain order, on stdout or appended to a file.

use tokio::io::AsyncWriteExt;

use crate::config::AuditSink;

impl AuditSink {
    /// Written before the seals commit, so a crash repeats lines (with the
    /// same `seq`) rather than losing them.
    pub async fn write(&self, lines: &str) -> std::io::Result<()> {
        match self {
            AuditSink::Stdout => {
                let mut out = tokio::io::stdout();
                out.write_all(lines.as_bytes()).await?;
                out.flush().await
            }
            AuditSink::File(path) => {
                // Opened per batch so a rotated file is picked up without a restart.
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?;
                file.write_all(lines.as_bytes()).await?;
                file.sync_data().await
            }
        }
    }
}
