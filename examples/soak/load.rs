//! The load: scenarios, each checked for the way it must end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastrand::Rng;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::HttpClient;

/// Requests by scenario, and what must not happen with how often it did.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) by_scenario: BTreeMap<&'static str, u64>,
    pub(crate) unexpected: BTreeMap<String, u64>,
}

/// Scenarios and their weights.
const SCENARIOS: [(&str, u64); 12] = [
    ("herd", 24),
    ("distinct", 20),
    ("leave mid-body", 12),
    ("leave before head", 5),
    ("upstream error", 8),
    ("upstream break", 8),
    ("upstream silent", 3),
    ("slow reader", 10),
    ("bypass", 10),
    ("tunnel", 6),
    ("tunnel h2", 4),
    ("tunnel silent", 1),
];

fn chat(content: &str, mock: serde_json::Value) -> String {
    serde_json::json!({
        "model": "mock",
        "stream": true,
        "messages": [{"role": "user", "content": content}],
        "mock": mock,
    })
    .to_string()
}

fn post(base: &str, body: String, bypass: bool) -> Request<Full<Bytes>> {
    let mut builder = Request::post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json");
    if bypass {
        builder = builder.header("x-chorus-coalesce", "off");
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
}

/// How a response body ended.
enum Ending {
    Clean(Vec<u8>),
    Broken,
}

async fn read_body(response: Response<Incoming>, pause: Duration) -> Ending {
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    loop {
        match body.frame().await {
            None => return Ending::Clean(bytes),
            Some(Err(_)) => return Ending::Broken,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

fn complete(ending: &Ending) -> bool {
    matches!(ending, Ending::Clean(bytes) if bytes.ends_with(b"data: [DONE]\n\n"))
}

pub(crate) async fn worker(
    index: u64,
    h1: HttpClient,
    h2: HttpClient,
    base: String,
    deadline: Instant,
    tally: Arc<Mutex<Tally>>,
) {
    // Seeded per worker: a run is repeatable.
    let mut rng = Rng::with_seed(index);
    let total: u64 = SCENARIOS.iter().map(|(_, weight)| weight).sum();
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let mut pick = rng.u64(..total);
        let scenario = SCENARIOS
            .iter()
            .find(|(_, weight)| {
                let hit = pick < *weight;
                pick = pick.saturating_sub(*weight);
                hit
            })
            .map_or("distinct", |(name, _)| *name);
        let client = if rng.u64(..2) == 0 { &h1 } else { &h2 };
        let id = format!("w{index}-r{round}");
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            run(scenario, &id, client, &h1, &h2, &base, &mut rng),
        )
        .await
        .unwrap_or_else(|_| Err("no end within 60 s".to_owned()));
        let mut tally = tally.lock().await;
        *tally.by_scenario.entry(scenario).or_default() += 1;
        if let Err(what) = outcome {
            *tally
                .unexpected
                .entry(format!("{scenario}: {what}"))
                .or_default() += 1;
        }
        drop(tally);
        tokio::time::sleep(Duration::from_millis(rng.u64(..50))).await;
    }
}

async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, String> {
    client
        .request(request)
        .await
        .map_err(|error| format!("request failed: {error}"))
}

async fn run(
    scenario: &str,
    id: &str,
    client: &HttpClient,
    h1: &HttpClient,
    h2: &HttpClient,
    base: &str,
    rng: &mut Rng,
) -> Result<(), String> {
    let tokens = 10 + rng.u64(..30);
    let stream = serde_json::json!({"tokens": tokens, "interval_ms": 10 + rng.u64(..20)});
    match scenario {
        "herd" => {
            let size = 2 + rng.u64(..7) as usize;
            let body = chat(id, stream);
            let requests = (0..size).map(|member| {
                let client = if member % 2 == 0 {
                    h1.clone()
                } else {
                    h2.clone()
                };
                let request = post(base, body.clone(), false);
                async move {
                    let response = send(&client, request).await?;
                    if response.status() != StatusCode::OK {
                        return Err(format!("status {}", response.status()));
                    }
                    Ok(read_body(response, Duration::ZERO).await)
                }
            });
            let endings = futures::future::join_all(requests)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            let first = match &endings[0] {
                Ending::Clean(bytes) => bytes.clone(),
                Ending::Broken => return Err("a herd stream broke".into()),
            };
            if !endings.iter().all(complete) {
                return Err("a herd stream was incomplete".into());
            }
            let same = endings
                .iter()
                .all(|ending| matches!(ending, Ending::Clean(bytes) if *bytes == first));
            if same {
                Ok(())
            } else {
                Err("herd bodies differ".into())
            }
        }
        "distinct" | "bypass" => {
            let response = send(client, post(base, chat(id, stream), scenario == "bypass")).await?;
            let role = response
                .headers()
                .get("x-chorus-role")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if scenario == "bypass" && role != "bypass" {
                return Err(format!("role {role}"));
            }
            if complete(&read_body(response, Duration::ZERO).await) {
                Ok(())
            } else {
                Err("incomplete stream".into())
            }
        }
        "slow reader" => {
            let response = send(client, post(base, chat(id, stream), false)).await?;
            if complete(&read_body(response, Duration::from_millis(60)).await) {
                Ok(())
            } else {
                Err("incomplete stream".into())
            }
        }
        "leave mid-body" => {
            let mock = serde_json::json!({"tokens": 200, "interval_ms": 20});
            let response = send(client, post(base, chat(id, mock), rng.u64(..4) == 0)).await?;
            let mut body = response.into_body();
            for _ in 0..1 + rng.u64(..4) {
                match body.frame().await {
                    Some(Ok(_)) => {}
                    _ => return Err("stream ended before the client left".into()),
                }
            }
            drop(body);
            Ok(())
        }
        "leave before head" => {
            let mock = serde_json::json!({"tokens": 5, "first_byte_delay_ms": 3000});
            let request = post(base, chat(id, mock), false);
            let waited = tokio::time::timeout(
                Duration::from_millis(50 + rng.u64(..300)),
                send(client, request),
            )
            .await;
            match waited {
                Err(_) => Ok(()),
                Ok(_) => Err("answered before the first byte delay".into()),
            }
        }
        "upstream error" => {
            let status = [429u16, 500, 503][rng.u64(..3) as usize];
            let mock = serde_json::json!({"status": status});
            let response = send(client, post(base, chat(id, mock), false)).await?;
            if response.status().as_u16() != status {
                return Err(format!("status {} for {status}", response.status()));
            }
            match read_body(response, Duration::ZERO).await {
                Ending::Clean(_) => Ok(()),
                Ending::Broken => Err("error body broke".into()),
            }
        }
        "upstream break" | "upstream silent" => {
            let fault = if scenario == "upstream break" {
                "break_after"
            } else {
                "stall_after"
            };
            let mock =
                serde_json::json!({"tokens": 30, "interval_ms": 10, fault: 1 + rng.u64(..5)});
            let response = send(client, post(base, chat(id, mock), rng.u64(..3) == 0)).await?;
            match read_body(response, Duration::ZERO).await {
                Ending::Broken => Ok(()),
                Ending::Clean(_) => Err("a broken stream ended cleanly".into()),
            }
        }
        "tunnel" | "tunnel silent" => {
            let addr = base.trim_start_matches("http://");
            crate::tunnel::run(addr, id, rng, scenario == "tunnel silent").await
        }
        "tunnel h2" => {
            let addr = base.trim_start_matches("http://");
            crate::tunnel::run_h2(addr, id, rng).await
        }
        other => Err(format!("unknown scenario {other}")),
    }
}
