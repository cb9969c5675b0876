//! Completions as a client sees them: the SSE events and the plain JSON, both
//! APIs, pacing, usage, stamps, HTTP/1.1 chunking and h2c.

use super::*;

#[tokio::test]
async fn stream_sends_role_tokens_stop_and_done() {
    let mock = start(fast()).await;
    let response = send(
        mock.addr,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), "text/event-stream");
    assert_eq!(header(&response, "cache-control"), "no-cache");
    assert_eq!(header(&response, "transfer-encoding"), "chunked");
    let body = text(response).await;
    let events = events(&body);
    assert_eq!(events.len(), 5 + 3);
    assert_eq!(events.last(), Some(&"[DONE]"));

    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| json(e)).collect();
    for chunk in &chunks {
        assert_eq!(chunk["id"], "chatcmpl-1");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-test");
        assert!(chunk["created"].as_u64().expect("created") > 1_600_000_000);
        assert_eq!(chunk["choices"][0]["index"], 0);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json(r#"{"role":"assistant","content":""}"#)
    );
    assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
    let content: String = chunks[1..6]
        .iter()
        .map(|chunk| {
            assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .expect("content")
                .to_owned()
        })
        .collect();
    assert_eq!(content, expected_content(5));
    assert_eq!(content, "Hello from the chorus mock ");
    assert_eq!(chunks[6]["choices"][0]["delta"], json("{}"));
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");

    assert!(mock.stats.wait_for(|s| s.completed() == 1, WAIT).await);
    assert_eq!(mock.stats.requests(), 1);
    assert_eq!(mock.stats.events_sent(), 8);
    assert_eq!(mock.stats.active(), 0);
    assert_eq!(mock.stats.disconnects(), 0);
}

#[tokio::test]
async fn stream_is_chunked_on_the_wire_and_ends_with_the_final_chunk() {
    let mock = start(fast()).await;
    let mut stream = raw_request(
        mock.addr,
        "/v1/chat/completions",
        r#"{"stream":true,"mock":{"tokens":2}}"#,
    )
    .await;
    let mut wire = String::new();
    stream.read_to_string(&mut wire).await.expect("read");
    assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
    assert!(
        wire.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{wire}"
    );
    assert!(!wire.contains("content-length"), "{wire}");
    assert!(wire.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"), "{wire}");
    assert_eq!(wire.matches("data: ").count(), 2 + 3);
    assert_eq!(mock.stats.events_sent(), 5);
}

#[tokio::test]
async fn include_usage_adds_a_usage_chunk_before_done() {
    let mock = start(fast()).await;
    let request = r#"{"stream":true,"stream_options":{"include_usage":true},"mock":{"tokens":3}}"#;
    let body = post(mock.addr, "/v1/chat/completions", request).await;
    let events = events(&body);
    assert_eq!(events.len(), 1 + 3 + 1 + 1 + 1);
    assert_eq!(events[6], "[DONE]");
    let usage = json(events[5]);
    assert_eq!(usage["choices"], json("[]"));
    assert_eq!(usage["model"], "mock");
    let prompt = (request.len() / 4) as u64;
    assert_eq!(usage["usage"]["prompt_tokens"], prompt);
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(usage["usage"]["total_tokens"], prompt + 3);
}

#[tokio::test]
async fn identical_requests_differ_only_in_id() {
    let mock = start(fast()).await;
    let request = r#"{"stream":true,"model":"m"}"#;
    let first = post(mock.addr, "/v1/chat/completions", request).await;
    let second = post(mock.addr, "/v1/chat/completions", request).await;
    assert_ne!(first, second);
    let strip = |body: &str| -> Vec<Value> {
        events(body)
            .iter()
            .filter(|event| **event != "[DONE]")
            .map(|event| {
                let mut chunk = json(event);
                chunk["id"] = Value::Null;
                chunk["created"] = Value::Null;
                chunk
            })
            .collect()
    };
    assert_eq!(strip(&first), strip(&second));
    assert!(first.contains(r#""id":"chatcmpl-1""#));
    assert!(second.contains(r#""id":"chatcmpl-2""#));
}

#[tokio::test]
async fn events_are_paced_by_the_interval() {
    let mock = start(paced(3, Duration::from_millis(40))).await;
    let started = std::time::Instant::now();
    let body = post(mock.addr, "/v1/chat/completions", r#"{"stream":true}"#).await;
    // 6 events: the first right after the head, then 5 pauses.
    assert_eq!(events(&body).len(), 6);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn plain_chat_completion_is_one_json_object_with_content_length() {
    let mock = start(fast()).await;
    let response = send(
        mock.addr,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"gpt \"quoted\"","messages":[]}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), "application/json");
    let length: usize = header(&response, "content-length")
        .parse()
        .expect("content-length");
    let body = text(response).await;
    assert_eq!(body.len(), length);
    let completion = json(&body);
    assert_eq!(completion["id"], "chatcmpl-1");
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "gpt \"quoted\"");
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        expected_content(5)
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["completion_tokens"], 5);
    assert!(mock.stats.wait_for(|s| s.completed() == 1, WAIT).await);
    assert_eq!(mock.stats.events_sent(), 0);
    assert_eq!(mock.stats.active(), 0);
}

#[tokio::test]
async fn legacy_completions_stream_and_plain() {
    let mock = start(fast()).await;
    let body = post(
        mock.addr,
        "/v1/completions",
        r#"{"model":"davinci","prompt":"x","stream":true,"mock":{"tokens":2}}"#,
    )
    .await;
    let events = events(&body);
    assert_eq!(events.len(), 2 + 1 + 1);
    let first = json(events[0]);
    assert_eq!(first["id"], "cmpl-1");
    assert_eq!(first["object"], "text_completion");
    assert_eq!(first["model"], "davinci");
    assert_eq!(first["choices"][0]["text"], "Hello ");
    assert_eq!(json(events[1])["choices"][0]["text"], "from ");
    assert_eq!(json(events[2])["choices"][0]["text"], "");
    assert_eq!(json(events[2])["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[3], "[DONE]");

    let plain = json(&post(mock.addr, "/v1/completions", r#"{"prompt":"x"}"#).await);
    assert_eq!(plain["object"], "text_completion");
    assert_eq!(plain["choices"][0]["text"], expected_content(5));
    assert_eq!(plain["choices"][0]["finish_reason"], "stop");
    assert_eq!(mock.stats.requests(), 2);
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let mock = start(fast()).await;
    let client = h2_client();
    let request = Request::post(format!("http://{}/v1/chat/completions", mock.addr))
        .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
        .expect("request");
    let response = client.request(request).await.expect("response");
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(header(&response, "content-type"), "text/event-stream");
    assert_eq!(events(&text(response).await).len(), 8);
}

#[tokio::test]
async fn many_concurrent_streams_are_all_counted() {
    let mock = start(paced(10, Duration::from_millis(1))).await;
    let client = client();
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = client.clone();
        let uri = format!("http://{}/v1/chat/completions", mock.addr);
        streams.spawn(async move {
            let request = Request::post(uri)
                .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
                .expect("request");
            text(client.request(request).await.expect("response")).await
        });
    }
    while let Some(body) = streams.join_next().await {
        assert_eq!(events(&body.expect("stream task")).len(), 10 + 3);
    }
    assert!(mock.stats.wait_for(|s| s.completed() == 200, WAIT).await);
    assert_eq!(mock.stats.events_sent(), 200 * 13);
    assert_eq!(mock.stats.active(), 0);
}

#[tokio::test]
async fn stamp_puts_the_send_time_first_in_every_json_event() {
    let mock = start(paced(3, Duration::from_millis(5))).await;
    let before = unix_nanos();
    let body = post(
        mock.addr,
        "/v1/chat/completions",
        r#"{"stream":true,"stream_options":{"include_usage":true},"mock":{"stamp":true}}"#,
    )
    .await;
    let after = unix_nanos();
    let events = events(&body);
    // role, 3 tokens, finish, usage, [DONE]
    assert_eq!(events.len(), 7, "{body}");
    let mut last = before;
    for event in &events[..6] {
        assert!(event.starts_with(r#"{"chorus_sent_ns":"#), "{event}");
        let stamp = json(event)["chorus_sent_ns"].as_u64().expect("stamp");
        assert!((last..=after).contains(&stamp), "{last} {stamp} {after}");
        last = stamp;
        assert_eq!(json(event)["object"], "chat.completion.chunk");
    }
    // Paced: the stamps of the first and last token are two intervals apart at least.
    let first = json(events[1])["chorus_sent_ns"].as_u64().expect("stamp");
    let third = json(events[3])["chorus_sent_ns"].as_u64().expect("stamp");
    assert!(third - first >= 10_000_000, "{first} {third}");
    assert_eq!(events[6], "[DONE]");
}

#[tokio::test]
async fn stamps_are_opt_in_per_request_or_for_the_whole_mock() {
    let plain = start(fast()).await;
    for kind in ["/v1/chat/completions", "/v1/completions"] {
        let body = post(plain.addr, kind, r#"{"stream":true}"#).await;
        assert!(!body.contains("chorus_sent_ns"), "{body}");
    }
    let stamped = start(MockOptions {
        stamp: true,
        ..fast()
    })
    .await;
    let body = post(stamped.addr, "/v1/completions", r#"{"stream":true}"#).await;
    let events = events(&body);
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|event| json(event)["chorus_sent_ns"].as_u64().is_some())
    );
    let body = post(
        stamped.addr,
        "/v1/completions",
        r#"{"stream":true,"mock":{"stamp":false}}"#,
    )
    .await;
    assert!(!body.contains("chorus_sent_ns"), "{body}");
}
