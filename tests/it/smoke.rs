//! The triple click, end to end: three identical streams, one upstream request.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn triple_click_is_one_upstream_request() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&one_route(&upstream.url(), "")).await;
    let client = http1();
    let body = chat("hello", json!({"tokens": 10, "interval_ms": 20}));

    let requests = (0..3).map(|_| {
        let request = post(&gateway.url("/v1/chat/completions"), body.clone());
        let client = client.clone();
        async move { text(send(&client, request).await).await }
    });
    let bodies = futures::future::join_all(requests).await;

    assert_eq!(upstream.stats.requests(), 1);
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    assert_eq!(
        events(bodies[0].as_bytes()).last().map(String::as_str),
        Some("[DONE]")
    );
    gateway.assert_idle().await;
}
