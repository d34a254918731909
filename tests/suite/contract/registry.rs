use maof::domain::{AgentId, AgentSpec, Owner, PlatformAgents, TenantId, TenantSettings};
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

fn tenant(t: &str) -> Owner {
    Owner::Tenant(TenantId::parse(t).unwrap())
}

async fn a_put_with_a_stale_version_is_refused(b: Backend) {
    let acme = tenant("acme");
    let id = AgentId::parse("gpt-mini").unwrap();
    let v1 = b
        .registry
        .put(&acme, &id, spec("v1"), Expect::Absent, None)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.owner, acme);
    assert_eq!(
        b.registry.get(&acme, &id).await.unwrap(),
        Some(v1.clone()),
        "{}",
        b.name
    );

    let again = b
        .registry
        .put(&acme, &id, spec("dup"), Expect::Absent, None)
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists)),
        "{}: {again:?}",
        b.name
    );

    let v2 = b
        .registry
        .put(&acme, &id, spec("v2"), Expect::Version(1), None)
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let stale = b
        .registry
        .put(&acme, &id, spec("stale"), Expect::Version(1), None)
        .await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { current: Some(2) })),
        "{}: {stale:?}",
        b.name
    );
    assert_eq!(
        b.registry.get(&acme, &id).await.unwrap().unwrap().spec.name,
        "v2"
    );

    let forced = b
        .registry
        .put(&acme, &id, spec("v3"), Expect::Any, None)
        .await
        .unwrap();
    assert_eq!(forced.version, 3);
}

async fn agents_list_in_id_order_and_delete_checks_the_version(b: Backend) {
    let acme = tenant("acme");
    for id in ["b-agent", "a-agent", "c-agent"] {
        b.registry
            .put(
                &acme,
                &AgentId::parse(id).unwrap(),
                spec(id),
                Expect::Absent,
                None,
            )
            .await
            .unwrap();
    }
    let ids: Vec<String> = b
        .registry
        .list(&acme)
        .await
        .unwrap()
        .iter()
        .map(|a| a.id.to_string())
        .collect();
    assert_eq!(ids, ["a-agent", "b-agent", "c-agent"], "{}", b.name);

    let a = AgentId::parse("a-agent").unwrap();
    let stale = b.registry.delete(&acme, &a, Expect::Version(7), None).await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { current: Some(1) })),
        "{}: {stale:?}",
        b.name
    );
    b.registry
        .delete(&acme, &a, Expect::Version(1), None)
        .await
        .unwrap();
    assert!(b.registry.get(&acme, &a).await.unwrap().is_none());
    let missing = b.registry.delete(&acme, &a, Expect::Any, None).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound)),
        "{}: {missing:?}",
        b.name
    );
    assert_eq!(b.registry.list(&acme).await.unwrap().len(), 2);
}

/// One id under three owners is three agents: none reads, lists, replaces
/// or deletes another's.
async fn owners_never_see_each_others_agents(b: Backend) {
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let id = AgentId::parse("shared-name").unwrap();
    for (owner, name) in [
        (&acme, "acme's"),
        (&globex, "globex's"),
        (&Owner::Platform, "platform's"),
    ] {
        b.registry
            .put(owner, &id, spec(name), Expect::Absent, None)
            .await
            .unwrap_or_else(|e| panic!("{}: {owner}: {e}", b.name));
    }
    for (owner, name) in [
        (&acme, "acme's"),
        (&globex, "globex's"),
        (&Owner::Platform, "platform's"),
    ] {
        let read = b.registry.get(owner, &id).await.unwrap().unwrap();
        assert_eq!(read.spec.name, name, "{}", b.name);
        assert_eq!(&read.owner, owner, "{}", b.name);
        let listed = b.registry.list(owner).await.unwrap();
        assert_eq!(listed.len(), 1, "{}: {owner}", b.name);
        assert_eq!(listed[0].spec.name, name, "{}", b.name);
    }
    // A tenant with no agents lists none (not the others', not the platform's).
    assert!(
        b.registry
            .list(&tenant("initech"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.registry
            .get(&tenant("initech"), &id)
            .await
            .unwrap()
            .is_none()
    );
    b.registry
        .delete(&acme, &id, Expect::Any, None)
        .await
        .unwrap();
    assert!(b.registry.get(&globex, &id).await.unwrap().is_some());
    assert!(
        b.registry
            .get(&Owner::Platform, &id)
            .await
            .unwrap()
            .is_some()
    );
}

async fn tenant_settings_are_versioned_and_per_tenant(b: Backend) {
    let acme = TenantId::parse("acme").unwrap();
    assert!(b.registry.settings(&acme).await.unwrap().is_none());
    let all = TenantSettings {
        platform_agents: Some(PlatformAgents::All),
        ..TenantSettings::default()
    };
    let v1 = b
        .registry
        .put_settings(&acme, &all, Expect::Absent, None)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(
        b.registry.settings(&acme).await.unwrap(),
        Some(v1.clone()),
        "{}",
        b.name
    );
    let again = b
        .registry
        .put_settings(&acme, &all, Expect::Absent, None)
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists)),
        "{}: {again:?}",
        b.name
    );
    // With every section: the stored form round-trips.
    let none = TenantSettings {
        platform_agents: Some(PlatformAgents::none()),
        rate_limits: Some(
            serde_json::from_value(json!({"rpm": 10, "per_subject": {"tpm": 5}})).unwrap(),
        ),
        budgets: Some(
            serde_json::from_value(json!({"daily_usd": "50", "monthly_usd": 1000})).unwrap(),
        ),
        filters: Some(
            serde_json::from_value(json!({"pii": {"mode": "block", "kinds": ["card"]},
                "block": [{"name": "no-secrets", "pattern": "(?i)password\\s*="}]}))
            .unwrap(),
        ),
        own: serde_json::from_value(json!({"rate_limits": {"rpm": 5},
            "budgets": {"daily_usd": "12.5"},
            "filters": {"pii": {"mode": "redact", "kinds": ["email"]}, "apply_to": ["output"]}}))
        .unwrap(),
    };
    let stale = b
        .registry
        .put_settings(&acme, &none, Expect::Version(7), None)
        .await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { current: Some(1) })),
        "{}: {stale:?}",
        b.name
    );
    let v2 = b
        .registry
        .put_settings(&acme, &none, Expect::Version(1), None)
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(
        b.registry.settings(&acme).await.unwrap().unwrap().value,
        none
    );
    let globex = TenantId::parse("globex").unwrap();
    assert!(b.registry.settings(&globex).await.unwrap().is_none());
}

on_both_backends!(
    a_put_with_a_stale_version_is_refused,
    agents_list_in_id_order_and_delete_checks_the_version,
    owners_never_see_each_others_agents,
    tenant_settings_are_versioned_and_per_tenant,
);
