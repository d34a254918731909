use maof::domain::{AgentId, AgentSpec};
use maof::ports::{Expect, StoreError};
use maof_tests::backends::Backend;
use serde_json::json;

use super::on_both_backends;

fn spec(name: &str) -> AgentSpec {
    serde_json::from_value(json!({
        "name": name,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "secret": "maof/openai",
        "capabilities": ["text", "code"],
        "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.60, "cached_input_per_mtok": 0.075},
        "constraints": {"max_tokens": 8192, "context_window": 128000, "rpm": 100, "timeout_ms": 30000},
        "quality": 0.8
    }))
    .unwrap()
}

async fn a_put_with_a_stale_version_is_refused(b: Backend) {
    let id = AgentId::parse("gpt-mini").unwrap();
    let v1 = b
        .registry
        .put(&id, spec("v1"), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(
        b.registry.get(&id).await.unwrap(),
        Some(v1.clone()),
        "{}",
        b.name
    );

    let again = b.registry.put(&id, spec("dup"), Expect::Absent).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists)),
        "{}: {again:?}",
        b.name
    );

    let v2 = b
        .registry
        .put(&id, spec("v2"), Expect::Version(1))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let stale = b.registry.put(&id, spec("stale"), Expect::Version(1)).await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { current: Some(2) })),
        "{}: {stale:?}",
        b.name
    );
    assert_eq!(b.registry.get(&id).await.unwrap().unwrap().spec.name, "v2");

    let forced = b.registry.put(&id, spec("v3"), Expect::Any).await.unwrap();
    assert_eq!(forced.version, 3);
}

async fn agents_list_in_id_order_and_delete_checks_the_version(b: Backend) {
    for id in ["b-agent", "a-agent", "c-agent"] {
        b.registry
            .put(&AgentId::parse(id).unwrap(), spec(id), Expect::Absent)
            .await
            .unwrap();
    }
    let ids: Vec<String> = b
        .registry
        .list()
        .await
        .unwrap()
        .iter()
        .map(|a| a.id.to_string())
        .collect();
    assert_eq!(ids, ["a-agent", "b-agent", "c-agent"], "{}", b.name);

    let a = AgentId::parse("a-agent").unwrap();
    let stale = b.registry.delete(&a, Expect::Version(7)).await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { current: Some(1) })),
        "{}: {stale:?}",
        b.name
    );
    b.registry.delete(&a, Expect::Version(1)).await.unwrap();
    assert!(b.registry.get(&a).await.unwrap().is_none());
    let missing = b.registry.delete(&a, Expect::Any).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound)),
        "{}: {missing:?}",
        b.name
    );
    assert_eq!(b.registry.list().await.unwrap().len(), 2);
}

on_both_backends!(
    a_put_with_a_stale_version_is_refused,
    agents_list_in_id_order_and_delete_checks_the_version,
);
