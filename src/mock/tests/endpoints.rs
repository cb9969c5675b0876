//! The other paths: `/v1/models`, `/echo`, `/stats`, unknown paths and
//! methods, requests the mock refuses, and CORS.

use super::*;

#[tokio::test]
async fn models_lists_the_mock_model() {
    let mock = start(fast()).await;
    let response = send(mock.addr, "GET", "/v1/models", "").await;
    assert_eq!(response.status(), StatusCode::OK);
    let models = json(&text(response).await);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "mock");
    assert_eq!(mock.stats.requests(), 1);
}

#[tokio::test]
async fn echo_reports_the_request_as_received() {
    let mock = start(fast()).await;
    let request = Request::builder()
        .method("PUT")
        .uri(format!("http://{}/echo/a?b=1&c", mock.addr))
        .header("x-one", "1")
        .header("x-many", "a")
        .header("x-many", "b")
        .body(Full::new(Bytes::from_static(b"hello \"body\"")))
        .expect("request");
    let response = client().request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), "application/json");
    let echo = json(&text(response).await);
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo/a?b=1&c");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["body"], "hello \"body\"");
    let headers: Vec<(String, String)> =
        serde_json::from_value(echo["headers"].clone()).expect("header pairs");
    let pair = |name: &str, value: &str| (name.to_owned(), value.to_owned());
    assert!(headers.contains(&pair("x-one", "1")));
    assert!(headers.contains(&pair("host", &mock.addr.to_string())));
    let many: Vec<_> = headers
        .iter()
        .filter(|(name, _)| name == "x-many")
        .collect();
    assert_eq!(many, [&pair("x-many", "a"), &pair("x-many", "b")]);
    assert_eq!(mock.stats.requests(), 0);
}

#[tokio::test]
async fn stats_reports_the_counters() {
    let mock = start(fast()).await;
    post(mock.addr, "/v1/chat/completions", r#"{"stream":true}"#).await;
    assert!(mock.stats.wait_for(|s| s.completed() == 1, WAIT).await);
    let response = send(mock.addr, "GET", "/stats", "").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), "application/json");
    let stats = json(&text(response).await);
    assert_eq!(stats["requests"], 1);
    assert_eq!(stats["completed"], 1);
    assert_eq!(stats["disconnects"], 0);
    assert_eq!(stats["events_sent"], 8);
    assert_eq!(stats["active"], 0);
    assert_eq!(stats["broken"], 0);
    assert_eq!(stats["last_disconnect_ns"], 0);
    assert!(stats["connections"].as_u64().expect("connections") >= 1);
    assert_eq!(
        mock.stats.requests(),
        1,
        "/stats is not a completion request"
    );
}

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let mock = start(fast()).await;
    for path in ["/", "/nope", "/v1/nope"] {
        let response = send(mock.addr, "GET", path, "").await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(header(&response, "content-type"), "application/json");
        assert_eq!(json(&text(response).await)["error"]["type"], "not_found");
    }
    let response = send(mock.addr, "GET", "/v1/chat/completions", "").await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn bad_requests_are_400_openai_errors() {
    let mock = start(fast()).await;
    let bad = [
        "",
        "{not json",
        "[1,2]",
        r#"{"stream":"yes"}"#,
        r#"{"model":7}"#,
        r#"{"mock":{"tokenz":3}}"#,
        r#"{"mock":{"tokens":-1}}"#,
        r#"{"mock":{"break_after":1,"stall_after":1}}"#,
        r#"{"mock":{"interval_ms":99999999999}}"#,
    ];
    for body in bad {
        let response = send(mock.addr, "POST", "/v1/chat/completions", body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error = json(&text(response).await);
        assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert!(
        mock.stats
            .wait_for(|s| s.completed() == bad.len() as u64, WAIT)
            .await
    );
    assert_eq!(mock.stats.requests(), bad.len() as u64);
}

#[tokio::test]
async fn browsers_of_any_origin_may_call_it() {
    let mock = start(fast()).await;
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri(format!("http://{}/v1/chat/completions", mock.addr))
        .header("origin", "http://page.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = client().request(preflight).await.expect("response");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    assert!(header(&response, "access-control-allow-methods").contains("POST"));
    assert_eq!(
        header(&response, "access-control-allow-headers"),
        "authorization, content-type"
    );
    assert_eq!(mock.stats.requests(), 0, "a preflight is not a completion");

    let body = r#"{"model":"mock","messages":[],"stream":true}"#;
    let response = send(mock.addr, "POST", "/v1/chat/completions", body).await;
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    assert_eq!(
        header(&response, "access-control-expose-headers"),
        "x-chorus-role"
    );
    assert!(text(response).await.ends_with("data: [DONE]\n\n"));
}
