//! One contract suite, run against both backends: what the pipeline relies on
//! from the task store, the queue, the registry and the secret source.
//!
//! Each case is written once against the ports; `backends!` runs every case
//! on `memory` and on `aws` (DynamoDB, SQS, Secrets Manager on moto).

mod announcements;
mod audit;
mod blobs;
mod budget;
mod health;
mod limits;
mod queue;
mod registry;
mod rotation;
mod secrets;
mod task_store;

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(maof_tests::backends::memory()).await;
                }
            )*
        }
        mod aws {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(maof_tests::backends::aws().await).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;
