//! Kryten-Robot's stored room state: it keeps each channel's playlist and user list in
//! JetStream key-value buckets (`kryten_{channel}_playlist` keys `current` and `items`,
//! `kryten_{channel}_userlist` key `users`; the channel name verbatim, wire reference
//! §4.4). Reading them at start and after a reconnect means the bot knows what is
//! playing and who moderates before the next event says so. A server without JetStream,
//! or a channel without buckets, is normal: the read gives nothing and the room fills
//! from events. The values are handed to the engine raw; it parses them.

use std::time::Duration;

use async_nats::jetstream;
use chatbot_core::{Millis, RoomSnapshot};

/// The longest one channel's read may take (a server that does not answer).
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads `channel`'s stored state; `None` when there is none (no JetStream, no buckets,
/// no keys) or the server did not answer in time. `read_at`: when the read began.
pub async fn read(js: &jetstream::Context, channel: &str, read_at: Millis) -> Option<RoomSnapshot> {
    let read = async {
        let mut s = RoomSnapshot { channel: channel.to_owned(), read_at, current: None, items: None, users: None };
        if let Ok(kv) = js.get_key_value(format!("kryten_{channel}_playlist")).await {
            if let Some(e) = entry(&kv, "current").await {
                let written = Millis((e.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64);
                s.current = Some((e.value.to_vec(), written));
            }
            s.items = entry(&kv, "items").await.map(|e| e.value.to_vec());
        }
        if let Ok(kv) = js.get_key_value(format!("kryten_{channel}_userlist")).await {
            s.users = entry(&kv, "users").await.map(|e| e.value.to_vec());
        }
        s
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(s) if s.current.is_some() || s.items.is_some() || s.users.is_some() => Some(s),
        Ok(_) => None,
        Err(_) => {
            tracing::debug!(channel, "the robot's stored room state did not come in time");
            None
        }
    }
}

/// A live value of `key` (not a delete marker).
async fn entry(kv: &jetstream::kv::Store, key: &str) -> Option<jetstream::kv::Entry> {
    match kv.entry(key).await {
        Ok(Some(e)) if e.operation == jetstream::kv::Operation::Put => Some(e),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(bucket = %kv.name, key, error = %e, "cannot read the robot's stored room state");
            None
        }
    }
}
