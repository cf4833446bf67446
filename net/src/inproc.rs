//! The in-process transport of a hybrid node: two bounded channels. Bounded so a stalled side applies
//! back-pressure instead of growing memory without limit.

use tokio::sync::mpsc;

use crate::{ComputeEnd, OrchestratorEnd};

/// Default depth of each direction.
pub const DEFAULT_CAPACITY: usize = 1024;

/// A connected pair of ends.
pub fn pair(capacity: usize) -> (OrchestratorEnd, ComputeEnd) {
    let (down_tx, down_rx) = mpsc::channel(capacity.max(1));
    let (up_tx, up_rx) = mpsc::channel(capacity.max(1));
    (
        OrchestratorEnd {
            tx: down_tx,
            rx: up_rx,
        },
        ComputeEnd {
            inbox: down_rx,
            outbox: up_tx,
        },
    )
}

#[cfg(test)]
mod tests {
    use caravel_model::wire::{ToCompute, ToOrchestrator};

    #[tokio::test]
    async fn messages_cross_the_pair_in_both_directions_in_order() {
        let (mut o, mut c) = super::pair(4);
        for seq in 1..=3 {
            o.tx.send(ToCompute::Ack { seq }).await.unwrap();
        }
        for seq in 1..=3 {
            assert_eq!(c.inbox.recv().await, Some(ToCompute::Ack { seq }));
        }
        c.outbox
            .send(ToOrchestrator::LogEnd {
                request_id: 7,
                error: String::new(),
            })
            .await
            .unwrap();
        assert!(matches!(
            o.rx.recv().await,
            Some(ToOrchestrator::LogEnd { request_id: 7, .. })
        ));
        drop(o);
        assert_eq!(c.inbox.recv().await, None, "closing one end ends the other");
    }
}
