use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use maof::adapters::aws::{Bootstrap, ResourceNames, load_sdk_config};
use maof::api::{ApiState, AuthConfig, Authenticator, router};
use maof::domain::{PlatformAgents, Role, TenantId};
use maof::providers::outbound::ALLOW_VAR;
use maof::providers::{OutboundClient, OutboundPolicy};
use maof::runner::{Runner, RunnerConfig};
use maof::setup;
use maof::stages::{Services, Settings};
use rand::Rng;
use secrecy::SecretString;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// In-process stores and queues.
    Memory,
    /// DynamoDB, SQS and Secrets Manager at AWS_ENDPOINT_URL (e.g. moto).
    Aws,
}

#[derive(clap::Args)]
pub struct DevArgs {
    /// The loopback port; 0 picks a free one (the address is printed).
    #[arg(long, default_value_t = 3000)]
    port: u16,
    #[arg(long, value_enum, default_value_t = Backend::Memory)]
    backend: Backend,
    /// The registry seed.
    #[arg(long, default_value = "infra/agents.yaml")]
    agents: PathBuf,
    /// Tenant of the printed token.
    #[arg(long, default_value = "dev")]
    tenant: String,
    /// One visibility timeout, in seconds, on every queue instead of each
    /// queue's from template.yaml (minutes): how soon a message whose
    /// handler failed, or whose process died, is delivered again.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=43_200))]
    visibility: Option<u64>,
}

#[derive(clap::Args)]
pub struct BootstrapArgs {
    /// Also seed the registry from this file.
    #[arg(long)]
    seed: Option<PathBuf>,
}

/// Creates the tables and queues (if missing) and returns the services on
/// them, their provider calls made through `http` (the process's one
/// outbound client).
pub async fn bootstrap(args: BootstrapArgs, http: OutboundClient) -> anyhow::Result<Services> {
    let config = load_sdk_config().await;
    let names = ResourceNames::from_env();
    // With MAOF_JWT_SECRET set, the stack's signing key is that value: the
    // intake Lambda (run locally) then accepts the tokens `maof token` mints.
    let jwt = std::env::var("MAOF_JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty());
    Bootstrap::new(&config, names.clone())
        .with_jwt_secret(jwt)
        .ensure_all()
        .await?;
    let svc = setup::aws_services(&config, &names, http).await?;
    if let Some(seed) = args.seed {
        report_seed(&setup::seed_registry(&svc, &seed).await?);
    }
    println!(
        "tables {} and {}, queues {}-*: ready",
        names.context_table, names.registry_table, names.queue_prefix
    );
    Ok(svc)
}

fn report_seed(seeded: &[setup::Seeded]) {
    for agent in seeded {
        match &agent.note {
            Some(note) => println!("  agent {:<16} {note}", agent.id.as_str()),
            None => println!("  agent {:<16} enabled", agent.id.as_str()),
        }
    }
}

fn jwt_secret() -> SecretString {
    match std::env::var("MAOF_JWT_SECRET") {
        Ok(secret) if !secret.is_empty() => SecretString::from(secret),
        _ => {
            let bytes: [u8; 32] = rand::rng().random();
            SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    }
}

/// `12 h`, `90 min` or `45 s`.
fn lifetime_text(ttl: Duration) -> String {
    match ttl.as_secs() {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// The environment's settings, where a tenant with nothing set uses every
/// platform agent (the seeded ones) and has no rate limit, unless
/// `MAOF_DEFAULT_PLATFORM_AGENTS`, `MAOF_DEFAULT_RPM` or `MAOF_DEFAULT_TPM`
/// say otherwise.
fn dev_settings() -> anyhow::Result<Settings> {
    let mut settings = Settings::from_env().map_err(anyhow::Error::msg)?;
    if std::env::var_os("MAOF_DEFAULT_PLATFORM_AGENTS").is_none() {
        settings.tenant_defaults.platform_agents = PlatformAgents::All;
    }
    let limits = &mut settings.tenant_defaults.rate_limits.tenant;
    if std::env::var_os("MAOF_DEFAULT_RPM").is_none() {
        limits.rpm = None;
    }
    if std::env::var_os("MAOF_DEFAULT_TPM").is_none() {
        limits.tpm = None;
    }
    Ok(settings)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // Local model servers (Ollama, vLLM, llama.cpp) listen on loopback; the
    // Lambdas refuse it.
    let outbound = OutboundPolicy::allow_loopback().with_env_allow_list()?;
    let http = setup::outbound(outbound.clone())?;
    let svc = match args.backend {
        Backend::Memory => setup::memory_services(http.clone())?.0,
        Backend::Aws => bootstrap(BootstrapArgs { seed: None }, http.clone()).await?,
    }
    .with_settings(dev_settings()?);
    let seeded = setup::seed_registry(&svc, &args.agents)
        .await
        .with_context(|| format!("seeding the registry from {}", args.agents.display()))?;
    report_seed(&seeded);

    // HS256 with MAOF_JWT_SECRET (or a random secret), plus an identity
    // provider if MAOF_JWT_* names one. Never the API Gateway authorizer's
    // claims: here nothing but the bearer token is read.
    let config = AuthConfig::from_env()?.with_secret(jwt_secret());
    let auth = Arc::new(Authenticator::from_config(
        config,
        Some(http),
        svc.clock.clone(),
    )?);
    let tenant = TenantId::parse(args.tenant.clone()).context("bad --tenant")?;
    // 12 h, or less when MAOF_JWT_MAX_LIFETIME says so.
    let ttl = Duration::from_secs(12 * 3600).min(auth.max_lifetime());
    let token = auth.mint("dev", &tenant, &[Role::Admin], ttl)?;

    let mut config = RunnerConfig::default();
    if let Some(secs) = args.visibility {
        config = config.with_visibility(Duration::from_secs(secs));
    }
    let runner = Runner::spawn(svc.clone(), config);
    let app = router(ApiState {
        services: svc,
        auth,
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (is the port taken? use --port)"))?;
    // The port actually bound, which differs from the one asked for with --port 0.
    let addr = listener.local_addr().context("the listening address")?;

    println!("\nmaof dev: listening on http://{addr}");
    println!(
        "outbound calls reach {outbound} (loopback: Ollama and local servers; {ALLOW_VAR} admits more)"
    );
    println!(
        "token (tenant {tenant}, admin, {}):\n  {token}\n",
        lifetime_text(ttl)
    );
    println!("try:\n  curl -s -X POST 'http://{addr}/v1/tasks?wait=10' \\");
    println!("    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\");
    println!(
        "    -d '{{\"task_type\":\"text\",\"content\":\"Analyze this text for sentiment: I love it\"}}'\n"
    );

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    runner.shutdown().await;
    Ok(())
}
