//! `maof bootstrap` on moto creates exactly what template.yaml declares.

use std::collections::{BTreeSet, HashMap};

use maof::adapters::aws::template::{TEMPLATE, TemplateShape};
use maof::adapters::aws::{Bootstrap, ResourceNames};
use maof::ports::QueueName;

#[tokio::test]
async fn bootstrap_creates_exactly_the_resources_the_template_declares() {
    let config = maof_tests::moto::sdk_config().await;
    let prefix = format!("b{}", ulid::Ulid::new().to_string().to_lowercase());
    let names = ResourceNames::with_prefix(&prefix);
    let bootstrap = Bootstrap::new(&config, names.clone());
    let urls = bootstrap.ensure_all().await.unwrap();
    // Running it again changes nothing and fails nothing.
    assert_eq!(bootstrap.ensure_all().await.unwrap(), urls);
    assert_eq!(urls.len(), QueueName::ALL.len());

    let shape = TemplateShape::parse(
        TEMPLATE,
        &HashMap::from([("Prefix".to_owned(), prefix.clone())]),
    )
    .unwrap();
    let declared_tables: BTreeSet<String> = shape.tables.iter().map(|t| t.name.clone()).collect();
    let declared_queues: BTreeSet<String> = shape.queues.iter().map(|q| q.name.clone()).collect();

    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let tables: BTreeSet<String> = dynamodb
        .list_tables()
        .send()
        .await
        .unwrap()
        .table_names
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.starts_with(&format!("{prefix}-")))
        .collect();
    assert_eq!(tables, declared_tables);
    let context = dynamodb
        .describe_table()
        .table_name(&names.context_table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let indexes: Vec<&str> = context
        .global_secondary_indexes()
        .iter()
        .filter_map(|i| i.index_name())
        .collect();
    assert_eq!(
        indexes,
        ["gsi1", "sweep"],
        "the list index and the sweeper's"
    );
    let ttl = dynamodb
        .describe_time_to_live()
        .table_name(&names.context_table)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description
            .unwrap()
            .attribute_name
            .as_deref(),
        Some("expires_at")
    );

    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue_urls = sqs
        .list_queues()
        .queue_name_prefix(format!("{prefix}-"))
        .send()
        .await
        .unwrap()
        .queue_urls
        .unwrap_or_default();
    let queues: BTreeSet<String> = queue_urls
        .iter()
        .map(|u| u.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(queues, declared_queues);
    for declared in &shape.queues {
        let url = queue_urls
            .iter()
            .find(|u| u.ends_with(&format!("/{}", declared.name)))
            .unwrap();
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        let get = |name: aws_sdk_sqs::types::QueueAttributeName| attributes.get(&name).cloned();
        if let Some(seconds) = declared.visibility_timeout {
            assert_eq!(
                get(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout),
                Some(seconds.to_string()),
                "{}",
                declared.name
            );
        }
        match &declared.dead_letter {
            Some((_, receives)) => {
                let policy: serde_json::Value = serde_json::from_str(
                    &get(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy).unwrap(),
                )
                .unwrap();
                assert_eq!(
                    policy["maxReceiveCount"].to_string().trim_matches('"'),
                    receives.to_string()
                );
                assert!(
                    policy["deadLetterTargetArn"]
                        .as_str()
                        .unwrap()
                        .ends_with("-dlq"),
                    "{policy}"
                );
            }
            None => assert!(get(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy).is_none()),
        }
    }

    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    for name in &shape.secrets {
        let value = secrets
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .unwrap();
        assert!(
            value.secret_string.unwrap().len() >= 32,
            "{name} has a generated value"
        );
    }
    let events = aws_sdk_eventbridge::Client::new(&config);
    for bus in &shape.event_buses {
        events.describe_event_bus().name(bus).send().await.unwrap();
    }
}

#[tokio::test]
async fn a_given_jwt_secret_becomes_the_stacks_signing_key_and_the_bucket_exists() {
    let config = maof_tests::moto::sdk_config().await;
    let prefix = format!("j{}", ulid::Ulid::new().to_string().to_lowercase());
    let names = ResourceNames::with_prefix(&prefix);
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let read = || async {
        secrets
            .get_secret_value()
            .secret_id(format!("{prefix}/jwt"))
            .send()
            .await
            .unwrap()
            .secret_string
            .unwrap()
    };
    for value in [
        "first-local-signing-secret-0123456789",
        "second-local-signing-secret-0123456789",
    ] {
        Bootstrap::new(&config, names.clone())
            .with_jwt_secret(Some(value.to_owned()))
            .ensure_all()
            .await
            .unwrap();
        assert_eq!(read().await, value, "written, and written over on a re-run");
    }
    // Without one, an existing key is kept.
    Bootstrap::new(&config, names.clone())
        .ensure_all()
        .await
        .unwrap();
    assert_eq!(read().await, "second-local-signing-secret-0123456789");
    let s3 = aws_sdk_s3::Client::from_conf(maof::adapters::aws::s3_config(&config).build());
    s3.head_bucket()
        .bucket(&names.blob_bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the claim check's bucket {}: {e:?}", names.blob_bucket));
}
