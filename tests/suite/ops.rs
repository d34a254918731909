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

/// Storage write units per task (metered on the memory backend's layout,
/// as DynamoDB bills them), held to the same table's ceilings; and the
/// request's content is written once, not on every transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_units_per_task_stay_under_their_ceilings_and_content_is_written_once() {
    let small = maof::metering::measure_units(5, 2_000)
        .await
        .unwrap_or_else(|e| panic!("metering: {e}"));
    for row in &small {
        assert!(
            row.write_units <= f64::from(row.ceiling.max_write_units),
            "{}: {:.2} write units per task, over its ceiling of {}",
            row.ceiling.name,
            row.write_units,
            row.ceiling.max_write_units
        );
        assert!(row.write_units > 0.0 && row.read_units > 0.0, "{row:?}");
    }
    let large = maof::metering::measure_units(2, 200_000)
        .await
        .unwrap_or_else(|e| panic!("metering: {e}"));
    for (big, row) in large.iter().zip(&small) {
        // 200 KB is about 196 units once; every rewrite would add as many.
        let once: f64 = 200_000.0 / 1024.0;
        assert!(
            big.write_units <= once.ceil() + row.write_units,
            "{}: {:.0} write units for a 200 KB request: the content is written more than once",
            big.ceiling.name,
            big.write_units
        );
    }
}
