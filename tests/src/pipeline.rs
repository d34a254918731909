//! The whole pipeline on one backend: the HTTP API on a loopback port and
//! the local runner's pollers, with the fault wrappers a test asks for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use maof::adapters::memory::MemoryEvents;
use maof::api::{ApiState, Authenticator, router};
use maof::domain::{PlatformAgents, Provider, Role, TenantDefaults, TenantId};
use maof::ports::{CachedSecrets, Clock, Queue, SystemClock, TaskStore};
use maof::providers::{MockProvider, OutboundPolicy, Providers, http_client};
use maof::runner::{Runner, RunnerConfig};
use maof::stages::{Services, Settings};
use secrecy::SecretString;

use crate::backends::Backend;
use crate::faults::CountingProvider;

pub const JWT_SECRET: &str = "test-secret-of-enough-length-for-hs256";

/// Wraps a port in a fault injector.
pub type Wrap<T> = Box<dyn FnOnce(Arc<T>) -> Arc<T> + Send>;

/// How a test bends the backend before the pipeline starts.
#[derive(Default)]
pub struct Faults {
    pub wrap_tasks: Option<Wrap<dyn TaskStore>>,
    pub wrap_queue: Option<Wrap<dyn Queue>>,
    /// The pipeline's clock (the system's when unset).
    pub clock: Option<Arc<dyn Clock>>,
    /// Agents may reach servers on loopback (a local provider), as in
    /// `maof dev`; strict, as on Lambda, when unset.
    pub loopback_agents: bool,
}

pub struct Pipeline {
    pub base: String,
    pub http: reqwest::Client,
    pub services: Services,
    pub auth: Arc<Authenticator>,
    /// Every request the mock agents received.
    pub provider: Arc<CountingProvider>,
    /// Every finished task announced (read from the store's change stream).
    pub events: Arc<MemoryEvents>,
    runner: Option<Runner>,
    /// The runners of instances added by `add_instance`.
    others: Vec<Runner>,
    server: tokio::task::JoinHandle<()>,
}

/// Settings under which a tenant with none of its own uses every platform
/// agent (as in `maof dev`): the seeded test agents are platform agents.
pub fn every_tenant_uses_platform_agents() -> Settings {
    Settings {
        tenant_defaults: TenantDefaults {
            platform_agents: PlatformAgents::All,
            ..TenantDefaults::default()
        },
        ..Settings::default()
    }
}

/// The runner's configuration in tests.
fn runner_config() -> RunnerConfig {
    RunnerConfig {
        wait: Duration::from_millis(200),
        sweep_every: Duration::from_millis(500),
        ..RunnerConfig::default()
    }
    // Failed messages come back quickly in tests.
    .with_visibility(Duration::from_secs(1))
}

fn seed_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/agents.yaml")
}

impl Pipeline {
    pub async fn start(backend: Backend, faults: Faults) -> Pipeline {
        let tasks = match faults.wrap_tasks {
            Some(wrap) => wrap(backend.tasks),
            None => backend.tasks,
        };
        let queue = match faults.wrap_queue {
            Some(wrap) => wrap(backend.queue),
            None => backend.queue,
        };
        let clock: Arc<dyn Clock> = faults.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let secrets = Arc::new(CachedSecrets::new(
            backend.secrets,
            clock.clone(),
            CachedSecrets::DEFAULT_TTL,
        ));
        let provider = Arc::new(CountingProvider::new(Arc::new(MockProvider)));
        let events = Arc::new(MemoryEvents::new());
        let outbound = if faults.loopback_agents {
            OutboundPolicy::allow_loopback()
        } else {
            OutboundPolicy::strict()
        };
        let mut providers = Providers::new(http_client(outbound).unwrap());
        providers.insert(Provider::Mock, provider.clone());
        let services = Services::new(
            tasks,
            backend.registry,
            queue,
            secrets,
            Arc::new(providers),
            clock,
            // Health read fresh: a test sees a circuit open at once.
            Settings {
                health_ttl: Duration::ZERO,
                ..every_tenant_uses_platform_agents()
            },
        )
        .with_blobs(backend.blobs)
        .with_health(backend.health)
        .with_rotation(backend.rotation)
        .with_audit(backend.audit)
        .with_events(events.clone())
        .with_feed((backend.new_feed)());
        maof::setup::seed_registry(&services, &seed_file())
            .await
            .unwrap_or_else(|e| panic!("seeding the test registry: {e}"));
        let runner = Runner::spawn(services.clone(), runner_config());
        let auth = Arc::new(Authenticator::new(SecretString::from(JWT_SECRET)));
        let app = router(ApiState {
            services: services.clone(),
            auth: auth.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Pipeline {
            base,
            http: reqwest::Client::new(),
            services,
            auth,
            provider,
            events,
            runner: Some(runner),
            others: Vec::new(),
            server,
        }
    }

    /// Starts another instance of the stages on the same backend, as a
    /// second Lambda would be: the same stores and queues, its own
    /// registry cache and waiters, polling the same queues as the first.
    /// (The pipeline's rate-limit buckets are in process, and shared with
    /// it.) It stops with the pipeline.
    pub fn add_instance(&mut self) {
        let mut services = self
            .services
            .clone()
            .with_settings(every_tenant_uses_platform_agents());
        services.completions = Default::default();
        // The first instance announces finished tasks.
        services.feed = None;
        self.others.push(Runner::spawn(services, runner_config()));
    }

    pub fn token(&self, tenant: &str, roles: &[Role]) -> String {
        self.auth
            .mint(
                "tester",
                &TenantId::parse(tenant).unwrap(),
                roles,
                Duration::from_secs(600),
            )
            .expect("mint")
    }

    pub fn submitter(&self, tenant: &str) -> String {
        self.token(tenant, &[Role::Submitter])
    }

    /// Writes sections of a tenant's settings through the API: as
    /// `platform_admin` (its ceilings, its mandatory filters) when
    /// `by_platform`, else as the tenant's admin (its own). Panics unless 200.
    pub async fn put_settings(&self, tenant: &str, by_platform: bool, sections: serde_json::Value) {
        let (path, token) = if by_platform {
            (
                format!("/v1/tenants/{tenant}/settings"),
                self.token("ops", &[Role::PlatformAdmin]),
            )
        } else {
            (
                "/v1/tenant/settings".to_owned(),
                self.token(tenant, &[Role::Admin]),
            )
        };
        let reply = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&sections)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        let status = reply.status();
        let body = reply.text().await.unwrap_or_default();
        assert_eq!(status, 200, "PUT {path}: {body}");
    }

    pub async fn stop(mut self) {
        if let Some(runner) = self.runner.take() {
            runner.shutdown().await;
        }
        for runner in self.others.drain(..) {
            runner.shutdown().await;
        }
        self.server.abort();
    }
}
