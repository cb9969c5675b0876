//! The faults a request asks for (`status`, `break_after`, `stall_after`,
//! `first_byte_delay_ms`), clients that leave, and shutdown, with the counters
//! each one moves.

use super::*;

#[tokio::test]
async fn status_override_answers_an_openai_error() {
    let mock = start(fast()).await;
    let response = send(
        mock.addr,
        "POST",
        "/v1/chat/completions",
        r#"{"stream":true,"mock":{"status":429}}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "content-type"), "application/json");
    assert_eq!(
        text(response).await,
        r#"{"error":{"message":"mock error","type":"mock_error","code":429}}"#
    );
    assert_eq!(mock.stats.events_sent(), 0);

    let response = send(
        mock.addr,
        "POST",
        "/v1/chat/completions",
        r#"{"mock":{"status":200}}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn break_after_ends_the_body_abnormally() {
    let mock = start(fast()).await;
    let response = send(
        mock.addr,
        "POST",
        "/v1/chat/completions",
        r#"{"stream":true,"mock":{"break_after":3}}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let error = response
        .into_body()
        .collect()
        .await
        .expect_err("body must fail");
    assert!(!error.to_string().is_empty());
    assert!(mock.stats.wait_for(|s| s.broken() == 1, WAIT).await);
    assert_eq!(mock.stats.events_sent(), 3);
    assert_eq!(mock.stats.completed(), 0);
    assert_eq!(mock.stats.disconnects(), 0);
    assert_eq!(mock.stats.active(), 0);
}

#[tokio::test]
async fn break_after_sends_its_events_but_no_final_chunk() {
    for interval in [Duration::ZERO, Duration::from_millis(5)] {
        let mock = start(MockOptions { interval, ..fast() }).await;
        let mut stream = raw_request(
            mock.addr,
            "/v1/chat/completions",
            r#"{"stream":true,"mock":{"break_after":2}}"#,
        )
        .await;
        let mut wire = Vec::new();
        // The connection is cut: either EOF or a reset, never a clean chunked end.
        let _ = stream.read_to_end(&mut wire).await;
        let wire = String::from_utf8_lossy(&wire);
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
        assert_eq!(wire.matches("data: ").count(), 2, "{interval:?}: {wire}");
        assert!(!wire.ends_with("0\r\n\r\n"), "{wire}");
    }
}

#[tokio::test]
async fn break_after_resets_the_h2_stream() {
    let mock = start(fast()).await;
    let client = h2_client();
    let request = Request::post(format!("http://{}/v1/chat/completions", mock.addr))
        .body(Full::new(Bytes::from_static(
            br#"{"stream":true,"mock":{"break_after":1}}"#,
        )))
        .expect("request");
    let response = client.request(request).await.expect("response");
    assert_eq!(response.version(), Version::HTTP_2);
    assert!(response.into_body().collect().await.is_err());
    assert!(mock.stats.wait_for(|s| s.broken() == 1, WAIT).await);
}

#[tokio::test]
async fn plain_break_after_zero_promises_a_length_and_sends_nothing() {
    let mock = start(fast()).await;
    let response = send(
        mock.addr,
        "POST",
        "/v1/chat/completions",
        r#"{"mock":{"break_after":0}}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        header(&response, "content-length")
            .parse::<usize>()
            .expect("length")
            > 0
    );
    assert!(response.into_body().collect().await.is_err());
    assert!(mock.stats.wait_for(|s| s.broken() == 1, WAIT).await);
}

#[tokio::test]
async fn stall_after_sends_nothing_more_until_the_peer_leaves() {
    let mock = start(fast()).await;
    let mut stream = raw_request(
        mock.addr,
        "/v1/chat/completions",
        r#"{"stream":true,"mock":{"stall_after":2}}"#,
    )
    .await;
    let seen = read_until(&mut stream, "data: ", 2).await;
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"));
    let mut buf = [0u8; 64];
    let more = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(more.is_err(), "stalled stream sent more: {more:?}");
    assert_eq!(mock.stats.events_sent(), 2);
    assert_eq!(mock.stats.active(), 1);

    drop(stream);
    assert!(mock.stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
    assert_eq!(mock.stats.active(), 0);
    assert_eq!(mock.stats.completed(), 0);
}

#[tokio::test]
async fn first_byte_delay_holds_back_the_head() {
    let mock = start(fast()).await;
    let started = std::time::Instant::now();
    let response = send(
        mock.addr,
        "POST",
        "/v1/chat/completions",
        r#"{"stream":true,"mock":{"first_byte_delay_ms":150}}"#,
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(events(&text(response).await).len(), 8);
}

#[tokio::test]
async fn client_leaving_mid_stream_is_a_disconnect() {
    let mock = start(paced(1000, Duration::from_millis(10))).await;
    let mut stream = raw_request(mock.addr, "/v1/chat/completions", r#"{"stream":true}"#).await;
    read_until(&mut stream, "data: ", 2).await;
    drop(stream);
    assert!(mock.stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
    assert_eq!(mock.stats.active(), 0);
    assert_eq!(mock.stats.completed(), 0);
    assert!(mock.stats.events_sent() < 1000);
}

#[tokio::test]
async fn h2_stream_reset_mid_body_is_a_disconnect() {
    let mock = start(paced(1000, Duration::from_millis(10))).await;
    let client = h2_client();
    let request = Request::post(format!("http://{}/v1/chat/completions", mock.addr))
        .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
        .expect("request");
    let mut body = client.request(request).await.expect("response").into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(
        first
            .data_ref()
            .is_some_and(|data| data.starts_with(b"data: "))
    );
    // Dropping the body resets the stream; the connection stays up.
    drop(body);
    assert!(mock.stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
    assert_eq!(mock.stats.active(), 0);
    assert_eq!(mock.stats.connections(), 1);
}

#[tokio::test]
async fn client_leaving_before_the_head_is_a_disconnect() {
    let mock = start(fast()).await;
    let stream = raw_request(
        mock.addr,
        "/v1/chat/completions",
        r#"{"stream":true,"mock":{"first_byte_delay_ms":60000}}"#,
    )
    .await;
    assert!(mock.stats.wait_for(|s| s.active() == 1, WAIT).await);
    drop(stream);
    assert!(mock.stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
    assert_eq!(mock.stats.active(), 0);
    assert_eq!(mock.stats.events_sent(), 0);
}

#[tokio::test]
async fn stats_stamp_the_latest_disconnect() {
    let mock = start(paced(1000, Duration::from_millis(10))).await;
    assert_eq!(mock.stats.last_disconnect_ns(), 0);
    let mut stream = raw_request(mock.addr, "/v1/chat/completions", r#"{"stream":true}"#).await;
    read_until(&mut stream, "data: ", 1).await;
    let left = unix_nanos();
    drop(stream);
    assert!(mock.stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
    let seen = mock.stats.last_disconnect_ns();
    assert!(seen >= left && seen <= unix_nanos(), "{left} {seen}");
    let stats = json(&text(send(mock.addr, "GET", "/stats", "").await).await);
    assert_eq!(stats["last_disconnect_ns"], seen);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_connections() {
    let mock = start(fast()).await;
    let addr = mock.addr;
    let stats = Arc::clone(&mock.stats);
    let mut stream = raw_request(
        addr,
        "/v1/chat/completions",
        r#"{"stream":true,"mock":{"stall_after":1}}"#,
    )
    .await;
    read_until(&mut stream, "data: ", 1).await;
    mock.stop().await.expect("serve");
    assert!(TcpStream::connect(addr).await.is_err());
    assert!(stats.wait_for(|s| s.disconnects() == 1, WAIT).await);
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("closed");
}
