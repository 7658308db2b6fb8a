//! Events go out from a bounded queue drained by a couple of publishers, as client-go's event
//! broadcaster does: a reconcile never waits for an Event, and during a burst (thousands of new
//! SmartClients) Events trail behind instead of competing with the Secret and status writes users wait
//! for. When the queue is full an Event is dropped (and counted in the log at debug level): Events are
//! best effort, status conditions are the record.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;
use tracing::debug;

/// Events waiting to be published at most; client-go keeps 1000 too.
const QUEUE_CAPACITY: usize = 1000;
/// Events published at once.
const PUBLISHERS: usize = 2;

/// The sending side; cheap to share.
pub struct EventQueue {
    sender: mpsc::Sender<(Event, ObjectReference)>,
}

impl EventQueue {
    /// Starts the publishers on the current Tokio runtime. They stop when the queue is dropped.
    pub fn start(recorder: Recorder) -> Self {
        let (sender, mut receiver) = mpsc::channel::<(Event, ObjectReference)>(QUEUE_CAPACITY);
        tokio::spawn(async move {
            futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
                .for_each_concurrent(PUBLISHERS, |(event, reference)| {
                    let recorder = recorder.clone();
                    async move {
                        // A terminating namespace refuses Events; that is no reason to retry.
                        if let Err(e) = recorder.publish(&event, &reference).await {
                            debug!(error = %e, reason = %event.reason, "could not publish event");
                        }
                    }
                })
                .await;
        });
        Self { sender }
    }

    /// Queues an Event about `reference`; never waits.
    pub fn publish(&self, event: Event, reference: ObjectReference) {
        if let Err(e) = self.sender.try_send((event, reference)) {
            debug!(error = %e, "event queue full or closed; dropping an event");
        }
    }
}
