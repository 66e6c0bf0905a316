//! The control channel and the admin socket: `control::read_frame` over every
//! message type either side reads, on one byte stream read to its end (a
//! malformed or oversized frame is an error and reading goes on, as the
//! supervisor and the daemon do). Each message that parses must encode and
//! read back as itself.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::BufReader;
use waiaas_shared::admin::{Envelope, Response};
use waiaas_shared::control::{FrameError, FromDaemon, FromLauncher, encode, read_frame};

/// Reads frames of `T` until the end of `data`; round-trips each one.
async fn read_all<T>(data: &[u8], capacity: usize)
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let mut reader = BufReader::with_capacity(capacity, data);
    // Every frame but the last ends in a newline, so this ends.
    for _ in 0..=data.len() {
        match read_frame::<T, _>(&mut reader).await {
            Ok(None) => return,
            Ok(Some(message)) => {
                let bytes = encode(&message).expect("a message encodes");
                let mut again = BufReader::new(&bytes[..]);
                let back = read_frame::<T, _>(&mut again).await;
                assert_eq!(back.ok().flatten().as_ref(), Some(&message));
            }
            Err(FrameError::Io(e)) => panic!("reading from memory failed: {e}"),
            Err(FrameError::TooLarge | FrameError::Malformed(_)) => {}
        }
    }
    panic!("read_frame did not reach the end of {} bytes", data.len());
}

fuzz_target!(|data: &[u8]| {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    });
    runtime.block_on(async {
        // A small buffer makes frames span several fills.
        let capacity = 1 + usize::from(data.first().copied().unwrap_or(0)) * 4;
        read_all::<FromDaemon>(data, capacity).await;
        read_all::<FromLauncher>(data, 8192).await;
        read_all::<Envelope>(data, capacity).await;
        read_all::<Response>(data, 8192).await;
    });
});
