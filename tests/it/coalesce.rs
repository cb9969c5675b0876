//! Coalescing end to end: fan-in onto one upstream request, fan-out of the
//! same bytes to every subscriber, replay for late joiners, cancellation,
//! linger, errors, and the edge cases caches are known to get wrong.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::support::*;

const COMPLETIONS: &str = "/v1/chat/completions";

fn role(response: &Response<hyper::body::Incoming>) -> String {
    response.headers()["x-chorus-role"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Sends `body` with one more header and returns the response's role.
async fn role_with(client: &HttpClient, url: &str, body: &str, header: (&str, &str)) -> String {
    let request = Request::post(url)
        .header("content-type", "application/json")
        .header(header.0, header.1)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    role(&send(client, request).await)
}

/// The built-in mock behind a gateway with one route to it (`route` is
/// added to that route, e.g. a `[routes.coalesce]` table), and the gateway's
/// completions URL.
async fn start(route: &str) -> (Upstream, Gateway, String) {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), route)).await;
    let url = gateway.url(COMPLETIONS);
    (upstream, gateway, url)
}

/// Sends `body` and reads the whole response: (role, status, body or error).
fn fetch(
    client: &HttpClient,
    url: &str,
    body: &str,
) -> impl Future<Output = (String, StatusCode, Result<Bytes, hyper::Error>)> + use<> {
    let (client, request) = (client.clone(), post(url, body.to_owned()));
    async move {
        let response = send(&client, request).await;
        (
            role(&response),
            response.status(),
            crate::support::body(response).await,
        )
    }
}

#[tokio::test]
async fn triple_click_shares_one_upstream_request() {
    let (upstream, gateway, url) = start("").await;
    let request = chat("hello", json!({"tokens": 20, "interval_ms": 20}));
    let client = http1();

    let clicks = (0..3).map(|_| fetch(&client, &url, &request));
    let answers = futures::future::join_all(clicks).await;

    assert_eq!(upstream.stats.requests(), 1);
    let bodies: Vec<_> = answers
        .iter()
        .map(|(_, _, body)| body.as_ref().unwrap())
        .collect();
    assert!(bodies.iter().all(|body| body == &bodies[0]));
    let events = events(bodies[0]);
    assert_eq!(events.len(), 20 + 3, "role, 20 tokens, stop, [DONE]");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut roles: Vec<_> = answers.iter().map(|(role, _, _)| role.as_str()).collect();
    roles.sort();
    assert_eq!(roles, ["follower", "follower", "leader"]);

    let metrics = gateway.metrics().await;
    let value = |series| metric_value(&metrics, series);
    assert_eq!(
        value(r#"chorus_requests_total{route="llm",role="leader"}"#),
        1.0
    );
    assert_eq!(
        value(r#"chorus_requests_total{route="llm",role="follower"}"#),
        2.0
    );
    assert_eq!(value(r#"chorus_upstream_requests_total{route="llm"}"#), 1.0);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn every_subscriber_gets_the_same_headers_repeated_ones_in_order() {
    // The upstream answers once all three are subscribed.
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let opened = std::sync::Arc::clone(&gate);
    let upstream = TestUpstream::start(move |_| {
        let opened = std::sync::Arc::clone(&opened);
        async move {
            opened.notified().await;
            Response::builder()
                .header("content-type", "text/plain")
                .header("set-cookie", "a=1; Path=/")
                .header("x-trace", "one")
                .header("set-cookie", "b=2; Path=/")
                .header("x-trace", "two")
                .body(Full::new(Bytes::from_static(b"shared")))
                .unwrap()
        }
    })
    .await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let client = http1();
    let requests = (0..3).map(|_| send(&client, post(&gateway.url("/h"), "{}")));
    let open = async {
        gateway
            .wait_metric(r#"chorus_subscribers_active{route="llm"}"#, |v| v == 3.0)
            .await;
        gate.notify_one();
    };
    let (answers, ()) = tokio::join!(futures::future::join_all(requests), open);

    assert_eq!(upstream.hits(), 1);
    let mut roles: Vec<_> = answers.iter().map(role).collect();
    roles.sort();
    assert_eq!(roles, ["follower", "follower", "leader"]);
    let values = |response: &Response<hyper::body::Incoming>, name: &str| -> Vec<String> {
        let all = response.headers().get_all(name).iter();
        all.map(|value| value.to_str().unwrap().to_owned())
            .collect()
    };
    for response in &answers {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            values(response, "set-cookie"),
            ["a=1; Path=/", "b=2; Path=/"]
        );
        assert_eq!(values(response, "x-trace"), ["one", "two"]);
        assert_eq!(values(response, "content-type"), ["text/plain"]);
    }
    let names = |response: &Response<hyper::body::Incoming>| -> Vec<String> {
        let mut names: Vec<_> = response.headers().keys().map(|n| n.to_string()).collect();
        names.retain(|name| name != "x-chorus-role" && name != "date");
        names.sort();
        names
    };
    assert!(answers.iter().all(|r| names(r) == names(&answers[0])));
    for response in answers {
        assert_eq!(crate::support::body(response).await.unwrap(), "shared");
    }
    gateway.assert_idle().await;
}

#[tokio::test]
async fn a_thousand_identical_clients_make_one_upstream_request() {
    let (upstream, gateway, url) = start("").await;
    // Long enough for a loaded machine to open a thousand connections while it runs.
    let request = chat("herd", json!({"tokens": 40, "interval_ms": 100}));

    let leader = send(&http1(), post(&url, request.clone())).await;
    assert_eq!(role(&leader), "leader");
    let herd = (0..999).map(|_| {
        let (url, request) = (url.clone(), request.clone());
        // One connection each, as a thousand browsers would.
        tokio::spawn(async move { fetch(&http1(), &url, &request).await })
    });
    let herd = futures::future::join_all(herd).await;
    let leader_body = crate::support::body(leader).await.unwrap();

    assert_eq!(upstream.stats.requests(), 1);
    for answer in herd {
        let (role, status, body) = answer.unwrap();
        assert_eq!((role.as_str(), status), ("follower", StatusCode::OK));
        assert_eq!(body.unwrap(), leader_body);
    }
    gateway.assert_idle().await;
}

#[tokio::test]
async fn a_late_joiner_gets_the_stream_from_its_first_byte() {
    let (upstream, gateway, url) = start("").await;
    let request = chat("late", json!({"tokens": 20, "interval_ms": 80}));

    let first = send(&http1(), post(&url, request.clone())).await;
    let (prefix, rest) = read_events(first.into_body(), 5).await;
    let late = send(&http1(), post(&url, request)).await;
    assert_eq!(role(&late), "follower");
    let late_body = crate::support::body(late).await.unwrap();
    let first_body = finish(prefix, rest).await.unwrap();

    assert_eq!(late_body, first_body);
    assert_eq!(upstream.stats.requests(), 1);
    let replayed = gateway
        .metric(r#"chorus_replayed_bytes_total{route="llm"}"#)
        .await;
    assert!(
        replayed > 0.0,
        "the late joiner's first events were replayed"
    );
    gateway.assert_idle().await;
}

#[tokio::test]
async fn equivalent_json_coalesces_and_different_requests_do_not() {
    let (upstream, gateway, url) = start("").await;
    let client = http1();
    let mock = json!({"tokens": 10, "interval_ms": 100});
    let base = chat("same", mock.clone());
    let reordered = format!(
        "{{ \"mock\": {mock},\n  \"messages\": [ {{\"content\": \"same\", \"role\": \"user\"}} ],\n  \"stream\": true, \"model\": \"mock\" }}"
    );

    // Same JSON, other key order and white space: one flight.
    let pair = futures::join!(
        fetch(&client, &url, &base),
        fetch(&client, &url, &reordered)
    );
    assert_eq!(upstream.stats.requests(), 1);
    assert_eq!(pair.0.2.unwrap(), pair.1.2.unwrap());

    // A changed value, another tenant: separate flights.
    let changed = chat("different", mock.clone());
    let other_tenant = Request::post(&url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer someone-else")
        .body(Full::new(Bytes::from(base.clone())))
        .unwrap();
    let before = upstream.stats.requests();
    let (base, changed, other) = futures::join!(
        fetch(&client, &url, &base),
        fetch(&client, &url, &changed),
        async { crate::support::body(send(&client, other_tenant).await).await },
    );
    assert_eq!(upstream.stats.requests() - before, 3);
    assert!(base.2.is_ok() && changed.2.is_ok() && other.is_ok());
    gateway.assert_idle().await;
}

/// A reconnecting `EventSource` (`Last-Event-ID`) or a conditional request
/// asks for an answer relative to what its client holds: it never joins a
/// plain request's flight, whatever `key_headers` says.
#[tokio::test]
async fn resuming_and_conditional_requests_never_join_plain_ones() {
    let (upstream, gateway, url) = start("").await;
    let client = http1();
    let body = chat("resume", json!({"tokens": 10, "interval_ms": 100}));
    let with = |header| role_with(&client, &url, &body, header);
    let (plain, again, resuming, conditional) = futures::join!(
        fetch(&client, &url, &body),
        fetch(&client, &url, &body),
        with(("last-event-id", "3")),
        with(("if-none-match", "\"v1\"")),
    );
    assert_eq!(upstream.stats.requests(), 3, "plain, resuming, conditional");
    let mut plain_roles = [plain.0, again.0];
    plain_roles.sort();
    assert_eq!(plain_roles, ["follower", "leader"]);
    assert_eq!(
        (resuming.as_str(), conditional.as_str()),
        ("leader", "leader")
    );
    gateway.assert_idle().await;
}

/// A CORS answer names the one origin it allows (`Access-Control-Allow-Origin`),
/// so a page of another origin could not read it: pages of different origins
/// never share a flight, while the triple click of one page still does.
#[tokio::test]
async fn pages_of_different_origins_never_share_a_flight() {
    let (upstream, gateway, url) = start("").await;
    let client = http1();
    let body = chat("origins", json!({"tokens": 10, "interval_ms": 100}));
    let from = |origin| role_with(&client, &url, &body, ("origin", origin));
    let (first, second, other, plain) = futures::join!(
        from("https://chat.example"),
        from("https://chat.example"),
        from("https://other.example"),
        fetch(&client, &url, &body),
    );
    assert_eq!(upstream.stats.requests(), 3, "one per origin, one without");
    let mut same_origin = [first, second];
    same_origin.sort();
    assert_eq!(same_origin, ["follower", "leader"]);
    assert_eq!((other.as_str(), plain.0.as_str()), ("leader", "leader"));
    gateway.assert_idle().await;
}

/// `host` as a key header keeps the flights of each host apart (for a
/// backend that answers by `X-Forwarded-Host`), and means the host asked
/// for: an HTTP/2 client's `:authority` shares with HTTP/1.1's `Host`.
#[tokio::test]
async fn host_as_a_key_header_is_the_host_asked_for_in_either_version() {
    let (upstream, gateway, url) = start("[routes.coalesce]\nkey_headers = [\"host\"]").await;
    let body = chat("hosts", json!({"tokens": 10, "interval_ms": 100}));
    let client = http1();
    let (h1, h2, other, other_in_capitals) = futures::join!(
        fetch(&client, &url, &body),
        fetch(&http2(), &url, &body),
        role_with(&client, &url, &body, ("host", "other.example")),
        role_with(&client, &url, &body, ("host", "OTHER.Example")),
    );
    assert_eq!(upstream.stats.requests(), 2, "one per host in any case");
    let mut same_host = [h1.0, h2.0];
    same_host.sort();
    assert_eq!(same_host, ["follower", "leader"]);
    let mut other_host = [other, other_in_capitals];
    other_host.sort();
    assert_eq!(other_host, ["follower", "leader"]);
    gateway.assert_idle().await;
}

/// A header the client names in `Connection` never reaches the upstream, so
/// it cannot count in the key either: a request that strips its credentials
/// that way is a different request from one that sends them.
#[tokio::test]
async fn headers_named_in_connection_are_not_in_the_key() {
    let upstream = TestUpstream::start(|request| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let credentials = request.headers().get("authorization").cloned();
        let body = credentials.map_or(Bytes::from_static(b"none"), |value| {
            Bytes::copy_from_slice(value.as_bytes())
        });
        Response::new(Full::new(body))
    })
    .await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let url = gateway.url(COMPLETIONS);
    let request = |connection: Option<&str>| {
        let mut request = Request::post(&url)
            .header("content-type", "application/json")
            .header("authorization", "Bearer T");
        if let Some(names) = connection {
            request = request.header("connection", names);
        }
        request.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    };
    let read = |response: Response<_>| async move { (role(&response), text(response).await) };
    let (client, other_client) = (http1(), http1());
    let (stripped, whole) = futures::join!(
        async { read(send(&client, request(Some("authorization"))).await).await },
        async {
            // Behind the first, which it could otherwise join.
            let flights = r#"chorus_flights_active{route="llm"}"#;
            gateway.wait_metric(flights, |n| n >= 1.0).await;
            read(send(&other_client, request(None)).await).await
        },
    );
    assert_eq!(stripped, ("leader".into(), "none".into()));
    assert_eq!(whole, ("leader".into(), "Bearer T".into()));
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn routes_never_share_flights() {
    let upstream = TestUpstream::slow(Duration::from_millis(300), 200, "ok").await;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[routes]]
name = "a"
path_prefix = "/a/"
upstream = "{url}"

[[routes]]
name = "b"
path_prefix = "/b/"
upstream = "{url}"
"#,
        url = upstream.url()
    );
    let gateway = Gateway::start(&toml).await;
    let client = http1();
    let (a, b) = futures::join!(
        fetch(&client, &gateway.url("/a/x"), "{}"),
        fetch(&client, &gateway.url("/b/x"), "{}"),
    );
    assert_eq!((a.0.as_str(), b.0.as_str()), ("leader", "leader"));
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn methods_not_listed_and_opted_out_requests_go_alone() {
    let upstream = TestUpstream::slow(Duration::from_millis(800), 200, "ok").await;
    let route = r#"
[routes.coalesce]
methods = ["post"]
"#;
    let gateway = Gateway::start(&one_route(&upstream.url(), route)).await;
    let client = http1();
    let put = || {
        Request::put(gateway.url("/thing"))
            .body(Full::new(Bytes::from_static(b"same")))
            .unwrap()
    };
    let opted_out = || {
        Request::post(gateway.url("/thing"))
            .header("x-chorus-coalesce", "off")
            .body(Full::new(Bytes::from_static(b"same")))
            .unwrap()
    };

    let answers = futures::future::join_all(
        [put(), put(), opted_out(), opted_out()].map(|request| send(&client, request)),
    )
    .await;

    assert_eq!(upstream.hits(), 4);
    assert!(answers.iter().all(|response| role(response) == "bypass"));
    // Lower-case "post" in the config still coalesces POST.
    let posts = (0..2).map(|_| fetch(&client, &gateway.url("/thing"), "same"));
    let posts = futures::future::join_all(posts).await;
    assert_eq!(upstream.hits(), 5);
    assert!(posts.iter().any(|(role, _, _)| role == "follower"));
}

#[tokio::test]
async fn when_every_client_leaves_the_upstream_is_closed() {
    let (upstream, gateway, url) = start("").await;
    let request = chat("bye", json!({"tokens": 200, "interval_ms": 50}));

    let first = send(&http1(), post(&url, request.clone())).await;
    let (_, first) = read_events(first.into_body(), 2).await;
    let second = send(&http1(), post(&url, request)).await;
    let (_, second) = read_events(second.into_body(), 3).await;
    let left = tokio::time::Instant::now();
    drop((first, second));

    assert!(upstream.wait_for(|stats| stats.disconnects() >= 1).await);
    assert!(
        left.elapsed() < Duration::from_secs(5),
        "cancelled promptly"
    );
    assert!(
        upstream.stats.events_sent() < 100,
        "far fewer events than asked"
    );
    assert_eq!(
        gateway
            .wait_metric(r#"chorus_upstream_cancelled_total{route="llm"}"#, |v| v
                >= 1.0)
            .await,
        1.0
    );
    gateway.assert_idle().await;
}

#[tokio::test]
async fn one_client_leaving_changes_nothing_for_the_others() {
    let (upstream, gateway, url) = start("").await;
    let request = chat("stay", json!({"tokens": 20, "interval_ms": 30}));

    // The leader's own client leaves mid-body, once the followers are in.
    let leader = send(&http1(), post(&url, request.clone())).await;
    assert_eq!(role(&leader), "leader");
    let (_, leader) = read_events(leader.into_body(), 3).await;
    let followers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(fetch(&http1(), &url, &request)))
        .collect();
    gateway
        .wait_metric(r#"chorus_subscribers_active{route="llm"}"#, |v| v == 3.0)
        .await;
    drop(leader);
    let followers: Vec<_> = futures::future::join_all(followers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let bodies: Vec<_> = followers
        .into_iter()
        .map(|(_, _, body)| body.unwrap())
        .collect();
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(
        events(&bodies[0]).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(upstream.stats.requests(), 1);
    assert_eq!(upstream.stats.disconnects(), 0);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn the_leader_leaving_before_the_head_changes_nothing_for_followers() {
    let (upstream, gateway, url) = start("").await;
    let request = chat(
        "think",
        json!({"tokens": 5, "interval_ms": 10, "first_byte_delay_ms": 600}),
    );

    let leader = tokio::spawn({
        let (url, request) = (url.clone(), request.clone());
        async move { send(&http1(), post(&url, request)).await }
    });
    assert!(upstream.wait_for(|stats| stats.requests() == 1).await);
    let follower = tokio::spawn({
        let (url, request) = (url.clone(), request.clone());
        async move { fetch(&http1(), &url, &request).await }
    });
    gateway
        .wait_metric(r#"chorus_subscribers_active{route="llm"}"#, |v| v == 2.0)
        .await;
    leader.abort();

    let (role, status, body) = follower.await.unwrap();
    assert_eq!((role.as_str(), status), ("follower", StatusCode::OK));
    assert_eq!(
        events(&body.unwrap()).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(upstream.stats.requests(), 1);
    assert_eq!(upstream.stats.disconnects(), 0);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn everyone_leaving_during_a_long_time_to_first_token_cancels() {
    let (upstream, gateway, url) = start("").await;
    let request = chat("slow", json!({"first_byte_delay_ms": 30000}));

    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (url, request) = (url.clone(), request.clone());
            tokio::spawn(async move { send(&http1(), post(&url, request)).await })
        })
        .collect();
    gateway
        .wait_metric(r#"chorus_subscribers_active{route="llm"}"#, |v| v == 2.0)
        .await;
    for client in clients {
        client.abort();
    }

    assert!(upstream.wait_for(|stats| stats.disconnects() == 1).await);
    assert_eq!(upstream.stats.requests(), 1);
    gateway
        .wait_metric(r#"chorus_upstream_cancelled_total{route="llm"}"#, |v| {
            v == 1.0
        })
        .await;
    gateway.assert_idle().await;
}

#[tokio::test]
async fn a_stalled_client_delays_nobody_and_still_gets_every_byte() {
    let (upstream, gateway, url) = start("").await;
    // About a megabyte: more than the socket buffers hold for a client that does not read.
    let request = chat("big", json!({"tokens": 6000, "interval_ms": 0}));

    let stalled = send(&http1(), post(&url, request.clone())).await;
    let readers = (0..2).map(|_| fetch(&http1(), &url, &request));
    let readers = futures::future::join_all(readers).await;
    // The others are done while the stalled client has read nothing.
    assert_eq!(upstream.stats.completed(), 1);
    let stalled_body = crate::support::body(stalled).await.unwrap();

    for (_, _, body) in readers {
        assert_eq!(body.unwrap(), stalled_body);
    }
    assert!(stalled_body.len() > 500_000);
    assert_eq!(upstream.stats.requests(), 1);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn a_rejoin_within_cancel_grace_gets_the_full_replay() {
    let (upstream, gateway, url) = start("[routes.coalesce]\ncancel_grace = \"3s\"").await;
    let request = chat("again", json!({"tokens": 40, "interval_ms": 50}));

    let first = send(&http1(), post(&url, request.clone())).await;
    let (_, first) = read_events(first.into_body(), 3).await;
    drop(first);
    gateway
        .wait_metric(r#"chorus_subscribers_active{route="llm"}"#, |v| v == 0.0)
        .await;
    let again = send(&http1(), post(&url, request)).await;
    assert_eq!(role(&again), "follower");
    let body = crate::support::body(again).await.unwrap();

    let events = events(&body);
    assert_eq!(events.len(), 43, "every event from the first");
    assert!(events[0].contains(r#""role":"assistant""#));
    assert_eq!(upstream.stats.requests(), 1);
    assert_eq!(upstream.stats.disconnects(), 0);
    gateway.assert_idle().await;
}

/// A flight past `max_replay_bytes` takes no joiners, so nobody could
/// rejoin it within `cancel_grace`: deserted, it is cancelled at once
/// rather than read for the grace with nobody to read it.
#[tokio::test]
async fn a_flight_no_one_could_rejoin_is_cancelled_without_the_grace() {
    let route = "[routes.coalesce]\ncancel_grace = \"60s\"\nmax_replay_bytes = 1000";
    let (upstream, gateway, url) = start(route).await;
    let request = chat("unjoinable", json!({"tokens": 400, "interval_ms": 50}));
    let first = send(&http1(), post(&url, request)).await;
    // Well past 1,000 bytes of replay.
    let (_, first) = read_events(first.into_body(), 12).await;
    drop(first);
    // Waited for up to PATIENCE (20 s), far short of the grace.
    assert!(
        upstream.wait_for(|s| s.disconnects() >= 1).await,
        "not cancelled"
    );
    assert_eq!(
        gateway
            .metric(r#"chorus_upstream_cancelled_total{route="llm"}"#)
            .await,
        1.0
    );
    gateway.assert_idle().await;
}

#[tokio::test]
async fn linger_answers_from_the_log_until_it_expires() {
    let (upstream, gateway, url) = start("[routes.coalesce]\nlinger = \"1s\"").await;
    let request = chat("linger", json!({"tokens": 3, "interval_ms": 0}));
    let client = http1();

    let (first_role, _, first) = fetch(&client, &url, &request).await;
    let (again_role, _, again) = fetch(&client, &url, &request).await;
    assert_eq!(
        (first_role.as_str(), again_role.as_str()),
        ("leader", "follower")
    );
    assert_eq!(first.unwrap(), again.unwrap());
    assert_eq!(upstream.stats.requests(), 1);
    // Lingering flights are not active.
    assert_eq!(
        gateway
            .metric(r#"chorus_flights_active{route="llm"}"#)
            .await,
        0.0
    );

    // Time is the subject here: well past the linger, the next one goes upstream.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (late_role, _, _) = fetch(&client, &url, &request).await;
    assert_eq!(late_role, "leader");
    assert_eq!(upstream.stats.requests(), 2);
    gateway.assert_idle().await;
}

/// A response that sets a cookie is shared by the requests of its live
/// flight, but never lingered: a later request, maybe another browser's,
/// must not be given someone else's session. Nor is one that varies by a
/// header the key leaves out (a cache keeps it for that header's value
/// only); one that varies by headers in the key is.
#[tokio::test]
async fn responses_that_set_a_cookie_or_vary_by_more_than_the_key_are_never_lingered() {
    let upstream = TestUpstream::start(|request: Request<hyper::body::Incoming>| async move {
        let mut response = Response::builder();
        match request.uri().path() {
            "/session" => response = response.header("set-cookie", "sid=first; HttpOnly"),
            "/language" => response = response.header("vary", "Origin, Accept-Language"),
            "/keyed" => {
                response = response
                    .header("vary", "Origin, Accept-Encoding")
                    .header("vary", "authorization")
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        response.body(Full::new(Bytes::from_static(b"ok"))).unwrap()
    })
    .await;
    let route = "[routes.coalesce]\nlinger = \"30s\"";
    let gateway = Gateway::start(&one_route(&upstream.url(), route)).await;
    let client = http1();
    let roles = |url: String| {
        let client = client.clone();
        async move {
            let (live, joined) = futures::join!(fetch(&client, &url, "{}"), async {
                // Joins the live flight: the head is a second away.
                tokio::time::sleep(Duration::from_millis(100)).await;
                fetch(&client, &url, "{}").await
            });
            let after = fetch(&client, &url, "{}").await;
            [live.0, joined.0, after.0]
        }
    };

    assert_eq!(
        roles(gateway.url("/plain")).await,
        ["leader", "follower", "follower"]
    );
    assert_eq!(upstream.hits(), 1);
    assert_eq!(
        roles(gateway.url("/session")).await,
        ["leader", "follower", "leader"]
    );
    assert_eq!(upstream.hits(), 3);
    assert_eq!(
        roles(gateway.url("/language")).await,
        ["leader", "follower", "leader"]
    );
    assert_eq!(upstream.hits(), 5);
    assert_eq!(
        roles(gateway.url("/keyed")).await,
        ["leader", "follower", "follower"]
    );
    assert_eq!(upstream.hits(), 6);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn error_statuses_reach_everyone_but_are_never_lingered() {
    let (upstream, gateway, url) = start("[routes.coalesce]\nlinger = \"30s\"").await;
    let request = chat("fail", json!({"status": 429, "first_byte_delay_ms": 800}));
    let client = http1();

    let pair = futures::join!(
        fetch(&client, &url, &request),
        fetch(&client, &url, &request)
    );
    assert_eq!(
        (pair.0.1, pair.1.1),
        (StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!(pair.0.2.as_ref().unwrap(), pair.1.2.as_ref().unwrap());
    assert_eq!(upstream.stats.requests(), 1);

    let (role, status, _) = fetch(&client, &url, &request).await;
    assert_eq!(
        (role.as_str(), status),
        ("leader", StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!(upstream.stats.requests(), 2);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn a_broken_stream_ends_every_subscriber_abnormally() {
    let (upstream, gateway, url) = start("[routes.coalesce]\nlinger = \"30s\"").await;
    let request = chat(
        "break",
        json!({"tokens": 20, "interval_ms": 50, "break_after": 6}),
    );

    let leader = send(&http1(), post(&url, request.clone())).await;
    let (prefix, rest) = read_events(leader.into_body(), 2).await;
    let h1_follower = fetch(&http1(), &url, &request);
    let h2_follower = fetch(&http2(), &url, &request);
    let (h1, h2, leader) = futures::join!(h1_follower, h2_follower, finish(prefix, rest));

    assert!(leader.is_err(), "HTTP/1.1 leader must not see a clean end");
    assert!(h1.2.is_err(), "HTTP/1.1 follower must not see a clean end");
    assert!(h2.2.is_err(), "HTTP/2 follower must get a stream error");
    assert_eq!(upstream.stats.requests(), 1);
    // A broken stream is not lingered.
    let (role, _, body) = fetch(&http1(), &url, &request).await;
    assert_eq!(role, "leader");
    assert!(body.is_err());
    gateway.assert_idle().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_for_every_subscriber() {
    // An upstream that accepts, waits, then hangs up without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(800)).await;
                drop(stream);
            });
        }
    });
    let gateway = Gateway::start(&one_route(&format!("http://{addr}"), "")).await;
    let url = gateway.url(COMPLETIONS);
    let request = chat("down", json!({}));
    let client = http1();

    let answers = futures::future::join_all((0..3).map(|_| fetch(&client, &url, &request))).await;
    let mut roles = Vec::new();
    for (role, status, body) in &answers {
        assert_eq!(*status, StatusCode::BAD_GATEWAY);
        let json: serde_json::Value = serde_json::from_slice(body.as_ref().unwrap()).unwrap();
        assert!(json["error"]["type"].is_string() && json["error"]["message"].is_string());
        roles.push(role.as_str());
    }
    roles.sort();
    assert_eq!(roles, ["follower", "follower", "leader"]);
    assert_eq!(
        gateway
            .metric(r#"chorus_upstream_requests_total{route="llm"}"#)
            .await,
        1.0
    );
    gateway.assert_idle().await;
}

#[tokio::test]
async fn http1_and_http2_clients_share_a_flight() {
    let (upstream, gateway, url) = start("").await;
    let request = chat("both", json!({"tokens": 20, "interval_ms": 50}));

    let (h1, h2) = futures::join!(fetch(&http1(), &url, &request), async {
        assert!(upstream.wait_for(|stats| stats.requests() == 1).await);
        fetch(&http2(), &url, &request).await
    });
    assert_eq!(h1.2.unwrap(), h2.2.unwrap());
    assert_eq!((h1.0.as_str(), h2.0.as_str()), ("leader", "follower"));
    assert_eq!(upstream.stats.requests(), 1);
    gateway.assert_idle().await;
}

/// HTTP/2 clients (browsers) send each cookie as a field of its own; joined,
/// they are the same `Cookie` an HTTP/1.1 client sends in one line.
#[tokio::test]
async fn cookies_in_http2_crumbs_share_a_flight_with_one_cookie_line() {
    let (upstream, gateway, url) = start("").await;
    let body = chat("crumbs", json!({"tokens": 20, "interval_ms": 50}));
    let request = |cookies: &[&str]| {
        let mut request = Request::post(&url).header("content-type", "application/json");
        for cookie in cookies {
            request = request.header("cookie", *cookie);
        }
        request.body(Full::new(Bytes::from(body.clone()))).unwrap()
    };
    // Each reads its whole body: the leader stays subscribed until the end.
    let read = |client: HttpClient, request| async move {
        let response = send(&client, request).await;
        (
            role(&response),
            crate::support::body(response).await.unwrap(),
        )
    };
    let (line, crumbs) = futures::join!(read(http1(), request(&["a=1; b=2"])), async {
        assert!(upstream.wait_for(|stats| stats.requests() == 1).await);
        read(http2(), request(&["a=1", "b=2"])).await
    });
    assert_eq!((line.0.as_str(), crumbs.0.as_str()), ("leader", "follower"));
    assert_eq!(line.1, crumbs.1);
    assert_eq!(upstream.stats.requests(), 1);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn sequential_identical_requests_each_go_upstream_without_linger() {
    let (upstream, gateway, url) = start("").await;
    let client = http1();
    // Streamed, and plain with a Content-Length (whose end a client sees by length).
    for (round, stream) in [true, false, true, false].into_iter().enumerate() {
        let request =
            json!({"model": "mock", "stream": stream, "messages": [], "mock": {"tokens": 3}});
        let (role, status, _) = fetch(&client, &url, &request.to_string()).await;
        assert_eq!(
            (role.as_str(), status),
            ("leader", StatusCode::OK),
            "round {round}"
        );
    }
    assert_eq!(upstream.stats.requests(), 4);
    gateway.assert_idle().await;
}

#[tokio::test]
async fn empty_responses_fan_out() {
    let upstream = TestUpstream::start(|request| async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let status = if request.uri().path() == "/none" {
            204
        } else {
            200
        };
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let client = http1();

    for (path, status) in [
        ("/none", StatusCode::NO_CONTENT),
        ("/empty", StatusCode::OK),
    ] {
        let before = upstream.hits();
        let answers =
            futures::future::join_all((0..3).map(|_| fetch(&client, &gateway.url(path), "{}")))
                .await;
        assert_eq!(upstream.hits() - before, 1, "{path}");
        for (_, got, body) in answers {
            assert_eq!(got, status);
            assert!(body.unwrap().is_empty());
        }
    }
    gateway.assert_idle().await;
}

#[tokio::test]
async fn joiners_racing_the_end_of_a_flight_never_hang_or_get_a_cut_body() {
    let (_upstream, gateway, url) = start("").await;
    let client = http1();
    let request = chat("race", json!({"tokens": 2, "interval_ms": 2}));

    for round in 0..20u64 {
        let staggered = (0..6).map(|i| {
            let (client, url, request) = (client.clone(), url.clone(), request.clone());
            async move {
                tokio::time::sleep(Duration::from_millis((i * round) % 9)).await;
                fetch(&client, &url, &request).await
            }
        });
        for (_, status, body) in futures::future::join_all(staggered).await {
            assert_eq!(status, StatusCode::OK);
            let events = events(&body.expect("a complete body"));
            assert_eq!(events.len(), 5, "round {round}");
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        }
    }
    gateway.assert_idle().await;
}

#[tokio::test]
async fn coalesced_requests_ask_for_identity_encoding() {
    let upstream = TestUpstream::start(|request| async move {
        let encoding = request
            .headers()
            .get("accept-encoding")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Response::new(Full::new(Bytes::from(encoding)))
    })
    .await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let request = Request::post(gateway.url("/x"))
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = send(&http1(), request).await;
    assert_eq!(text(response).await, "identity");
}

#[tokio::test]
async fn past_max_subscribers_the_next_request_leads_a_new_flight() {
    let (upstream, gateway, url) = start("[routes.coalesce]\nmax_subscribers = 2").await;
    let request = chat("full", json!({"tokens": 10, "interval_ms": 100}));

    let first = send(&http1(), post(&url, request.clone())).await;
    let second = send(&http1(), post(&url, request.clone())).await;
    let third = send(&http1(), post(&url, request.clone())).await;
    let fourth = send(&http1(), post(&url, request.clone())).await;
    let roles: Vec<_> = [&first, &second, &third, &fourth].map(role).into();
    assert_eq!(roles, ["leader", "follower", "leader", "follower"]);
    assert_eq!(upstream.stats.requests(), 2);
    for response in [first, second, third, fourth] {
        assert!(crate::support::body(response).await.is_ok());
    }
    gateway.assert_idle().await;
}

#[tokio::test]
async fn past_max_replay_bytes_no_one_joins_and_no_one_misses_a_byte() {
    let (upstream, gateway, url) = start("[routes.coalesce]\nmax_replay_bytes = 1000").await;
    let request = chat("long", json!({"tokens": 30, "interval_ms": 30}));

    let first = send(&http1(), post(&url, request.clone())).await;
    let second = send(&http1(), post(&url, request.clone())).await;
    assert_eq!(role(&second), "follower");
    // Past 1000 bytes (a few events), the flight takes no more joiners.
    let (prefix, rest) = read_events(first.into_body(), 10).await;
    let third = send(&http1(), post(&url, request.clone())).await;
    assert_eq!(role(&third), "leader");

    let first = finish(prefix, rest).await.unwrap();
    let second = crate::support::body(second).await.unwrap();
    assert_eq!(first, second.to_vec());
    assert!(crate::support::body(third).await.is_ok());
    assert_eq!(upstream.stats.requests(), 2);
    gateway.assert_idle().await;
    assert_eq!(gateway.metric("chorus_buffered_bytes").await, 0.0);
}

#[tokio::test]
async fn drained_flight_bodies_arrive_chunk_by_chunk_for_followers() {
    let (upstream, gateway, url) = start("").await;
    let request = chat("live", json!({"tokens": 10, "interval_ms": 200}));

    let leader = send(&http1(), post(&url, request.clone())).await;
    let follower = send(&http2(), post(&url, request)).await;
    assert_eq!(role(&follower), "follower");
    // The follower sees the first events long before the upstream has sent them all.
    let (_, rest) = read_events(follower.into_body(), 3).await;
    assert!(upstream.stats.events_sent() < 10);
    drop(rest);
    let _ = crate::support::body(leader).await;
    gateway.assert_idle().await;
}

#[tokio::test]
async fn bodies_are_identical_with_coalescing_on_and_off() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let client = http1();
    let request = json!({"model": "mock", "stream": true, "messages": [], "mock": {"tokens": 4, "interval_ms": 0}});

    let coalesced = fetch(&client, &gateway.url(COMPLETIONS), &request.to_string()).await;
    let bypass = Request::post(gateway.url(COMPLETIONS))
        .header("x-chorus-coalesce", "off")
        .body(Full::new(Bytes::from(request.to_string())))
        .unwrap();
    let bypass = crate::support::body(send(&client, bypass).await)
        .await
        .unwrap();

    // The mock numbers its completions; everything else is the same bytes.
    let normalise =
        |body: &Bytes| String::from_utf8_lossy(body).replace("chatcmpl-2", "chatcmpl-1");
    let strip_created = |text: String| {
        text.split("\"created\":")
            .map(|part| part.trim_start_matches(|c: char| c.is_ascii_digit()))
            .collect::<Vec<_>>()
            .join("")
    };
    assert_eq!(
        strip_created(normalise(coalesced.2.as_ref().unwrap())),
        strip_created(normalise(&bypass))
    );
}
