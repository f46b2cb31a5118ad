//! Keeps a channel's messages in the order this node accepted them. Committing and
//! publishing happen under the channel's turn, so two concurrent posts to one channel
//! reach subscribers in the order of their ids. Channels share a fixed set of locks
//! (striped by id): bounded memory, nothing to prune, and unrelated channels rarely wait.

use tokio::sync::{Mutex, MutexGuard};

use crate::model::ChannelId;

const STRIPES: usize = 64;

pub struct Sequencer {
    stripes: Vec<Mutex<()>>,
}

impl Default for Sequencer {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl Sequencer {
    /// Waits for `channel`'s turn; the turn lasts as long as the guard.
    pub async fn turn(&self, channel: ChannelId) -> MutexGuard<'_, ()> {
        self.stripes[channel.rem_euclid(STRIPES as i64) as usize].lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_channel_waits_for_its_turn_while_others_do_not() {
        let sequencer = Sequencer::default();
        let held = sequencer.turn(3).await;
        let same = tokio::time::timeout(std::time::Duration::from_millis(50), sequencer.turn(3)).await;
        assert!(same.is_err(), "channel 3 must wait while its turn is held");
        let other = tokio::time::timeout(std::time::Duration::from_millis(50), sequencer.turn(4)).await;
        assert!(other.is_ok(), "channel 4 does not share channel 3's stripe");
        drop(held);
        assert!(sequencer.turn(-7).await.eq(&()), "negative ids map to a stripe too");
    }
}
