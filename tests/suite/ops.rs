//! AWS API operations per task, on moto, held to the ceilings kept in one
//! place (`maof::metering::CEILINGS`).

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_per_task_stay_under_their_ceilings() {
    let config = maof_tests::moto::sdk_config().await;
    let rows = maof::metering::measure(&config, 5)
        .await
        .unwrap_or_else(|e| panic!("measuring on moto: {e}"));
    assert_eq!(rows.len(), maof::metering::CEILINGS.len());
    for row in rows {
        assert!(
            row.per_task <= row.ceiling.max_ops,
            "{}: {:.2} operations per task, over its ceiling of {}: {:#?}",
            row.ceiling.name,
            row.per_task,
            row.ceiling.max_ops,
            row.by_op
        );
        // Fewer than the ceiling is fine, but a count of zero means nothing was measured.
        assert!(row.per_task > 0.0, "{}: nothing counted", row.ceiling.name);
    }
}
