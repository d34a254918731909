use std::collections::BTreeSet;
use std::time::Duration;

use maof::ports::{OutgoingMessage, QueueError, QueueName};
use maof_tests::backends::{Backend, MAX_RECEIVES};

use super::on_both_backends;

const NO_WAIT: Duration = Duration::ZERO;

async fn a_message_comes_back_after_its_visibility_timeout_unless_deleted(b: Backend) {
    let q = QueueName::Route;
    b.queue.send(q, OutgoingMessage::now("kept")).await.unwrap();
    b.queue
        .send(q, OutgoingMessage::now("deleted"))
        .await
        .unwrap();

    let first = b
        .queue
        .receive(q, 10, Duration::from_secs(1), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(first.len(), 2, "{}", b.name);
    assert!(first.iter().all(|m| m.receive_count == 1));
    let gone = first.iter().find(|m| m.body == "deleted").unwrap();
    b.queue.delete(q, &gone.receipt).await.unwrap();

    let hidden = b
        .queue
        .receive(q, 10, Duration::from_secs(1), NO_WAIT)
        .await
        .unwrap();
    assert!(
        hidden.is_empty(),
        "{}: in flight, not visible: {hidden:?}",
        b.name
    );

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = b
        .queue
        .receive(q, 10, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        1,
        "{}: only the undeleted message returns",
        b.name
    );
    assert_eq!(again[0].body, "kept");
    assert_eq!(again[0].receive_count, 2);
}

async fn a_message_received_too_often_lands_in_the_dlq(b: Backend) {
    let q = QueueName::AgentCall;
    b.queue
        .send(q, OutgoingMessage::now("poison"))
        .await
        .unwrap();
    for n in 1..=MAX_RECEIVES {
        let got = b
            .queue
            .receive(q, 1, Duration::from_millis(1000), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "{}: receive {n}", b.name);
        assert_eq!(got[0].receive_count, n);
        // Not deleted: the consumer failed. Release it at once for the next receive.
        b.queue
            .change_visibility(q, &got[0].receipt, Duration::ZERO)
            .await
            .unwrap();
    }
    let after = b
        .queue
        .receive(q, 1, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        after.is_empty(),
        "{}: no fourth delivery: {after:?}",
        b.name
    );
    let dead = b
        .queue
        .receive(
            QueueName::AgentCallDlq,
            10,
            Duration::from_secs(30),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{}: the message is in the DLQ", b.name);
    assert_eq!(dead[0].body, "poison");
}

async fn a_batch_of_many_messages_all_arrive_once(b: Backend) {
    let q = QueueName::Aggregate;
    let bodies: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    b.queue
        .send_batch(q, bodies.iter().map(OutgoingMessage::now).collect())
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let got = b
            .queue
            .receive(q, 10, Duration::from_secs(30), Duration::from_millis(200))
            .await
            .unwrap();
        for m in &got {
            assert!(
                seen.insert(m.body.clone()),
                "{}: {} delivered twice",
                b.name,
                m.body
            );
            b.queue.delete(q, &m.receipt).await.unwrap();
        }
        if seen.len() == bodies.len() {
            break;
        }
    }
    assert_eq!(
        seen,
        bodies.into_iter().collect::<BTreeSet<_>>(),
        "{}",
        b.name
    );
}

async fn a_delayed_message_is_hidden_until_its_delay(b: Backend) {
    let q = QueueName::Route;
    b.queue
        .send(
            q,
            OutgoingMessage {
                body: "later".into(),
                delay: Duration::from_secs(1),
            },
        )
        .await
        .unwrap();
    let early = b
        .queue
        .receive(q, 1, Duration::from_secs(30), NO_WAIT)
        .await
        .unwrap();
    assert!(early.is_empty(), "{}: delayed", b.name);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let later = b
        .queue
        .receive(q, 1, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(later.len(), 1, "{}", b.name);
}

async fn a_forged_receipt_is_refused(b: Backend) {
    let q = QueueName::Route;
    let bad = b.queue.delete(q, "not-a-receipt").await;
    assert!(
        matches!(
            bad,
            Err(QueueError::UnknownReceipt) | Err(QueueError::Backend(_))
        ),
        "{}: {bad:?}",
        b.name
    );
}

async fn a_message_over_256_kib_is_refused(b: Backend) {
    let q = QueueName::Aggregate;
    let limit = maof::ports::queue::MAX_MESSAGE_BYTES;
    assert_eq!(limit, 262_144);
    let refused = b
        .queue
        .send(q, OutgoingMessage::now("a".repeat(limit + 1)))
        .await;
    assert!(
        matches!(refused, Err(QueueError::MessageTooLarge { bytes }) if bytes == limit + 1),
        "{}: {refused:?}",
        b.name
    );
    let refused = b
        .queue
        .send_batch(
            q,
            vec![
                OutgoingMessage::now("small"),
                OutgoingMessage::now("b".repeat(limit + 1)),
            ],
        )
        .await;
    assert!(
        matches!(refused, Err(QueueError::MessageTooLarge { .. })),
        "{}: {refused:?}",
        b.name
    );
    // Exactly at the limit is accepted, and arrives whole.
    b.queue
        .send(q, OutgoingMessage::now("c".repeat(limit)))
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let got = b
            .queue
            .receive(q, 10, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap();
        bodies.extend(got.into_iter().map(|m| m.body.len()));
    }
    assert!(bodies.contains(&limit), "{}: {bodies:?}", b.name);
}

on_both_backends!(
    a_message_over_256_kib_is_refused,
    a_message_comes_back_after_its_visibility_timeout_unless_deleted,
    a_message_received_too_often_lands_in_the_dlq,
    a_batch_of_many_messages_all_arrive_once,
    a_delayed_message_is_hidden_until_its_delay,
    a_forged_receipt_is_refused,
);
