//! The control channel between the launcher and the daemon it spawned, and the
//! framing shared with the admin socket.
//!
//! The launcher creates a Unix socketpair and hands one end to the daemon as
//! the descriptor named by [`CONTROL_FD_ENV`]. Frames are newline-delimited
//! JSON, at most [`MAX_FRAME`] bytes, each one message typed here. The daemon
//! speaks first ([`FromDaemon::Hello`]) and says [`FromDaemon::Ready`] once it
//! serves HTTP; the launcher may then ping, ask for status, or order a
//! shutdown with a deadline. When the launcher's end closes, the daemon treats
//! it as an order to shut down: a daemon never outlives its supervisor's channel.
//!
//! Before an upgrade stops it, the launcher may ask the daemon to hold its
//! checkpoints ([`FromLauncher::HoldCheckpoints`]): from then until it exits,
//! SQLite's main database file does not change — every write goes to the WAL —
//! so the launcher copies the main file while the daemon still serves, and
//! only the WAL inside the downtime (SPEC §12).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the messages below; both sides send it in their first frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// Environment variable naming the daemon's end of the control socketpair.
pub const CONTROL_FD_ENV: &str = "WAIAAS_CONTROL_FD";

/// Descriptor number the launcher places the daemon's end at (after the listener at 3).
pub const CONTROL_FD: i32 = 4;

/// Environment variable naming a socket over which the public listener will
/// arrive (`listen_fds::send_listener`). Its presence starts the daemon on
/// probation: the listener at fd 3 is then a private probe listener, and the
/// public port is served only once the launcher has committed (SPEC §13).
pub const PUBLIC_CHANNEL_FD_ENV: &str = "WAIAAS_PUBLIC_CHANNEL_FD";

/// Where the supervisor places that socket (after the control channel).
pub const PUBLIC_CHANNEL_FD: i32 = 5;

/// Largest frame either side accepts, newline included.
pub const MAX_FRAME: usize = 64 * 1024;

/// Daemon → launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromDaemon {
    /// First frame, sent at process start.
    Hello {
        protocol: u32,
        version: String,
        pid: u32,
        /// Understands [`FromLauncher::HoldCheckpoints`] (absent from older daemons).
        #[serde(default)]
        holds_checkpoints: bool,
        /// Started on probation: serving only the probe listener until the
        /// public one is handed over (absent from older daemons).
        #[serde(default)]
        probation: bool,
    },
    /// The database is ready and HTTP is being served.
    Ready { schema_version: u32 },
    /// Answer to [`FromLauncher::Ping`].
    Pong { seq: u64 },
    /// Answer to [`FromLauncher::Status`].
    Status {
        version: String,
        schema_version: u32,
        uptime: u64,
        /// Client writes committed since start (absent from older daemons).
        #[serde(default)]
        writes: Option<u64>,
    },
    /// The daemon is shutting down (ordered, or on a signal).
    Stopping { reason: String },
    /// Answer to [`FromLauncher::HoldCheckpoints`]: the WAL is folded in and
    /// the main file stays as it is until the process exits.
    CheckpointsHeld,
    /// Answer to [`FromLauncher::HoldCheckpoints`] when they could not be held.
    CheckpointsNotHeld { reason: String },
}

/// Launcher → daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromLauncher {
    Ping {
        seq: u64,
    },
    Status,
    /// Stop accepting, finish in-flight requests within `deadline_secs`, exit 0.
    Shutdown {
        deadline_secs: u64,
    },
    /// Fold the WAL into the main file once, then checkpoint no more until
    /// exit, not even when closing the database.
    HoldCheckpoints,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("control frame is larger than {MAX_FRAME} bytes")]
    TooLarge,
    #[error("control frame is not a valid message: {0}")]
    Malformed(String),
    #[error("control channel I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame; `Ok(None)` at a clean end of stream. After
/// [`FrameError::TooLarge`] the rest of that line has been discarded, so the
/// stream stays usable.
pub async fn read_frame<T, R>(reader: &mut R) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncBufRead + Unpin,
{
    let mut line = Vec::new();
    let mut too_large = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return match (too_large, line.is_empty()) {
                (true, _) => Err(FrameError::TooLarge),
                (false, true) => Ok(None),
                (false, false) => Err(FrameError::Malformed("truncated frame".into())),
            };
        }
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let used = chunk.len();
        if !too_large {
            if line.len() + used > MAX_FRAME {
                // Keep reading to the newline without storing it.
                too_large = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if found {
            break;
        }
    }
    if too_large {
        return Err(FrameError::TooLarge);
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// One frame's bytes: the message as JSON and its newline.
pub fn encode<T: Serialize>(message: &T) -> std::io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes one frame and flushes it.
pub async fn write_frame<T, W>(writer: &mut W, message: &T) -> std::io::Result<()>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    writer.write_all(&encode(message)?).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn frames(input: &[u8]) -> Vec<Result<Option<FromLauncher>, String>> {
        let mut reader = BufReader::with_capacity(1024, input);
        let mut out = Vec::new();
        for _ in 0..10 {
            let frame = read_frame::<FromLauncher, _>(&mut reader).await;
            let end = matches!(frame, Ok(None));
            out.push(frame.map_err(|e| e.to_string()));
            if end {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &FromLauncher::Shutdown { deadline_secs: 30 })
            .await
            .unwrap();
        write_frame(&mut buf, &FromLauncher::Ping { seq: 7 })
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(buf.clone()).unwrap(),
            "{\"type\":\"shutdown\",\"deadline_secs\":30}\n{\"type\":\"ping\",\"seq\":7}\n"
        );
        let got = frames(&buf).await;
        assert_eq!(
            got,
            [
                Ok(Some(FromLauncher::Shutdown { deadline_secs: 30 })),
                Ok(Some(FromLauncher::Ping { seq: 7 })),
                Ok(None)
            ]
        );
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_are_errors_and_the_stream_goes_on() {
        let mut input = b"not json\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_FRAME * 3));
        input.extend(b"\n{\"type\":\"status\"}\n{\"type\":\"ping\"");
        let got = frames(&input).await;
        assert!(got[0].as_ref().unwrap_err().contains("not a valid message"));
        assert!(got[1].as_ref().unwrap_err().contains("larger than"));
        assert_eq!(got[2], Ok(Some(FromLauncher::Status)));
        assert!(got[3].as_ref().unwrap_err().contains("truncated"));
    }
}
