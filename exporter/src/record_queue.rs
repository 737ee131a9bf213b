//! The bounded queue of input records between an input (the synthetic
//! source of `exporter stream`, the relay's listeners) and the pool user's
//! loop (`crate::stream`).
//!
//! Records travel in batches: one router message's records, or a run of
//! synthetic ones. A channel operation per record (a semaphore permit, a
//! slot in tokio's block list, a wake-up) cost the billing stream more
//! than a third of its exporter CPU once records no longer allocated; per
//! batch it is negligible. The bound stays in records (`queue_records`):
//! a batch takes room for each of its records, and gives it back when the
//! loop takes the batch out.

use std::sync::Arc;

use tokio::sync::{Semaphore, TryAcquireError, mpsc};

use crate::stream::InputRecord;

/// Records handed over together, in order.
pub type InputBatch = Vec<InputRecord>;

/// A queue of at most `capacity` records (at least 1). A batch larger than
/// the whole queue waits for an empty queue, then goes in alone.
pub fn record_queue(capacity: usize) -> (RecordSender, RecordReceiver) {
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let room = Arc::new(Semaphore::new(capacity));
    let (batches, rx) = mpsc::unbounded_channel();
    (
        RecordSender {
            batches,
            room: Arc::clone(&room),
            capacity,
        },
        RecordReceiver { batches: rx, room },
    )
}

/// Why [`RecordSender::try_send`] did not take a batch; the batch comes
/// back.
#[derive(Debug)]
pub enum TrySendError {
    /// No room for the whole batch now.
    Full(InputBatch),
    /// The receiver is gone (the pool user stopped).
    Closed(InputBatch),
}

/// The input's end; clone it for several inputs.
#[derive(Debug, Clone)]
pub struct RecordSender {
    batches: mpsc::UnboundedSender<(InputBatch, u32)>,
    room: Arc<Semaphore>,
    capacity: usize,
}

impl RecordSender {
    /// Queues `batch`, waiting for room; `Err` gives it back when the
    /// receiver is gone.
    pub async fn send(&self, batch: InputBatch) -> Result<(), InputBatch> {
        if batch.is_empty() {
            return Ok(());
        }
        let permits = self.permits_for(&batch);
        match self.room.acquire_many(permits).await {
            Ok(taken) => taken.forget(),
            Err(_) => return Err(batch),
        }
        self.batches
            .send((batch, permits))
            .map_err(|returned| returned.0.0)
    }

    /// Queues `batch` if there is room for it now.
    pub fn try_send(&self, batch: InputBatch) -> Result<(), TrySendError> {
        if batch.is_empty() {
            return Ok(());
        }
        let permits = self.permits_for(&batch);
        match self.room.try_acquire_many(permits) {
            Ok(taken) => taken.forget(),
            Err(TryAcquireError::NoPermits) => return Err(TrySendError::Full(batch)),
            Err(TryAcquireError::Closed) => return Err(TrySendError::Closed(batch)),
        }
        self.batches
            .send((batch, permits))
            .map_err(|returned| TrySendError::Closed(returned.0.0))
    }

    fn permits_for(&self, batch: &InputBatch) -> u32 {
        batch.len().min(self.capacity) as u32
    }
}

/// The pool user's end.
#[derive(Debug)]
pub struct RecordReceiver {
    batches: mpsc::UnboundedReceiver<(InputBatch, u32)>,
    room: Arc<Semaphore>,
}

impl RecordReceiver {
    /// The next batch; `None` once every sender is gone and the queue is
    /// empty.
    pub async fn recv(&mut self) -> Option<InputBatch> {
        let (batch, permits) = self.batches.recv().await?;
        self.room.add_permits(permits as usize);
        Some(batch)
    }

    /// The next batch if one is queued.
    pub fn try_recv(&mut self) -> Option<InputBatch> {
        let (batch, permits) = self.batches.try_recv().ok()?;
        self.room.add_permits(permits as usize);
        Some(batch)
    }
}

impl Drop for RecordReceiver {
    /// Senders waiting for room learn at once that nobody will take it.
    fn drop(&mut self) {
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::RecordClass;

    fn batch(first: u8, count: u8) -> InputBatch {
        (first..first + count)
            .map(|n| InputRecord {
                domain: 1,
                template_id: 256,
                bytes: [n][..].into(),
                class: RecordClass::Billing,
            })
            .collect()
    }

    fn numbers(batch: &InputBatch) -> Vec<u8> {
        batch.iter().map(|r| r.bytes[0]).collect()
    }

    /// The bound counts records, not batches: 10 records of room take a
    /// batch of 6, refuse a second 6 (it comes back whole), and take it
    /// once the first is received. Order is kept.
    #[tokio::test]
    async fn room_is_counted_in_records_and_given_back_on_receive() {
        let (tx, mut rx) = record_queue(10);
        tx.try_send(batch(0, 6)).unwrap();
        let refused = match tx.try_send(batch(6, 6)) {
            Err(TrySendError::Full(refused)) => refused,
            other => panic!("expected Full, got {other:?}"),
        };
        assert_eq!(numbers(&refused), [6, 7, 8, 9, 10, 11]);
        tx.try_send(batch(6, 4)).unwrap();
        assert_eq!(numbers(&rx.recv().await.unwrap()), [0, 1, 2, 3, 4, 5]);
        tx.try_send(batch(10, 6)).unwrap();
        assert_eq!(numbers(&rx.try_recv().unwrap()), [6, 7, 8, 9]);
        assert_eq!(numbers(&rx.try_recv().unwrap()), [10, 11, 12, 13, 14, 15]);
        assert!(rx.try_recv().is_none());
    }

    /// A waiting sender goes on when room comes back; a batch bigger than
    /// the queue goes in once the queue is empty.
    #[tokio::test]
    async fn a_waiting_sender_goes_on_when_room_comes_back() {
        let (tx, mut rx) = record_queue(4);
        tx.send(batch(0, 4)).await.unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(batch(4, 9)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room: the sender must wait");
        assert_eq!(rx.recv().await.unwrap().len(), 4);
        waiting.await.unwrap().unwrap();
        assert_eq!(
            numbers(&rx.recv().await.unwrap()),
            [4, 5, 6, 7, 8, 9, 10, 11, 12]
        );
    }

    /// Without a receiver a sender gets its batch back, waiting or not,
    /// and the receiver sees the end once every sender is gone.
    #[tokio::test]
    async fn senders_and_receiver_see_each_other_go() {
        let (tx, rx) = record_queue(2);
        tx.send(batch(0, 2)).await.unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(batch(2, 1)).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(numbers(&waiting.await.unwrap().unwrap_err()), [2]);
        assert!(matches!(
            tx.try_send(batch(3, 1)),
            Err(TrySendError::Closed(_))
        ));

        let (tx, mut rx) = record_queue(2);
        tx.send(batch(0, 1)).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.unwrap().len(), 1);
        assert!(rx.recv().await.is_none());
    }
}
