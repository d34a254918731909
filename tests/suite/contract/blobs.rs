use maof::domain::{CallId, TaskId, TenantId};
use maof::ports::BlobKey;
use maof_tests::backends::Backend;

use super::on_both_backends;

async fn a_blob_reads_back_whole_and_a_missing_one_is_none(b: Backend) {
    let tenant = TenantId::parse("acme").unwrap();
    let task = TaskId::new();
    let key = BlobKey::call_output(&tenant, task, CallId::new());
    // A mebibyte of UTF-8 that is not all ASCII.
    let body: Vec<u8> = "é0123456789".repeat(100_000).into_bytes();
    b.blobs.put(&key, body.clone()).await.unwrap();
    assert_eq!(
        b.blobs.get(&key).await.unwrap(),
        Some(body.clone()),
        "{}",
        b.name
    );
    // A retried write of the same key replaces it.
    b.blobs.put(&key, b"again".to_vec()).await.unwrap();
    assert_eq!(
        b.blobs.get(&key).await.unwrap().as_deref(),
        Some(&b"again"[..])
    );
    let missing = BlobKey::task_output(&tenant, task);
    assert_eq!(b.blobs.get(&missing).await.unwrap(), None, "{}", b.name);
}

async fn a_stored_key_must_belong_to_the_tenant(b: Backend) {
    let acme = TenantId::parse("acme").unwrap();
    let acmeco = TenantId::parse("acmeco").unwrap();
    let key = BlobKey::task_output(&acme, TaskId::new());
    assert!(BlobKey::stored(&acme, key.as_str()).is_some(), "{}", b.name);
    assert!(
        BlobKey::stored(&acmeco, key.as_str()).is_none(),
        "a tenant whose name extends another's gets none of its keys"
    );
    assert!(BlobKey::stored(&TenantId::parse("globex").unwrap(), key.as_str()).is_none());
}

on_both_backends!(
    a_blob_reads_back_whole_and_a_missing_one_is_none,
    a_stored_key_must_belong_to_the_tenant,
);
