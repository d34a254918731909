//! The policy's classes and allow list, the resolver, and the real client
//! against local servers: internal destinations refused whether named by an
//! IP literal, by a name that resolves inside, or by a redirect.

use serde_json::json;
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::domain::ErrorClass;
use crate::ports::ProviderClient;
use crate::providers::test_support::{
    agent, forbidden_server, key, received, single_request, test_names,
};
use crate::providers::{OpenAiCompatible, OpenAiMedia, TASK_TRANSCRIPTION};

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn the_classifier_refuses_every_internal_class() {
    use Refusal::*;
    let table: [(&str, Option<Refusal>); 42] = [
        ("127.0.0.1", Some(Loopback)),
        ("127.255.0.9", Some(Loopback)),
        ("0.0.0.0", Some(Unspecified)),
        ("0.1.2.3", Some(Reserved)),
        ("10.0.0.5", Some(Private)),
        ("172.16.0.1", Some(Private)),
        ("172.31.255.255", Some(Private)),
        ("192.168.1.1", Some(Private)),
        ("169.254.1.1", Some(LinkLocal)),
        ("169.254.169.254", Some(Metadata)),
        ("169.254.170.2", Some(Metadata)),
        ("100.100.100.200", Some(Metadata)),
        ("100.64.0.1", Some(SharedAddressSpace)),
        ("100.127.255.255", Some(SharedAddressSpace)),
        ("224.0.0.1", Some(Multicast)),
        ("239.255.255.250", Some(Multicast)),
        ("240.0.0.1", Some(Reserved)),
        ("255.255.255.255", Some(Reserved)),
        ("198.18.0.1", Some(Reserved)),
        ("192.0.0.8", Some(Reserved)),
        ("192.0.2.1", Some(Reserved)),
        ("::1", Some(Loopback)),
        ("::", Some(Unspecified)),
        ("fe80::1", Some(LinkLocal)),
        ("fc00::1", Some(Private)),
        ("fd12:3456::1", Some(Private)),
        ("fd00:ec2::254", Some(Metadata)),
        ("ff02::1", Some(Multicast)),
        ("::ffff:127.0.0.1", Some(Loopback)),
        ("::ffff:169.254.169.254", Some(Metadata)),
        ("::ffff:10.1.2.3", Some(Private)),
        ("64:ff9b::a9fe:a9fe", Some(Metadata)),
        ("64:ff9b::a00:5", Some(Private)),
        ("2002:7f00:1::", Some(Loopback)),
        ("2002:a9fe:a9fe::1", Some(Metadata)),
        ("2001:db8::1", Some(Reserved)),
        ("2001:0:4136:e378::1", Some(Reserved)),
        // Public addresses, including public ones embedded in IPv6.
        ("8.8.8.8", None),
        ("172.32.0.1", None),
        ("100.128.0.1", None),
        ("2606:4700:4700::1111", None),
        ("64:ff9b::808:808", None),
    ];
    for (address, expected) in table {
        assert_eq!(refused(ip(address)), expected, "{address}");
    }
    assert_eq!(refused(ip("2002:808:808::1")), None);
}

#[test]
fn the_allow_list_takes_addresses_ranges_and_names() {
    let policy = OutboundPolicy::strict()
        .with_allowed(" 10.0.0.0/8, 192.168.1.7 ,[fd12::1], vLLM.Internal., ")
        .unwrap();
    assert_eq!(policy.admits(None, v4(10, 9, 8, 7)), Ok(()));
    assert_eq!(policy.admits(None, v4(192, 168, 1, 7)), Ok(()));
    assert_eq!(
        policy.admits(None, v4(192, 168, 1, 8)),
        Err(Refusal::Private)
    );
    assert_eq!(policy.admits(None, ip("fd12::1")), Ok(()));
    // A mapped address is its IPv4 address.
    assert_eq!(policy.admits(None, ip("::ffff:10.1.1.1")), Ok(()));
    assert_eq!(
        policy.admits(None, v4(127, 0, 0, 1)),
        Err(Refusal::Loopback)
    );
    // Names match whole, whatever the case or a trailing dot.
    assert_eq!(
        policy.admits(Some("VLLM.internal"), v4(172, 16, 0, 9)),
        Ok(())
    );
    assert_eq!(
        policy.admits(Some("other.internal"), v4(172, 16, 0, 9)),
        Err(Refusal::Private)
    );
    assert_eq!(
        policy.to_string(),
        "public addresses and 10.0.0.0/8, 192.168.1.7/32, fd12::1/128, vllm.internal"
    );

    for bad in [
        "10.0.0.0/33",
        "vllm.internal:8000",
        "http://x",
        "a..b",
        "-x",
    ] {
        assert_eq!(
            OutboundPolicy::strict().with_allowed(bad),
            Err(OutboundConfigError::BadEntry {
                entry: bad.to_owned()
            }),
            "{bad}"
        );
    }
    assert_eq!(
        OutboundPolicy::strict().to_string(),
        "public addresses only"
    );
}

#[test]
fn loopback_is_admitted_only_when_asked_and_metadata_never() {
    let dev = OutboundPolicy::allow_loopback();
    assert_eq!(dev.admits(None, v4(127, 0, 0, 1)), Ok(()));
    assert_eq!(dev.admits(None, ip("::1")), Ok(()));
    assert_eq!(dev.admits(None, v4(10, 0, 0, 5)), Err(Refusal::Private));
    assert_eq!(dev.to_string(), "public addresses and loopback");
    assert_eq!(
        OutboundPolicy::strict().admits(None, v4(127, 0, 0, 1)),
        Err(Refusal::Loopback)
    );

    let everything = OutboundPolicy::allow_loopback()
        .with_allowed("0.0.0.0/0,::/0,metadata.test")
        .unwrap();
    assert_eq!(everything.admits(None, v4(10, 0, 0, 5)), Ok(()));
    for absolute in [
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "0.0.0.0",
        "::",
    ] {
        assert!(
            everything
                .admits(Some("metadata.test"), ip(absolute))
                .is_err(),
            "{absolute}"
        );
    }
}

#[test]
fn urls_with_internal_literal_hosts_are_refused_before_sending() {
    let strict = OutboundPolicy::strict();
    let check = |policy: &OutboundPolicy, url: &str| policy.check_url(&Url::parse(url).unwrap());
    let refused_as = |url: &str, host: &str, refusal: Refusal| {
        assert_eq!(
            check(&strict, url),
            Err(OutboundError::Refused {
                host: host.to_owned(),
                refusal
            }),
            "{url}"
        );
    };
    refused_as("http://127.0.0.1:8080/", "127.0.0.1", Refusal::Loopback);
    // Other spellings of IPv4 are rewritten by the URL parser, then refused.
    refused_as("http://0x7f.1/", "127.0.0.1", Refusal::Loopback);
    refused_as("http://2130706433/", "127.0.0.1", Refusal::Loopback);
    refused_as("http://[::1]:8080/", "[::1]", Refusal::Loopback);
    refused_as(
        "http://169.254.169.254/latest/meta-data/",
        "169.254.169.254",
        Refusal::Metadata,
    );
    refused_as(
        "http://[::ffff:a9fe:a9fe]/",
        "[::ffff:a9fe:a9fe]",
        Refusal::Metadata,
    );
    refused_as("https://10.0.0.5/v1", "10.0.0.5", Refusal::Private);
    assert_eq!(
        check(&strict, "ftp://example.com/a"),
        Err(OutboundError::NotHttp)
    );
    // Names are for the resolver to judge.
    assert_eq!(check(&strict, "http://localhost:8080/"), Ok(()));
    assert_eq!(check(&strict, "https://api.openai.com/v1"), Ok(()));
    assert_eq!(
        check(&OutboundPolicy::allow_loopback(), "http://[::1]:8080/"),
        Ok(())
    );
}

async fn resolve(
    policy: OutboundPolicy,
    resolver: Arc<dyn Resolve>,
    name: &str,
) -> Result<Vec<IpAddr>, String> {
    let guarded = GuardedResolver::new(resolver, Arc::new(policy));
    match guarded.resolve(name.parse().unwrap()).await {
        Ok(addrs) => Ok(addrs.map(|a| a.ip()).collect()),
        Err(error) => {
            let refused = OutboundError::find_in(&*error).expect("a refusal");
            Err(refused.to_string())
        }
    }
}

#[tokio::test]
async fn the_resolver_refuses_names_that_resolve_inside() {
    // The system resolver: localhost is loopback.
    assert_eq!(
        resolve(
            OutboundPolicy::strict(),
            Arc::new(SystemResolver),
            "localhost"
        )
        .await,
        Err("localhost is not an allowed destination (a loopback address)".to_owned())
    );
    let cases = [
        ("metadata.test", "a cloud metadata address"),
        ("ecs-metadata.test", "a cloud metadata address"),
        ("private.test", "a private address"),
        ("cgnat.test", "a carrier-grade NAT address"),
    ];
    for (name, why) in cases {
        let refused = resolve(OutboundPolicy::strict(), test_names(), name)
            .await
            .unwrap_err();
        // The host and the class, never the address it resolved to.
        assert_eq!(
            refused,
            format!("{name} is not an allowed destination ({why})")
        );
    }
    // Of a name's addresses, only the admitted are connected to.
    assert_eq!(
        resolve(OutboundPolicy::strict(), test_names(), "mixed.test").await,
        Ok(vec![ip("93.184.215.14")])
    );
}

#[tokio::test]
async fn the_resolver_admits_what_the_allow_list_names() {
    let by_name = OutboundPolicy::strict()
        .with_allowed("private.test,metadata.test")
        .unwrap();
    assert_eq!(
        resolve(by_name.clone(), test_names(), "private.test").await,
        Ok(vec![ip("10.0.0.5")])
    );
    assert!(
        resolve(by_name.clone(), test_names(), "cgnat.test")
            .await
            .is_err()
    );
    // Naming a metadata host does not open it.
    assert!(
        resolve(by_name, test_names(), "metadata.test")
            .await
            .is_err()
    );

    let by_range = OutboundPolicy::strict()
        .with_allowed("10.0.0.0/24,100.64.0.0/10")
        .unwrap();
    for name in ["private.test", "cgnat.test"] {
        assert!(
            resolve(by_range.clone(), test_names(), name).await.is_ok(),
            "{name}"
        );
    }
    assert!(
        resolve(by_range, test_names(), "loopback.test")
            .await
            .is_err()
    );
    assert_eq!(
        resolve(
            OutboundPolicy::allow_loopback(),
            Arc::new(SystemResolver),
            "localhost"
        )
        .await
        .map(|ips| ips.iter().all(IpAddr::is_loopback)),
        Ok(true)
    );
}

/// A server answering 200 `ok` to every request.
async fn ok_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&server)
        .await;
    server
}

fn refusal_of(result: Result<Response, SendError>) -> OutboundError {
    match result {
        Err(SendError::Refused(refused)) => refused,
        Err(other) => panic!("not a refusal: {other:?}"),
        Ok(response) => panic!("not refused: HTTP {}", response.status()),
    }
}

#[tokio::test]
async fn a_strict_client_refuses_internal_literals_and_names() {
    let server = ok_server().await;
    let port = server.address().port();
    let strict = OutboundClient::with_resolver(OutboundPolicy::strict(), test_names()).unwrap();

    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::1]:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.5/".to_owned(),
        format!("http://loopback.test:{port}/"),
        "http://metadata.test/latest/meta-data/".to_owned(),
        "http://private.test/".to_owned(),
        "http://cgnat.test/".to_owned(),
    ] {
        let refused = refusal_of(strict.send(strict.get(&url)).await);
        assert!(matches!(refused, OutboundError::Refused { .. }), "{url}");
    }
    // The real resolver, too.
    let system = OutboundClient::new(OutboundPolicy::strict()).unwrap();
    let refused = refusal_of(
        system
            .send(system.get(format!("http://localhost:{port}/")))
            .await,
    );
    assert_eq!(
        refused.to_string(),
        "localhost is not an allowed destination (a loopback address)"
    );
    assert_eq!(received(&server).await, 0);

    // The same server is reachable when loopback is admitted, by address
    // and by name: the refusals above are the policy's.
    let dev = OutboundClient::new(OutboundPolicy::allow_loopback()).unwrap();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
    ] {
        let response = dev.send(dev.get(&url)).await.unwrap();
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert_eq!(received(&server).await, 2);
}

#[tokio::test]
async fn redirects_are_not_followed_by_send_and_checked_hop_by_hop_when_followed() {
    let forbidden = forbidden_server().await;
    let hidden = forbidden.address().port();
    let allowed = MockServer::start().await;
    let port = allowed.address().port();
    let redirect = |at: &str, to: String| {
        Mock::given(method("GET"))
            .and(path(at.to_owned()))
            .respond_with(ResponseTemplate::new(302).insert_header("location", to.as_str()))
    };
    let targets = [
        ("/to-literal", format!("http://127.0.0.2:{hidden}/")),
        ("/to-name", format!("http://second-loopback.test:{hidden}/")),
        (
            "/to-metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
        ),
        ("/to-private", "http://10.0.0.5/".to_owned()),
    ];
    for (at, to) in &targets {
        redirect(at, to.clone()).mount(&allowed).await;
    }
    // An allowed hop, then the final answer: redirects are followed when
    // every hop is admitted.
    redirect("/to-allowed", format!("http://loopback.test:{port}/final"))
        .mount(&allowed)
        .await;
    Mock::given(path("/final"))
        .respond_with(ResponseTemplate::new(200).set_body_string("final"))
        .mount(&allowed)
        .await;
    redirect("/loop", format!("http://127.0.0.1:{port}/loop"))
        .mount(&allowed)
        .await;

    // Exactly the allowed server's address (not all loopback, not
    // `localhost`'s other addresses).
    let policy = OutboundPolicy::strict().with_allowed("127.0.0.1").unwrap();
    let client = OutboundClient::with_resolver(policy, test_names()).unwrap();
    let at = |p: &str| Url::parse(&format!("http://127.0.0.1:{port}{p}")).unwrap();
    let timeout = Duration::from_secs(5);

    // send: the redirect comes back as it is.
    let response = client.send(client.get(at("/to-literal"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);

    for (p, _) in &targets {
        let refused = refusal_of(client.get_following_redirects(at(p), timeout).await);
        assert!(matches!(refused, OutboundError::Refused { .. }), "{p}");
    }
    let followed = client
        .get_following_redirects(at("/to-allowed"), timeout)
        .await
        .unwrap();
    assert_eq!(followed.text().await.unwrap(), "final");
    assert!(matches!(
        client.get_following_redirects(at("/loop"), timeout).await,
        Err(SendError::TooManyRedirects)
    ));
    assert_eq!(received(&forbidden).await, 0);
}

#[tokio::test]
async fn a_provider_base_url_inside_the_network_fails_unretried_and_follows_no_redirect() {
    let forbidden = forbidden_server().await;
    let hidden = forbidden.address().port();
    let strict = OpenAiCompatible::new(
        OutboundClient::with_resolver(OutboundPolicy::strict(), test_names()).unwrap(),
    );
    let request = crate::providers::test_support::chat_request();
    for base_url in [
        "http://169.254.169.254/latest".to_owned(),
        "http://10.0.0.5/v1".to_owned(),
        "http://metadata.test/v1".to_owned(),
        format!("http://127.0.0.2:{hidden}/v1"),
        format!("http://second-loopback.test:{hidden}/v1"),
    ] {
        let agent = agent("openai_compatible", "m", Some(base_url.clone()), json!({}));
        let err = strict
            .complete(&agent, Some(&key()), &request)
            .await
            .unwrap_err();
        assert_eq!(
            (err.class, err.status),
            (ErrorClass::BadRequest, None),
            "{base_url}"
        );
        assert!(!err.class.is_retryable());
        assert!(
            err.message.starts_with("the agent's base_url is refused: ")
                && err.message.contains("is not an allowed destination"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("127.0.0.2:"), "{}", err.message);
    }

    // An admitted server redirecting inside: not followed, so the key never
    // travels there.
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(307).insert_header(
            "location",
            format!("http://127.0.0.2:{hidden}/v1/chat/completions"),
        ))
        .mount(&upstream)
        .await;
    let local = OpenAiCompatible::new(
        OutboundClient::new(OutboundPolicy::strict().with_allowed("127.0.0.1").unwrap()).unwrap(),
    );
    let agent = agent(
        "openai_compatible",
        "m",
        Some(format!("{}/v1", upstream.uri())),
        json!({}),
    );
    assert!(
        local
            .complete(&agent, Some(&key()), &request)
            .await
            .is_err()
    );
    assert_eq!(received(&upstream).await, 1);
    assert_eq!(received(&forbidden).await, 0);
}

#[tokio::test]
async fn an_audio_url_inside_the_network_is_refused_and_a_failed_fetch_is_not_described() {
    let forbidden = forbidden_server().await;
    let hidden = forbidden.address().port();
    let server = MockServer::start().await;
    Mock::given(path("/redirected.mp3"))
        .respond_with(ResponseTemplate::new(302).insert_header(
            "location",
            format!("http://second-loopback.test:{hidden}/a.mp3"),
        ))
        .mount(&server)
        .await;
    Mock::given(path("/missing.mp3"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no such file in /srv/secret"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"text": "never"})))
        .expect(0)
        .mount(&server)
        .await;
    let media = OpenAiMedia::new(
        OutboundClient::with_resolver(
            OutboundPolicy::strict().with_allowed("127.0.0.1").unwrap(),
            test_names(),
        )
        .unwrap(),
    );
    let agent = agent(
        "openai",
        "whisper-1",
        Some(format!("{}/v1", server.uri())),
        json!({}),
    );
    let transcribe = |content: String| {
        let media = media.clone();
        let agent = agent.clone();
        async move {
            media
                .complete(
                    &agent,
                    Some(&key()),
                    &single_request(TASK_TRANSCRIPTION, &content),
                )
                .await
                .unwrap_err()
        }
    };

    for content in [
        format!("http://127.0.0.2:{hidden}/a.mp3"),
        "http://metadata.test/latest/meta-data/".to_owned(),
        "http://private.test/a.mp3".to_owned(),
        "http://[fd00:ec2::254]/latest/".to_owned(),
        format!("{}/redirected.mp3", server.uri()),
    ] {
        let err = transcribe(content.clone()).await;
        assert_eq!(err.class, ErrorClass::BadRequest, "{content}");
        assert!(
            err.message.starts_with("the audio URL is refused: "),
            "{content}: {}",
            err.message
        );
    }
    assert_eq!(received(&forbidden).await, 0);

    let err = transcribe(format!("{}/missing.mp3", server.uri())).await;
    assert_eq!(
        (err.class, err.status, err.message.as_str()),
        (ErrorClass::BadRequest, None, "could not fetch the audio")
    );
}
